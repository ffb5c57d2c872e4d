"""The client side of a Thrift call, sans-I/O: one implementation for every client.

:class:`CallCodec` does everything a client does with a call except moving bytes: it numbers
calls (seqids), encodes a call into a frame and checks its size, reads a reply's header, and
turns the reply's body into the method's value or the right exception. The async client
(:mod:`offloop.client.connection`) and the blocking client of actor mode
(:mod:`offloop.client.blocking`) keep only their I/O around it, so they cannot drift apart.

Reading a reply is two steps, because what happens on failure differs:

1. :meth:`CallCodec.read_reply` reads the header. If it fails, the byte stream cannot be
   trusted and the *connection* must go (:class:`~offloop.errors.RemoteProtocolError`).
2. :meth:`CallCodec.outcome` reads the body for the call waiting on that seqid. If it fails,
   only that *call* fails; the frame boundary keeps the stream in sync.

Every read is bounded by the frame (see :meth:`offloop.codec.message.MessageCodec.reader`).

**Two framings.** A codec made with ``header=True`` wraps each call in a THeader frame
(:mod:`offloop.codec.header`) carrying the call's info headers (request id, deadline,
principal: :mod:`offloop.context`); otherwise it writes plain framed messages, which every
Thrift server reads. Replies are read in either framing, whichever the server chose.
:meth:`CallCodec.encode_probe` is the header frame a client in ``auto`` mode sends once to
learn whether a server speaks THeader: an offloop worker answers it at once with a header
frame, without running anything; any other answer (a framed fault, the connection closed,
silence) means plain framed.
"""

from __future__ import annotations

from collections.abc import Container, Mapping
from dataclasses import dataclass
from typing import Any

from thriftpy2.thrift import TApplicationException, TPayload

from offloop.codec.faults import fault_error
from offloop.codec.framing import encode_frame
from offloop.codec.guard import DEFAULT_LIMITS, DecodeLimits
from offloop.codec.header import (
    HeaderLimits,
    HeaderProtocol,
    encode_header_message,
    is_header_frame,
    split_header_frame,
)
from offloop.codec.message import CALL, EXCEPTION, ONEWAY, REPLY, MessageCodec, ProtocolName
from offloop.errors import (
    EncodeError,
    OffloopError,
    PayloadTooLarge,
    RemoteApplicationError,
    RemoteProtocolError,
)
from offloop.idl import MethodInfo

__all__ = [
    "CANCEL_METHOD",
    "PROBE_METHOD",
    "SEQID_MASK",
    "SERVICE_SEPARATOR",
    "CallCodec",
    "ReplyHeader",
]

#: Seqids are non-negative i32 values; the counter wraps to 0 after 2**31 - 1.
SEQID_MASK = 0x7FFFFFFF
#: The method a transport probe calls: no IDL can name a method so (Thrift identifiers hold
#: no ``.`` ), so it never reaches a handler, offloop's or anyone's.
PROBE_METHOD = "offloop.probe"
#: The seqid of the probe: the first call of a connection.
PROBE_SEQID = 0
#: Issue 13, cancellation: a oneway message of this name, in a header frame, whose seqid is
#: that of a call the client gave up on (reserved like :data:`PROBE_METHOD`).
CANCEL_METHOD = "offloop.cancel"
#: Several services on one port (Apache's ``TMultiplexedProtocol``): a call of ``method`` of
#: ``Service`` is named ``Service:method``; the server answers with the plain ``method``.
SERVICE_SEPARATOR = ":"


class _NoArgs(TPayload):  # type: ignore[misc]
    """The arguments of the probe: none."""

    thrift_spec: dict[int, Any] = {}
    default_spec: list[Any] = []


_HEADER_PROTOCOLS = {"binary": HeaderProtocol.BINARY, "compact": HeaderProtocol.COMPACT}


