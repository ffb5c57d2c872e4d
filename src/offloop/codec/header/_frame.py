"""A header frame as a value (:class:`HeaderFrame`), its encoding, and telling one apart."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

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

__all__ = [
    "HeaderFrame",
    "HeaderParts",
    "encode_header_frame",
    "encode_header_message",
    "encode_header_reply",
    "is_header_frame",
]

#: A header frame's fields, in :class:`HeaderFrame`'s order: protocol, flags, seqid,
#: transforms, info headers, payload (untransformed). What the hot paths pass around instead
#: of a :class:`HeaderFrame` (:func:`~offloop.codec.header.split_header_frame`).
HeaderParts = tuple[HeaderProtocol, int, int, tuple[HeaderTransform, ...], dict[str, str], bytes]


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
        # Raises ValueError for an unknown id. (Skipped for enums already: the decoder's.)
        if type(self.protocol) is not HeaderProtocol:
            object.__setattr__(self, "protocol", HeaderProtocol(self.protocol))
        if self.transforms and not all(type(t) is HeaderTransform for t in self.transforms):
            transforms = tuple(HeaderTransform(t) for t in self.transforms)
            object.__setattr__(self, "transforms", transforms)
        elif type(self.transforms) is not tuple:
            object.__setattr__(self, "transforms", tuple(self.transforms))
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

    def encode_reply(
        self,
        payload: bytes,
        headers: Mapping[str, str] | None = None,
        *,
        transforms: tuple[HeaderTransform, ...] | None = None,
    ) -> bytes:
        """``encode_header_frame(self.reply(payload, headers, transforms=transforms))``,
        without making the reply's :class:`HeaderFrame`: a worker's hot path."""
        return encode_header_message(
            payload,
            self.seqid,
            headers,
            protocol=self.protocol,
            flags=self.flags,
            transforms=self.transforms if transforms is None else transforms,
        )

    def parts(self) -> HeaderParts:
        """This frame's fields as a tuple: what :func:`split_header_frame` returns."""
        return (
            self.protocol,
            self.flags,
            self.seqid,
            self.transforms,
            self.headers,
            self.payload,
        )

    @classmethod
    def _of(
        cls,
        protocol: HeaderProtocol,
        flags: int,
        seqid: int,
        transforms: tuple[HeaderTransform, ...],
        headers: dict[str, str],
        payload: bytes,
    ) -> HeaderFrame:
        """A frame of fields the decoder has checked already: without ``__post_init__``,
        and without the frozen dataclass's ``object.__setattr__`` per field (a third of
        decoding a small frame)."""
        frame = _new(cls)
        _set_protocol(frame, protocol)
        _set_flags(frame, flags)
        _set_seqid(frame, seqid)
        _set_transforms(frame, transforms)
        _set_headers(frame, headers)
        _set_payload(frame, payload)
        return frame


_new = object.__new__


def _slot_setter(cls: type, name: str) -> Callable[[object, Any], None]:
    """The setter of slot ``name``, which a frozen dataclass's __setattr__ does not guard."""
    setter: Callable[[object, Any], None] = cls.__dict__[name].__set__
    return setter


_set_protocol = _slot_setter(HeaderFrame, "protocol")
_set_flags = _slot_setter(HeaderFrame, "flags")
_set_seqid = _slot_setter(HeaderFrame, "seqid")
_set_transforms = _slot_setter(HeaderFrame, "transforms")
_set_headers = _slot_setter(HeaderFrame, "headers")
_set_payload = _slot_setter(HeaderFrame, "payload")


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
    return encode_header_message(
        frame.payload,
        frame.seqid,
        frame.headers,
        protocol=frame.protocol,
        flags=frame.flags,
        transforms=frame.transforms,
    )


class _Uncommon(Exception):
    """A frame the fast encoder leaves to the general one."""


_encode = str.encode
#: Keys seen, as on the wire (their length, then their bytes): a call's keys are nearly
#: always the same few. Bounded: past it, keys are encoded each time.
_KEYS: dict[str, bytes] = {}
_MAX_KEYS = 256


