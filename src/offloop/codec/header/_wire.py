"""The THeader format's constants and ids, shared by the encoder and the decoder."""

from __future__ import annotations

import enum
import struct
from typing import Final, Literal

__all__ = [
    "HEADER_MAGIC",
    "MAX_HEADER_SECTION_SIZE",
    "HeaderProtocol",
    "HeaderTransform",
]

#: The 16 bits that open a header frame's body.
HEADER_MAGIC: Final = 0x0FFF
#: The header section's size is a 16-bit count of 4-byte words.
MAX_HEADER_SECTION_SIZE: Final = 0xFFFF * 4
#: Apache's C++ reader refuses a header section of 16384 words or more; our encoder keeps
#: below that so every Apache library can read what we write.
MAX_PORTABLE_HEADER_SECTION: Final = 16383 * 4
#: The spec's largest frame (the length prefix's value), just under ``HTTP_MAGIC``.
MAX_FRAME_SIZE: Final = 0x3FFFFFFF
#: A varint of a 32-bit value: 7 bits a byte.
VARINT32_BYTES: Final = 5

#: Magic, flags, seqid, header words: the fixed part of a frame body.
FIXED = struct.Struct("!HHiH")
LEN = struct.Struct("!I")
MAGIC_BYTES = FIXED.pack(HEADER_MAGIC, 0, 0, 0)[:2]

INFO_PADDING = 0
INFO_KEY_VALUE = 1

I32_MIN = -(1 << 31)
I32_MAX = (1 << 31) - 1


class HeaderProtocol(enum.IntEnum):
    """The protocol of a header frame's payload (Apache's ``THeaderSubprotocolID``)."""

    BINARY = 0
    COMPACT = 2

    @property
    def codec_name(self) -> Literal["binary", "compact"]:
        """The name :mod:`offloop.codec.message` and the decode guard use for it."""
        return "binary" if self is HeaderProtocol.BINARY else "compact"


PROTOCOLS: Final = {int(p): p for p in HeaderProtocol}


class HeaderTransform(enum.IntEnum):
    """A transform of a header frame's payload (Apache's ``THeaderTransformID``)."""

    ZLIB = 1
