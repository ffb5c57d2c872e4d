"""Decoding a header frame's body, bounded by :class:`HeaderLimits`, in time linear in its
length."""

from __future__ import annotations

import struct
import zlib

from offloop.codec.header._frame import HeaderFrame, HeaderParts
from offloop.codec.header._wire import (
    FIXED,
    HEADER_MAGIC,
    INFO_KEY_VALUE,
    INFO_PADDING,
    PROTOCOLS,
    HeaderTransform,
)
from offloop.codec.header.limits import (
    DEFAULT_HEADER_LIMITS,
    HeaderError,
    HeaderLimitExceeded,
    HeaderLimits,
)

__all__ = ["HeaderParts", "decode_header_frame", "split_header_frame"]


class _Section:
    """Reads varints and strings from the header section ``body[start:end]``."""

    __slots__ = ("body", "end", "max_varint", "pos")

    def __init__(self, body: bytes, start: int, end: int, max_varint: int) -> None:
        self.body = body
        self.pos = start
        self.end = end
        self.max_varint = max_varint

    def varint(self, what: str, suffix: str = "") -> int:
        """The next varint; ``what`` and ``suffix`` name it in an error (joined only then:
        this runs a dozen times a frame)."""
        body, start = self.body, self.pos
        if start < self.end:
            byte = body[start]
            if byte < 0x80:  # one byte: nearly every varint of a header section
                self.pos = start + 1
                return byte
        stop = min(self.end, start + self.max_varint)
        result = shift = 0
        for pos in range(start, stop):
            byte = body[pos]
            result |= (byte & 0x7F) << shift
            if not byte & 0x80:
                self.pos = pos + 1
                return result
            shift += 7
        if stop == self.end:
            raise HeaderError(f"{what}{suffix} runs past the end of the header section", start)
        raise HeaderLimitExceeded(
            "max_varint_length",
            f"{what}{suffix} varint is longer than {self.max_varint} bytes",
            start,
        )

    def string(self, what: str, limit_name: str, limit: int) -> bytes:
        start = self.pos
        size = self.varint(what, " length")
        if size > limit:
            raise HeaderLimitExceeded(
                limit_name, f"{what} of {size} bytes is over the limit of {limit}", start
            )
        pos = self.pos
        if size > self.end - pos:
            raise HeaderError(
                f"{what} of {size} bytes runs past the end of the header section", start
            )
        self.pos = pos + size
        return self.body[pos : pos + size]


