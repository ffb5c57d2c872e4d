"""Thrift messages to and from bytes, sans-I/O, on thriftpy2's codecs.

Binary protocol uses thriftpy2's Cython codec (``TCyBinaryProtocol`` over ``TCyMemoryBuffer``);
compact uses thriftpy2's ``TCompactProtocol``. Every function here takes or returns the bytes of
one message (a frame body, without its length prefix) and never touches a socket.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any, Literal

from thriftpy2.protocol.compact import TCompactProtocol
from thriftpy2.protocol.cybin import TCyBinaryProtocol
from thriftpy2.thrift import TApplicationException, TMessageType
from thriftpy2.transport.buffered import TCyBufferedTransport
from thriftpy2.transport.memory import TCyMemoryBuffer

from offloop.codec.faults import FaultKind, fault_exception
from offloop.codec.guard import DEFAULT_LIMITS, DecodeLimits, MessageRefused, check_message
from offloop.errors import RemoteProtocolError
from offloop.idl import MethodInfo

__all__ = [
    "CALL",
    "EXCEPTION",
    "ONEWAY",
    "REPLY",
    "Header",
    "MessageCodec",
    "ProtocolName",
]

CALL: int = TMessageType.CALL
REPLY: int = TMessageType.REPLY
EXCEPTION: int = TMessageType.EXCEPTION
ONEWAY: int = TMessageType.ONEWAY

ProtocolName = Literal["binary", "compact"]

#: Smallest read buffer of the bounded binary reader: the Cython transport's default.
_MIN_READ_BUFFER = 4096


#: A compact varint of a 32-bit value (seqid, name length) takes at most 5 bytes. thriftpy2
#: decodes a varint of any length, in time quadratic in its length (200 KB: seconds), so a
#: run-on one is refused before thriftpy2 reads it.
_MAX_VARINT32_BYTES = 5


def _check_compact_header(data: bytes) -> None:
    """Refuse a compact message header whose seqid or name-length varint runs on."""
    pos = 2  # protocol id, then version and type
    for what in ("seqid", "name length"):
        for i in range(_MAX_VARINT32_BYTES):
            if pos + i >= len(data):
                return  # truncated: thriftpy2 reports it
            if not data[pos + i] & 0x80:
                pos += i + 1
                break
        else:
            raise RemoteProtocolError(f"{what} varint is longer than {_MAX_VARINT32_BYTES} bytes")


def _signed32(n: int) -> int:
    n = int(n)
    return n - (1 << 32) if n >= 1 << 31 else n


@dataclass(frozen=True, slots=True)
class Header:
    """The header of a Thrift message: method name, message type and sequence id."""

    name: str
    type: int
    seqid: int


class MessageCodec:
    """Encodes and decodes whole Thrift messages for one protocol.

    Every message body is checked by :func:`~offloop.codec.guard.check_message` against the
    struct class it decodes into before thriftpy2 reads it, so that what decoding costs is
    bounded by the message's length, whatever it declares.

    Args:
        protocol: ``"binary"`` (strict, the Apache default) or ``"compact"``.
        limits: what one message may cost to decode beyond its length (depth, elements).
    """

    def __init__(
        self, protocol: ProtocolName = "binary", limits: DecodeLimits = DEFAULT_LIMITS
    ) -> None:
        if protocol not in ("binary", "compact"):
            raise ValueError(f"unknown Thrift protocol {protocol!r}: use 'binary' or 'compact'")
        self.protocol = protocol
        self.limits = limits

    def check(self, data: bytes, body: type[Any] | dict[int, type[Any]]) -> None:
        """Check a whole message before its body is decoded into ``body``.

        Raises:
            MessageRefused: (a :class:`~offloop.errors.RemoteProtocolError`) the message is
                malformed or would cost more to decode than its length allows.
        """
        check_message(data, self.protocol, self.limits, body=body)

    def _proto(self, buf: Any) -> Any:
        if self.protocol == "binary":
            return TCyBinaryProtocol(buf)
        return TCompactProtocol(buf)

    def reader(self, data: bytes) -> Any:
        """A protocol that reads the message ``data`` and cannot read past its end.

        Not ``TCyMemoryBuffer`` for binary: its short reads return what is there without an
        error, so a declared string length of 2 GiB in a 20-byte frame makes the Cython codec
        allocate and return 2 GiB (of uninitialised memory). A buffered transport over the
        bytes raises at their end instead, so the frame limit bounds what a message costs.
        """
        if self.protocol == "binary":
            size = max(len(data), _MIN_READ_BUFFER)
            return TCyBinaryProtocol(TCyBufferedTransport(io.BytesIO(data), buf_size=size))
        _check_compact_header(data)
        return TCompactProtocol(TCyMemoryBuffer(data))

    # -- reading ------------------------------------------------------------------------

    def read_header(self, data: bytes) -> Header:
        """Read only the header of a message.

        Raises:
            RemoteProtocolError: the bytes are not a Thrift message of this protocol.
        """
        try:
            name, mtype, seqid = self.reader(data).read_message_begin()
        except Exception as exc:
            raise RemoteProtocolError(f"not a {self.protocol} Thrift message: {exc}") from exc
        if isinstance(name, bytes):
            name = name.decode("utf-8", "replace")
        return Header(name, int(mtype), _signed32(seqid))

    def decode_args(self, data: bytes, method: MethodInfo) -> tuple[Header, Any]:
        """Decode a call message into its header and ``<method>_args`` struct.

        Raises:
            RemoteProtocolError: the message is malformed or truncated.
        """
        try:
            self.check(data, method.args_cls)
        except MessageRefused as exc:
            raise RemoteProtocolError(f"malformed arguments for {method.name}: {exc}") from exc
        proto = self.reader(data)
        try:
            name, mtype, seqid = proto.read_message_begin()
            args = method.args_cls()
            proto.read_struct(args)
            proto.read_message_end()
        except Exception as exc:
            raise RemoteProtocolError(
                f"malformed arguments for {method.name}: {type(exc).__name__}: {exc}"
            ) from exc
        if isinstance(name, bytes):
            name = name.decode("utf-8", "replace")
        return Header(name, int(mtype), _signed32(seqid)), args

    def decode_reply(self, data: bytes, method: MethodInfo) -> tuple[Header, Any]:
        """Decode a reply into its header and either the ``<method>_result`` struct or a
        ``TApplicationException``.

        Raises:
            RemoteProtocolError: the message is malformed, or is not a reply.
        """
        try:
            self.check(data, {REPLY: method.result_cls, EXCEPTION: TApplicationException})
        except MessageRefused as exc:
            raise RemoteProtocolError(f"malformed reply to {method.name}: {exc}") from exc
        proto = self.reader(data)
        try:
            name, mtype, seqid = proto.read_message_begin()
            if mtype == EXCEPTION:
                body: Any = TApplicationException()
            elif mtype == REPLY:
                body = method.result_cls()
            else:
                raise RemoteProtocolError(f"expected a reply, got message type {mtype}")
            proto.read_struct(body)
            proto.read_message_end()
        except RemoteProtocolError:
            raise
        except Exception as exc:
            raise RemoteProtocolError(
                f"malformed reply to {method.name}: {type(exc).__name__}: {exc}"
            ) from exc
        if isinstance(name, bytes):
            name = name.decode("utf-8", "replace")
        return Header(name, int(mtype), _signed32(seqid)), body

    # -- writing ------------------------------------------------------------------------

    def _encode(self, name: str, mtype: int, seqid: int, struct: Any) -> bytes:
        buf = TCyMemoryBuffer()
        proto = self._proto(buf)
        if self.protocol == "compact":
            # Compact writes the seqid as an unsigned varint, as Apache's libraries do;
            # thriftpy2's varint writer loops for ever on a negative number.
            seqid &= 0xFFFFFFFF
        proto.write_message_begin(name, mtype, seqid)
        proto.write_struct(struct)
        proto.write_message_end()
        return buf.getvalue()  # type: ignore[no-any-return]

    def encode_call(self, method: MethodInfo, seqid: int, args: Any) -> bytes:
        """Encode a call of ``method`` with an ``<method>_args`` struct."""
        mtype = ONEWAY if method.oneway else CALL
        return self._encode(method.name, mtype, seqid, args)

    def encode_reply(self, name: str, seqid: int, result: Any) -> bytes:
        """Encode a reply carrying a ``<method>_result`` struct."""
        return self._encode(name, REPLY, seqid, result)

    def encode_exception(self, name: str, seqid: int, exc: TApplicationException) -> bytes:
        """Encode a ``TApplicationException`` reply."""
        return self._encode(name, EXCEPTION, seqid, exc)

    def application_error(self, name: str, seqid: int, type_: int, message: str) -> bytes:
        """Encode a ``TApplicationException`` of ``type_`` with ``message`` (any server's;
        offloop's workers send :meth:`fault`)."""
        return self.encode_exception(name, seqid, TApplicationException(type_, message))

    def fault(self, name: str, seqid: int, kind: FaultKind, detail: str) -> bytes:
        """Encode the ``TApplicationException`` of the fault contract for ``kind``."""
        return self.encode_exception(name, seqid, fault_exception(kind, detail))
