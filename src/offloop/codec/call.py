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
"""

from __future__ import annotations

from collections.abc import Container
from dataclasses import dataclass
from typing import Any

from thriftpy2.thrift import TApplicationException

from offloop.codec.faults import fault_error
from offloop.codec.framing import encode_frame
from offloop.codec.guard import DEFAULT_LIMITS, DecodeLimits
from offloop.codec.message import EXCEPTION, REPLY, MessageCodec, ProtocolName
from offloop.errors import (
    EncodeError,
    PayloadTooLarge,
    RemoteApplicationError,
    RemoteProtocolError,
)
from offloop.idl import MethodInfo

__all__ = ["SEQID_MASK", "CallCodec", "ReplyHeader"]

#: Seqids are non-negative i32 values; the counter wraps to 0 after 2**31 - 1.
SEQID_MASK = 0x7FFFFFFF


@dataclass(frozen=True, slots=True)
class ReplyHeader:
    """A reply's header, and the reader positioned at its body.

    Attributes:
        name: the method name the reply carries.
        type: the message type (``REPLY``, ``EXCEPTION``, or anything the peer sent).
        seqid: the sequence id, matched against the calls waiting.
        reader: the protocol to read the body from (internal to :class:`CallCodec`).
        frame: the whole message, checked by the guard before its body is read.
    """

    name: str
    type: int
    seqid: int
    reader: Any
    frame: bytes


class CallCodec:
    """Encodes calls and decodes replies for one connection or client.

    Args:
        protocol: ``"binary"`` or ``"compact"``.
        max_frame_size: the largest call we send, in bytes.
        peer: the server's address, for messages.
        limits: what one reply may cost to decode beyond its length.
    """

    __slots__ = ("_codec", "_max_frame_size", "_seqid", "peer", "protocol")

    def __init__(
        self,
        protocol: ProtocolName,
        max_frame_size: int,
        peer: str,
        limits: DecodeLimits = DEFAULT_LIMITS,
    ) -> None:
        self._codec = MessageCodec(protocol, limits)
        self._max_frame_size = max_frame_size
        self._seqid = 0
        self.protocol = protocol
        self.peer = peer

    def next_seqid(self, in_use: Container[int] = ()) -> int:
        """The next seqid not in ``in_use`` (the calls still waiting on this connection)."""
        seqid = self._seqid
        while True:
            seqid = (seqid + 1) & SEQID_MASK
            if seqid not in in_use:
                self._seqid = seqid
                return seqid

    def encode_call(self, method: MethodInfo, seqid: int, args: Any) -> bytes:
        """A whole frame (length prefix included) calling ``method`` with ``args``.

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
        return encode_frame(payload)

    def read_reply(self, frame: bytes) -> ReplyHeader:
        """Read a reply frame's header.

        Raises:
            RemoteProtocolError: the frame is not a message of this protocol; the connection
                can no longer be trusted.
        """
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
        return ReplyHeader(name, int(mtype), int(seqid), reader, frame)

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
        if reply.name != method.name:
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