def _text(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


#: The fixed part, then the protocol id and transform count as the one-byte varints they are
#: in a common frame (read only if the header section has them: words >= 1).
_unpack_common = struct.Struct(FIXED.format + "BB").unpack_from
_NO_TRANSFORMS: tuple[HeaderTransform, ...] = ()


def decode_header_frame(body: bytes, limits: HeaderLimits = DEFAULT_HEADER_LIMITS) -> HeaderFrame:
    """Decode a header frame's body (the bytes after its 4-byte length prefix).

    Args:
        body: the frame body, starting with the magic.
        limits: what the frame may hold.

    Returns:
        The frame, its payload with the transforms undone.

    Raises:
        HeaderError: the body is not a header frame we accept: it is too short, has no
            magic, names an unknown protocol or transform, holds a malformed varint, a length
            past the end of its header section or non-zero padding, or its zlib payload is
            corrupt. :class:`HeaderLimitExceeded` (a subclass) for a frame past one of the
            ``limits``.
    """
    return HeaderFrame._of(*split_header_frame(body, limits))


def split_header_frame(body: bytes, limits: HeaderLimits = DEFAULT_HEADER_LIMITS) -> HeaderParts:
    """:func:`decode_header_frame` without the :class:`HeaderFrame`: its fields as a tuple
    (:data:`HeaderParts`), for the hot paths of clients and workers.

    Raises:
        HeaderError: as :func:`decode_header_frame`.
    """
    parts = _split_common(body, limits)
    return _split_general(body, limits) if parts is None else parts


def _split_common(body: bytes, limits: HeaderLimits) -> HeaderParts | None:
    """The fast path: the frame of every offloop call and of Apache's clients by default (no
    transform, an ASCII header section, so one-byte varints, at most one key/value block, then
    zero padding), under limits that such a section cannot go past but by its size and count;
    None for any other frame, which :func:`_split_general` then accepts or refuses.

    It returns a frame only where the general path returns the same frame, and None wherever
    that raises (tests/codec/test_header_fast.py checks this on random and mutated frames):
    every read below either stays within the header section or moves ``pos`` past its end,
    which is checked before anything is returned.
    """
    if len(body) < 12:  # the fixed part, the protocol id and the transform count
        return None
    magic, flags, seqid, words, protocol_id, transforms = _unpack_common(body)
    end = 10 + words * 4
    if magic != HEADER_MAGIC or transforms or not words or end > len(body):
        return None
    protocol = PROTOCOLS.get(protocol_id)
    if protocol is None:
        return None
    section = body[12:end]  # the info headers: at least 2 bytes, as words >= 1
    try:
        # Every byte below 0x80: each varint is one byte, and the text's offsets are the bytes'.
        text = section.decode("ascii")
    except UnicodeDecodeError:
        return None
    size = words * 4
    if (
        size > limits.max_header_size
        # Keys and values are fewer bytes than their section: max_info_bytes cannot bind.
        or size > limits.max_info_bytes
        # Nor can these, as a one-byte varint is at most 0x7F.
        or limits.max_key_length < 0x7F
        or limits.max_value_length < 0x7F
    ):
        return None
    headers: dict[str, str] = {}
    pos = 0
    if section[0] == INFO_KEY_VALUE:
        count = section[1]
        if count > limits.max_info_headers:
            return None
        pos = 2
        try:
            for _ in range(count):
                n = section[pos]
                at = pos + 1 + n
                key = text[pos + 1 : at]
                n = section[at]
                pos = at + 1 + n
                headers[key] = text[at + 1 : pos]
        except IndexError:  # a length byte past the section's end
            return None
        if pos > len(section):  # a key or value past it
            return None
    # The rest of the section must be padding: zeros (anything else, the general path).
    if pos < len(section) and section.count(0, pos) != len(section) - pos:
        return None
    return protocol, flags, seqid, _NO_TRANSFORMS, headers, body[end:]


def _split_general(body: bytes, limits: HeaderLimits) -> HeaderParts:
    """Any frame: every case the format allows, every limit and every error."""
    if len(body) < FIXED.size:
        raise HeaderError(
            f"frame of {len(body)} bytes is shorter than the {FIXED.size}-byte fixed header", 0
        )
    magic, flags, seqid, words = FIXED.unpack_from(body)
    if magic != HEADER_MAGIC:
        raise HeaderError(f"magic is 0x{magic:04x}, not 0x{HEADER_MAGIC:04x}", 0)
    size = words * 4
    if size > limits.max_header_size:
        raise HeaderLimitExceeded(
            "max_header_size",
            f"header section of {size} bytes is over the limit of {limits.max_header_size}",
            8,
        )
    end = FIXED.size + size
    if end > len(body):
        raise HeaderError(
            f"header section of {size} bytes runs past the end of the {len(body)}-byte frame", 8
        )
    section = _Section(body, FIXED.size, end, limits.max_varint_length)

    at = section.pos
    protocol_id = section.varint("protocol id")
    if protocol_id not in PROTOCOLS:
        raise HeaderError(f"unsupported protocol id {protocol_id} (0 binary, 2 compact)", at)
    protocol = PROTOCOLS[protocol_id]

    at = section.pos
    count = section.varint("transform count")
    if count > limits.max_transforms:
        raise HeaderLimitExceeded(
            "max_transforms", f"{count} transforms, over the limit of {limits.max_transforms}", at
        )
    transforms: list[HeaderTransform] = []
    for _ in range(count):
        at = section.pos
        transform_id = section.varint("transform id")
        if transform_id != HeaderTransform.ZLIB:
            raise HeaderError(f"unsupported transform id {transform_id} (1 zlib)", at)
        if not limits.accept_zlib:
            raise HeaderLimitExceeded("accept_zlib", "zlib transform is not accepted", at)
        transforms.append(HeaderTransform.ZLIB)

    headers: dict[str, str] = {}
    pairs = info_bytes = 0
    while section.pos < end:
        at = section.pos
        info_type = section.varint("info header type")
        if info_type == INFO_PADDING:
            _check_padding(body, at, end)
            break
        if info_type != INFO_KEY_VALUE:
            break  # unknown: the spec says to skip the rest of the section
        at = section.pos
        count = section.varint("info header count")
        if pairs + count > limits.max_info_headers:
            raise HeaderLimitExceeded(
                "max_info_headers",
                f"{pairs + count} info headers, over the limit of {limits.max_info_headers}",
                at,
            )
        pairs += count
        for _ in range(count):
            at = section.pos
            key = section.string("info header key", "max_key_length", limits.max_key_length)
            value = section.string("info header value", "max_value_length", limits.max_value_length)
            info_bytes += len(key) + len(value)
            if info_bytes > limits.max_info_bytes:
                raise HeaderLimitExceeded(
                    "max_info_bytes",
                    f"info headers of over {limits.max_info_bytes} bytes",
                    at,
                )
            headers[_text(key)] = _text(value)

    payload = body[end:]
    for _ in reversed(transforms):  # zlib is the only transform
        payload = _inflate(payload, limits.max_decompressed_size, end)
    return protocol, flags, seqid, tuple(transforms), headers, payload


def _check_padding(body: bytes, start: int, end: int) -> None:
    rest = body[start:end].lstrip(b"\x00")
    if rest:
        bad = end - len(rest)
        raise HeaderError(f"padding byte is 0x{body[bad]:02x}, not zero", bad)


def _inflate(data: bytes, limit: int, offset: int) -> bytes:
    inflater = zlib.decompressobj()
    try:
        # One byte past the limit tells "too large" from "exactly the limit" (and a
        # max_length of 0 would mean no limit at all).
        out = inflater.decompress(data, limit + 1)
    except zlib.error as exc:
        raise HeaderError(f"zlib payload is corrupt: {exc}", offset) from exc
    if len(out) > limit:
        raise HeaderLimitExceeded(
            "max_decompressed_size", f"zlib payload inflates to over {limit} bytes", offset
        )
    if not inflater.eof:
        raise HeaderError("zlib payload is truncated", offset)
    if inflater.unused_data:
        raise HeaderError(
            f"{len(inflater.unused_data)} bytes follow the end of the zlib payload",
            offset + len(data) - len(inflater.unused_data),
        )
    return out
