"""A linear-time structural check of one untrusted Thrift message, run before thriftpy2 reads it.

thriftpy2's decoders trust what a message declares. A 20-byte binary frame holding an unknown
``list<VOID>`` of 2**31-1 elements makes the skip loop run 2**31 times (VOID takes no bytes);
a compact ``list<STOP>`` of 2**62 elements never ends; a compact varint of n bytes decodes in
O(n**2); a negative binary list size reads as an empty list. Refusing those patterns one by one
would leave the next one open, so :func:`check_message` instead proves a *budget* before any
decoding: it walks the whole message once, in time linear in its length, and refuses it unless

- every type code is a value type thriftpy2 can read (never STOP, VOID, UUID or unknown codes),
  so every value, element, field and struct takes at least one byte;
- every declared size or count is non-negative, and ``count * (fewest bytes of one element)``
  fits in the bytes left; with the point above, this bounds every decoding loop by the
  message's length, whatever the types declared;
- every varint ends within the bytes its type allows (5 for 32-bit values, 10 for 64-bit);
- structs and containers nest no deeper than :attr:`DecodeLimits.max_depth`;
- the message ends exactly where its top struct ends (unless trailing bytes are allowed).

Runs of fixed-size elements (a binary ``list<i32>`` is 4n bytes) are skipped in one step, and a
run of compact varints is counted with C-speed ``bytes`` methods, so a big list costs about as
much as copying it; per-element Python work is left for strings, structs and mixed maps.

Why the IDL (``body``) matters: thriftpy2 does not always read what the wire declares. Its
compact decoder reads a declared list's elements as the *declared* type whatever the wire's
element type says, and both decoders read a map key or value sent as a string as the *declared*
type. Either way a peer can hide a second, unchecked message inside a string. Given the struct
class thriftpy2 will decode into, the check follows the IDL where thriftpy2 follows it, and
refuses those disagreements; without it, the check is structural only and does not guarantee
that thriftpy2's decode of the same bytes is cheap.

Sans-I/O: bytes in, ``None`` or an exception out; pure Python, no thriftpy2 import.
"""

from __future__ import annotations

from typing import Literal

from offloop.codec.guard._binary import _BinaryScan
from offloop.codec.guard._compact import _CompactScan
from offloop.codec.guard._scan import Body
from offloop.codec.guard.limits import DEFAULT_LIMITS, DecodeLimits, MessageRefused

__all__ = ["DEFAULT_LIMITS", "DecodeLimits", "MessageRefused", "check_message"]


def check_message(
    data: bytes,
    protocol: Literal["binary", "compact"],
    limits: DecodeLimits = DEFAULT_LIMITS,
    *,
    body: Body = None,
) -> None:
    """Check one Thrift message (a frame body, without its length) before it is decoded.

    Reads the header (strict or old non-strict form for binary; protocol id 0x82 for compact),
    then the struct that follows, recursively, in time linear in ``len(data)``, allocating
    nothing per declared element.

    Args:
        data: the message's bytes.
        protocol: the protocol they are in.
        limits: depth, element and trailing-byte limits.
        body: the thriftpy2 struct class the body will be decoded into, or a mapping from
            message type (1 call, 2 reply, 3 exception, 4 oneway) to that class, in which case
            message types it lacks are refused. Give it whenever thriftpy2 will decode the
            message: only then does passing this check bound thriftpy2's decode (see the
            module docstring). ``None`` checks the structure alone.

    Raises:
        MessageRefused: the message is malformed, truncated, nests too deeply, declares more
            than its bytes can hold, or disagrees with ``body`` where thriftpy2 would misread
            it. The message names the fault and its byte offset.
        ValueError: ``protocol`` is neither ``"binary"`` nor ``"compact"``.
    """
    if protocol == "binary":
        _BinaryScan(data, limits).message(body)
    elif protocol == "compact":
        _CompactScan(data, limits).message(body)
    else:
        raise ValueError(f"unknown Thrift protocol {protocol!r}: use 'binary' or 'compact'")
