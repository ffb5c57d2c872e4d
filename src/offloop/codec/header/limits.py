"""What a peer's header frame may hold (:class:`HeaderLimits`), and the errors for one we
refuse (:class:`HeaderError`, :class:`HeaderLimitExceeded`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from offloop.codec.framing import DEFAULT_MAX_FRAME_SIZE
from offloop.codec.header._wire import (
    MAX_HEADER_SECTION_SIZE,
    MAX_PORTABLE_HEADER_SECTION,
    VARINT32_BYTES,
)
from offloop.errors import RemoteProtocolError

__all__ = ["DEFAULT_HEADER_LIMITS", "HeaderError", "HeaderLimitExceeded", "HeaderLimits"]


@dataclass(frozen=True, slots=True)
class HeaderLimits:
    """What a peer's header frame may hold. Every field is in bytes unless it says otherwise.

    The defaults accept whatever Apache's libraries write in practice and keep a frame's
    headers within what HTTP servers allow for a request's header section.

    Attributes:
        max_header_size: the largest header section (protocol id, transforms, info headers
            and padding). 65532 is the most Apache's C++ reader accepts; the format allows
            262140.
        max_info_headers: the most key/value pairs, counted over the whole frame (a key sent
            twice counts twice). 100, as Apache httpd's ``LimitRequestFields``.
        max_key_length: the longest key. 1 KiB: keys are names (``trace-id``), not data.
        max_value_length: the longest value. 8 KiB, about Apache httpd's
            ``LimitRequestFieldSize``.
        max_info_bytes: the most bytes of keys and values together. 16 KiB, h11's bound on
            an HTTP request's header section: what one call may carry beside its arguments.
        max_varint_length: the longest varint. Every varint of the format holds a 32-bit
            value, which takes at most 5 bytes.
        max_transforms: the most transforms a frame may list. zlib is the only one, and
            zlib twice gains nothing but costs a second inflate of up to
            ``max_decompressed_size``.
        accept_zlib: accept zlib-compressed payloads. Apache's clients send them when told
            to (``add_transform``).
        max_decompressed_size: the largest payload a zlib transform may inflate to; the
            inflating stops one byte past it, so a zip bomb costs no more. Default: the
            largest frame :mod:`offloop.codec.framing` accepts, so that a compressed message
            may be as large as an uncompressed one (Apache's Python default likewise).
    """

    max_header_size: int = MAX_PORTABLE_HEADER_SECTION
    max_info_headers: int = 100
    max_key_length: int = 1024
    max_value_length: int = 8 * 1024
    max_info_bytes: int = 16 * 1024
    max_varint_length: int = VARINT32_BYTES
    max_transforms: int = 1
    accept_zlib: bool = True
    max_decompressed_size: int = DEFAULT_MAX_FRAME_SIZE

    def __post_init__(self) -> None:
        for name in (
            "max_header_size",
            "max_info_headers",
            "max_key_length",
            "max_value_length",
            "max_info_bytes",
            "max_transforms",
            "max_decompressed_size",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        if self.max_header_size > MAX_HEADER_SECTION_SIZE:
            raise ValueError(f"max_header_size is at most {MAX_HEADER_SECTION_SIZE}")
        if not 1 <= self.max_varint_length <= 10:
            raise ValueError("max_varint_length must be from 1 to 10")


DEFAULT_HEADER_LIMITS: Final = HeaderLimits()


class HeaderError(RemoteProtocolError):
    """The peer sent a header frame we cannot accept.

    Attributes:
        offset: where in the frame body (after the length prefix) the fault was found.
        reason: what was wrong, for the log.
    """

    def __init__(self, reason: str, offset: int) -> None:
        super().__init__(
            f"Thrift header frame refused at byte {offset}: {reason}",
            public_message="malformed Thrift header frame",
        )
        self.offset = offset
        self.reason = reason


class HeaderLimitExceeded(HeaderError):
    """A header frame goes past one of the :class:`HeaderLimits`.

    Attributes:
        limit: the name of the :class:`HeaderLimits` field it goes past.
    """

    def __init__(self, limit: str, reason: str, offset: int) -> None:
        super().__init__(f"{reason} (HeaderLimits.{limit})", offset)
        self.limit = limit
