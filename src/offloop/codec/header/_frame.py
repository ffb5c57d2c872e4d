"""A header frame as a value (:class:`HeaderFrame`), its encoding, and telling one apart."""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field

from offloop.codec.header._wire import (
    FIXED,
    HEADER_MAGIC,
    I32_MAX,
    I32_MIN,
    INFO_KEY_VALUE,
    LEN,
    MAGIC_BYTES,
    MAX_FRAME_SIZE,
    MAX_PORTABLE_HEADER_SECTION,
    HeaderProtocol,
    HeaderTransform,
)
from offloop.errors import LocalProtocolError

__all__ = ["HeaderFrame", "encode_header_frame", "is_header_frame"]


@dataclass(frozen=True, slots=True, kw_only=True)
class HeaderFrame:
    """One header frame: a Thrift message and what the header transport carries beside it.

    Ints are accepted for ``protocol`` and ``transforms`` and turned into the enums.

    Attributes:
        protocol: the payload's protocol.
        flags: 16 bits, opaque to Apache; a server echoes them.
        seqid: the sequence number, a signed 32-bit int; Apache sets it to the payload
            message's seqid.
        transforms: applied to the payload in this order when encoding, undone in reverse
            when decoding.
        headers: the key/value info headers (strings: see :mod:`offloop.codec.header`).
        payload: the Thrift message, untransformed.
    """

    protocol: HeaderProtocol = HeaderProtocol.BINARY
    flags: int = 0
    seqid: int = 0
    transforms: tuple[HeaderTransform, ...] = ()
    headers: dict[str, str] = field(default_factory=dict, hash=False)
    payload: bytes = b""

    def __post_init__(self) -> None:
        # Raises ValueError for an unknown id.
        object.__setattr__(self, "protocol", HeaderProtocol(self.protocol))
        object.__setattr__(self, "transforms", tuple(HeaderTransform(t) for t in self.transforms))
        if not 0 <= self.flags <= 0xFFFF:
            raise ValueError(f"flags {self.flags} do not fit 16 bits")
        if not I32_MIN <= self.seqid <= I32_MAX:
            raise ValueError(f"seqid {self.seqid} is not a signed 32-bit int")

    def reply(
        self,
        payload: bytes,
        headers: Mapping[str, str] | None = None,
        *,
        transforms: tuple[HeaderTransform, ...] | None = None,
    ) -> HeaderFrame:
        """The frame answering this one: same protocol, seqid and flags.

        Args:
            payload: the reply message, in this frame's protocol.
            headers: the info headers to send back (none by default: Apache echoes none).
            transforms: the reply's transforms; by default this frame's (a client that
                compressed its call can read a compressed reply).
        """
        return HeaderFrame(
            protocol=self.protocol,
            flags=self.flags,
            seqid=self.seqid,
            transforms=self.transforms if transforms is None else transforms,
            headers=dict(headers or {}),
            payload=payload,
        )


def is_header_frame(body: bytes) -> bool:
    """Whether a frame body (after its length prefix) is a header frame, by its magic.

    A framed Thrift message never starts with the magic (see :mod:`offloop.codec.header`), so this
    tells the two apart on a connection that may carry either.
    """
    return body[:2] == MAGIC_BYTES


# -- encoding -------------------------------------------------------------------------------


def _put_varint(out: bytearray, n: int) -> None:
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)


def _put_string(out: bytearray, what: str, text: str) -> None:
    if not isinstance(text, str):
        raise TypeError(f"info header {what} {text!r} is not a str")
    try:
        data = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError as exc:
        raise LocalProtocolError(
            f"info header {what} {text!r} holds a surrogate that stands for no byte"
        ) from exc
    _put_varint(out, len(data))
    out += data


def encode_header_frame(frame: HeaderFrame) -> bytes:
    """The bytes of ``frame`` on the wire, its 4-byte length prefix included.

    The payload goes through ``frame.transforms`` in order; the header section is padded with
    zero bytes to a whole number of words.

    Raises:
        LocalProtocolError: the header section is over 65532 bytes (more than Apache's C++
            reader accepts), the frame is over the spec's 0x3FFFFFFF bytes, or a header
            holds a surrogate that does not stand for a byte (see :mod:`offloop.codec.header`).
        TypeError: a key or value is not a ``str``.
    """
    payload = frame.payload
    for _ in frame.transforms:  # zlib is the only transform
        payload = zlib.compress(payload)
    header = bytearray()
    _put_varint(header, frame.protocol)
    _put_varint(header, len(frame.transforms))
    for transform in frame.transforms:
        _put_varint(header, transform)
    if frame.headers:
        _put_varint(header, INFO_KEY_VALUE)
        _put_varint(header, len(frame.headers))
        for key, value in frame.headers.items():
            _put_string(header, "key", key)
            _put_string(header, "value", value)
    header += bytes(-len(header) % 4)
    if len(header) > MAX_PORTABLE_HEADER_SECTION:
        raise LocalProtocolError(
            f"header section of {len(header)} bytes is over the {MAX_PORTABLE_HEADER_SECTION}"
            " bytes Apache's readers accept"
        )
    size = FIXED.size + len(header) + len(payload)
    if size > MAX_FRAME_SIZE:
        raise LocalProtocolError(f"header frame of {size} bytes is over 0x3FFFFFFF bytes")
    fixed = FIXED.pack(HEADER_MAGIC, frame.flags, frame.seqid, len(header) // 4)
    return b"".join((LEN.pack(size), fixed, header, payload))
