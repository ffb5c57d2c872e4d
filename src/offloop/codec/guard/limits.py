"""What a message may cost to decode (:class:`DecodeLimits`), and the error for one that may
not be decoded (:class:`MessageRefused`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from offloop.errors import RemoteProtocolError

__all__ = ["DEFAULT_LIMITS", "DecodeLimits", "MessageRefused"]


@dataclass(frozen=True, slots=True)
class DecodeLimits:
    """What one message may cost to decode, beyond what its length already bounds.

    Attributes:
        max_depth: how deeply structs and containers may nest, the message's top struct
            counting as 1. 64 is thriftpy2's and Apache Thrift's default; the check refuses
            deeper messages instead of letting a decoder recurse through them.
        max_elements: the most container elements (list and set elements, map keys and map
            values) a message may hold, summed over all its containers; ``None`` leaves only
            the message's length as the bound (one element per byte at most). Each element
            becomes a Python object when decoded, so this caps memory, not time.
        allow_trailing_bytes: accept bytes after the end of the message's top struct.
            thriftpy2 ignores them; a peer that sends them is broken, so by default the
            message is refused.
    """

    max_depth: int = 64
    max_elements: int | None = None
    allow_trailing_bytes: bool = False

    def __post_init__(self) -> None:
        if self.max_depth < 1:
            raise ValueError("max_depth must be at least 1 (the message's top struct)")
        if self.max_elements is not None and self.max_elements < 0:
            raise ValueError("max_elements must be non-negative or None")


DEFAULT_LIMITS: Final = DecodeLimits()


class MessageRefused(RemoteProtocolError):
    """The peer sent a Thrift message that is malformed or would cost too much to decode.

    Attributes:
        protocol: ``"binary"`` or ``"compact"``.
        offset: the byte offset in the message where the fault was found.
        reason: what was wrong, for the log.
    """

    def __init__(self, protocol: str, offset: int, reason: str) -> None:
        super().__init__(
            f"{protocol} Thrift message refused at byte {offset}: {reason}",
            public_message=f"malformed {protocol} Thrift message",
        )
        self.protocol = protocol
        self.offset = offset
        self.reason = reason