def _key(key: str) -> bytes:
    """A key as on the wire, with a one-byte length; remembered while there is room."""
    data = _encode(key, "utf-8", "surrogateescape")
    if len(data) > 0x7F:
        raise _Uncommon
    data = bytes((len(data),)) + data
    if type(key) is str and len(_KEYS) < _MAX_KEYS:
        _KEYS[key] = data
    return data


#: The whole fixed part, length prefix included: length, magic, flags, seqid, header words.
_PREFIX = struct.Struct("!IHHiH")
_pack_prefix = _PREFIX.pack
_PADDING = (b"", b"\x00", b"\x00\x00", b"\x00\x00\x00")
#: The header section of a frame with no transform and no info header, by protocol id.
_BARE_SECTION = {int(p): bytes((p, 0, 0, 0)) for p in HeaderProtocol}


def encode_header_reply(
    request: HeaderParts, payload: bytes, headers: Mapping[str, str] | None = None
) -> bytes:
    """The frame answering ``request`` (a frame's parts, as :func:`split_header_frame` gives
    them), encoded: :meth:`HeaderFrame.encode_reply` for a frame kept as its parts, a
    worker's hot path."""
    protocol, flags, seqid, transforms, _, _ = request
    return encode_header_message(
        payload, seqid, headers, protocol=protocol, flags=flags, transforms=transforms
    )


def encode_header_message(
    payload: bytes,
    seqid: int,
    headers: Mapping[str, str] | None = None,
    *,
    protocol: HeaderProtocol = HeaderProtocol.BINARY,
    flags: int = 0,
    transforms: tuple[HeaderTransform, ...] = (),
) -> bytes:
    """:func:`encode_header_frame` of a frame of these fields, without making the
    :class:`HeaderFrame` (a client's and a worker's hot path). The fields are not
    validated as :class:`HeaderFrame` validates them: ``protocol`` must be a
    :class:`HeaderProtocol`, ``flags`` 16 bits and ``seqid`` a signed 32-bit int
    (``struct.error`` otherwise).

    Raises:
        LocalProtocolError: as :func:`encode_header_frame`.
        TypeError: a key or value is not a ``str``.
    """
    if transforms:
        return _encode_general(payload, seqid, headers, protocol, flags, transforms)
    section: bytes | bytearray
    if headers:
        # The common frame: one-byte varints (lengths and count below 128), which keeps the
        # section far below MAX_PORTABLE_HEADER_SECTION.
        if len(headers) > 0x7F:
            return _encode_general(payload, seqid, headers, protocol, flags, transforms)
        section = bytearray((protocol, 0, INFO_KEY_VALUE, len(headers)))
        try:
            for key, value in headers.items():
                k = _KEYS.get(key) if type(key) is str else None
                if k is None:
                    k = _key(key)
                # str.encode, not value.encode: a TypeError for what is not a str.
                v = _encode(value, "utf-8", "surrogateescape")
                if len(v) > 0x7F:
                    raise _Uncommon
                section += k
                section.append(len(v))
                section += v
        except (_Uncommon, TypeError, UnicodeEncodeError):
            return _encode_general(payload, seqid, headers, protocol, flags, transforms)
        section += _PADDING[-len(section) % 4]
    else:
        section = _BARE_SECTION[protocol]
    size = 10 + len(section) + len(payload)
    if size > MAX_FRAME_SIZE:
        return _encode_general(payload, seqid, headers, protocol, flags, transforms)
    return b"".join(
        (_pack_prefix(size, HEADER_MAGIC, flags, seqid, len(section) // 4), section, payload)
    )


def _encode_general(
    payload: bytes,
    seqid: int,
    headers: Mapping[str, str] | None,
    protocol: HeaderProtocol,
    flags: int,
    transforms: tuple[HeaderTransform, ...],
) -> bytes:
    """Any frame, with every check and error."""
    for _ in transforms:  # zlib is the only transform
        payload = zlib.compress(payload)
    header = bytearray()
    _put_varint(header, protocol)
    _put_varint(header, len(transforms))
    for transform in transforms:
        _put_varint(header, transform)
    if headers:
        _put_varint(header, INFO_KEY_VALUE)
        _put_varint(header, len(headers))
        for key, value in headers.items():
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
    fixed = FIXED.pack(HEADER_MAGIC, flags, seqid, len(header) // 4)
    return b"".join((LEN.pack(size), fixed, header, payload))