@dataclass(frozen=True, slots=True)
class ReplyHeader:
    """A reply's header, and the reader positioned at its body.

    Attributes:
        name: the method name the reply carries.
        type: the message type (``REPLY``, ``EXCEPTION``, or anything the peer sent).
        seqid: the sequence id, matched against the calls waiting.
        reader: the protocol to read the body from (internal to :class:`CallCodec`).
        frame: the whole message, checked by the guard before its body is read.
        headers: the info headers of a reply in a header frame; None for a framed reply.
    """

    name: str
    type: int
    seqid: int
    reader: Any
    frame: bytes
    headers: Mapping[str, str] | None = None


class CallCodec:
    """Encodes calls and decodes replies for one connection or client.

    Args:
        protocol: ``"binary"`` or ``"compact"``.
        max_frame_size: the largest call we send, in bytes.
        peer: the server's address, for messages.
        limits: what one reply may cost to decode beyond its length.
        header: send calls in THeader frames (the attribute may be changed later, once a
            probe has told).
    """

    __slots__ = (
        "_codec",
        "_header_limits",
        "_max_frame_size",
        "_seqid",
        "header",
        "peer",
        "protocol",
    )

    def __init__(
        self,
        protocol: ProtocolName,
        max_frame_size: int,
        peer: str,
        limits: DecodeLimits = DEFAULT_LIMITS,
        *,
        header: bool = False,
    ) -> None:
        self._codec = MessageCodec(protocol, limits)
        self._max_frame_size = max_frame_size
        # A compressed reply may inflate to what an uncompressed one may be.
        self._header_limits = HeaderLimits(max_decompressed_size=max_frame_size)
        self._seqid = 0
        self.protocol = protocol
        self.peer = peer
        self.header = header

    def next_seqid(self, in_use: Container[int] = ()) -> int:
        """The next seqid not in ``in_use`` (the calls still waiting on this connection)."""
        seqid = self._seqid
        while True:
            seqid = (seqid + 1) & SEQID_MASK
            if seqid not in in_use:
                self._seqid = seqid
                return seqid

    def encode_call(
        self,
        method: MethodInfo,
        seqid: int,
        args: Any,
        headers: Mapping[str, str] | None = None,
    ) -> bytes:
        """A whole frame (length prefix included) calling ``method`` with ``args``.

        Args:
            method: the method called.
            seqid: the call's seqid.
            args: an instance of ``method.args_cls``.
            headers: the info headers to send beside the call; ignored when framed.

        Raises:
            EncodeError: ``args`` does not match the IDL, or a header cannot be encoded.
            PayloadTooLarge: the call encodes to more than the frame limit.
        """
        return self.frame_message(self.encode_message(method, seqid, args), seqid, headers)

    def encode_message(self, method: MethodInfo, seqid: int, args: Any) -> bytes:
        """The Thrift message calling ``method``, not yet framed (see :meth:`frame_message`):
        for a client that checks a call before it knows how the call will be framed.

        Raises:
            EncodeError: ``args`` does not match the IDL.
            PayloadTooLarge: the call encodes to more than the frame limit.
        """
        try:
            payload = self._codec.encode_call(method, seqid, args)
        except Exception as exc:
            raise EncodeError(
                f"cannot encode the arguments of {method.name}: {type(exc).__name__}: {exc}",
                public_message=f"cannot encode the arguments of {method.name}",
            ) from exc
        if len(payload) > self._max_frame_size:
            raise PayloadTooLarge(f"call of {method.name}", len(payload), self._max_frame_size)
        return payload

    def frame_message(
        self, message: bytes, seqid: int, headers: Mapping[str, str] | None = None
    ) -> bytes:
        """``message`` framed as :attr:`header` says, with ``headers`` if in a header frame.

        Raises:
            EncodeError: a header cannot be encoded.
        """
        if not self.header:
            return encode_frame(message)
        return self._wrap(message, seqid, headers or {}, "the call")

    def _wrap(self, payload: bytes, seqid: int, headers: Mapping[str, str], what: str) -> bytes:
        try:
            return encode_header_message(
                payload, seqid, headers, protocol=_HEADER_PROTOCOLS[self.protocol]
            )
        except (TypeError, OffloopError) as exc:
            raise EncodeError(
                f"cannot encode the info headers of {what}: {exc}",
                public_message=f"cannot encode the info headers of {what}",
            ) from exc

    def encode_probe(self) -> bytes:
        """The header frame of a transport probe (see the module docstring): a call of
        :data:`PROBE_METHOD` with no arguments, seqid :data:`PROBE_SEQID`."""
        payload = self._codec._encode(PROBE_METHOD, CALL, PROBE_SEQID, _NoArgs())
        return self._wrap(payload, PROBE_SEQID, {}, PROBE_METHOD)

    # -- issue 13: cancellation (owned by the cancellation work) ---------------------------
    def encode_cancel(self, seqid: int) -> bytes:
        """The header frame telling the server that the call ``seqid`` was given up: a oneway
        :data:`CANCEL_METHOD` message with no arguments and that seqid."""
        payload = self._codec._encode(CANCEL_METHOD, ONEWAY, seqid, _NoArgs())
        return self._wrap(payload, seqid, {}, CANCEL_METHOD)

    def read_reply(self, frame: bytes) -> ReplyHeader:
        """Read a reply frame's header.

        A header frame's info headers are decoded (bounded by the header limits) and its
        payload read as the message; its protocol must be this codec's.

        Raises:
            RemoteProtocolError: the frame is not a message of this protocol; the connection
                can no longer be trusted.
        """
        headers: Mapping[str, str] | None = None
        if is_header_frame(frame):
            protocol, _, _, _, headers, frame = split_header_frame(frame, self._header_limits)
            if protocol is not _HEADER_PROTOCOLS[self.protocol]:
                raise RemoteProtocolError(
                    f"{self.peer} answered in a {protocol.codec_name} header frame, "
                    f"not {self.protocol}"
                )
        reader = self._codec.reader(frame)
        try:
            name, mtype, seqid = reader.read_message_begin()
        except Exception as exc:
            raise RemoteProtocolError(
                f"{self.peer} sent an undecodable {self.protocol} message header: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        if isinstance(name, bytes):
            name = name.decode("utf-8", "replace")
        return ReplyHeader(name, int(mtype), int(seqid), reader, frame, headers)

    def outcome(self, reply: ReplyHeader, method: MethodInfo) -> Any:
        """The value of ``method`` that ``reply`` carries; raises what it carries otherwise.

        Returns:
            The method's value; None for a void method.

        Raises:
            RemoteProtocolError: the reply names another method, is not a reply, or its body
                is malformed.
            RemoteApplicationError: (or the typed error of :func:`~offloop.codec.faults.
                fault_error`) the server answered with a ``TApplicationException``.
            Exception: a declared exception of the method, as its own class.
        """
        # A multiplexed call (Service:method) is answered under the plain method name.
        if reply.name != method.name and reply.name != method.name.rpartition(":")[2]:
            raise RemoteProtocolError(
                f"{self.peer} answered seqid {reply.seqid} of {method.name} with a reply "
                f"named {reply.name!r}"
            )
        if reply.type == REPLY:
            body: Any = method.result_cls()
        elif reply.type == EXCEPTION:
            body = TApplicationException()
        else:
            raise RemoteProtocolError(
                f"{self.peer} answered {method.name} with message type {reply.type}, not a reply"
            )
        try:
            # Before thriftpy2 reads a byte of the body: its cost is then bounded by the frame.
            self._codec.check(reply.frame, type(body))
            reply.reader.read_struct(body)
        except Exception as exc:
            raise RemoteProtocolError(
                f"malformed reply to {method.name} from {self.peer}: {type(exc).__name__}: {exc}"
            ) from exc
        if reply.type == EXCEPTION:
            raise fault_error(body, where=f"{method.name} on {self.peer}")
        value = getattr(body, "success", None)
        if value is not None:
            return value
        for name, _cls in method.exceptions:
            declared = getattr(body, name, None)
            if declared is not None:
                raise declared
        if not method.returns_void:
            raise RemoteApplicationError(
                f"{method.name} on {self.peer} returned no result",
                type=TApplicationException.MISSING_RESULT,
                public_message="backend returned no result",
            )
        return None
