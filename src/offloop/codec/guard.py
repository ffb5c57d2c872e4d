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

import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

from offloop.errors import RemoteProtocolError

__all__ = ["DEFAULT_LIMITS", "DecodeLimits", "MessageRefused", "check_message"]

#: How thriftpy2 decodes one message body: a generated struct class (``method.args_cls``,
#: ``TApplicationException``...), or one per message type, or ``None`` for structure only.
StructClass = type[Any]
Body = StructClass | Mapping[int, StructClass] | None


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


# -- type codes ---------------------------------------------------------------------------

# thriftpy2's TType codes, which are also the binary protocol's wire codes.
_BOOL, _BYTE, _DOUBLE, _I16, _I32, _I64 = 2, 3, 4, 6, 8, 10
_STRING, _STRUCT, _MAP, _SET, _LIST = 11, 12, 13, 14, 15
#: thriftpy2 declares ``binary`` as 18 but sends it as STRING (11); either reads the other.
_BIN_TYPES: Final = frozenset((11, 18))

_TTYPE_NAMES: Final = {
    0: "STOP",
    1: "VOID",
    2: "BOOL",
    3: "BYTE",
    4: "DOUBLE",
    6: "I16",
    8: "I32",
    9: "U64",
    10: "I64",
    11: "STRING",
    12: "STRUCT",
    13: "MAP",
    14: "SET",
    15: "LIST",
    16: "UUID",
    18: "BINARY",
}

#: Fewest bytes one value of each binary wire type takes; a code missing here is refused.
#: UUID (16) is left out on purpose: thriftpy2 cannot read it and skips it as zero bytes, so
#: its reading of the rest would drift from ours.
_BIN_MIN: Final = {
    _BOOL: 1,
    _BYTE: 1,
    _DOUBLE: 8,
    _I16: 2,
    _I32: 4,
    _I64: 8,
    _STRING: 4,
    _STRUCT: 1,
    _MAP: 6,
    _SET: 5,
    _LIST: 5,
}
#: Binary types of one fixed size: a run of n of them is skipped in one step.
_BIN_FIXED: Final = {_BOOL: 1, _BYTE: 1, _DOUBLE: 8, _I16: 2, _I32: 4, _I64: 8}

# Compact wire codes. 1 and 2 are BOOL (true and false in a field header; either in a
# container, where each element then takes one byte).
_C_BYTE, _C_I16, _C_I32, _C_I64, _C_DOUBLE, _C_BINARY = 3, 4, 5, 6, 7, 8
_C_LIST, _C_SET, _C_MAP, _C_STRUCT = 9, 10, 11, 12
_C_NAMES: Final = (
    "STOP",
    "BOOL_TRUE",
    "BOOL_FALSE",
    "BYTE",
    "I16",
    "I32",
    "I64",
    "DOUBLE",
    "BINARY",
    "LIST",
    "SET",
    "MAP",
    "STRUCT",
    "UUID",
    "code 14",
    "code 15",
)
#: The thriftpy2 type each compact code decodes as (BINARY as STRING: they read each other).
_C_TTYPE: Final = (
    0,
    _BOOL,
    _BOOL,
    _BYTE,
    _I16,
    _I32,
    _I64,
    _DOUBLE,
    _STRING,
    _LIST,
    _SET,
    _MAP,
    _STRUCT,
)
#: Fewest bytes of one compact container element, by code; codes 0 and 13-15 are refused
#: (UUID, 13, for the reason given at ``_BIN_MIN``).
_C_MIN: Final = {1: 1, 2: 1, 3: 1, 4: 1, 5: 1, 6: 1, 7: 8, 8: 1, 9: 1, 10: 1, 11: 1, 12: 1}
#: Compact element types of one fixed size.
_C_FIXED: Final = {1: 1, 2: 1, _C_BYTE: 1, _C_DOUBLE: 8}
#: Longest varint of each compact integer type. i16 is sent as an i32 varint (5 bytes), as
#: Apache's readers accept.
_C_VARINT_MAX: Final = {_C_I16: 5, _C_I32: 5, _C_I64: 10}

_MESSAGE_TYPES: Final = {1: "CALL", 2: "REPLY", 3: "EXCEPTION", 4: "ONEWAY"}
_BINARY_VERSION_1: Final = 0x80010000
_COMPACT_ID: Final = 0x82
_COMPACT_VERSION: Final = 1
#: A size is an i32 on the wire; a larger compact varint would be negative to Apache's readers.
_MAX_SIZE: Final = 0x7FFFFFFF
#: Below this many varints a plain loop is cheaper than translating the message to flags.
_VARINT_RUN_MIN: Final = 32
#: Byte -> 1 if it continues a varint, 0 if it ends one; counted and searched at C speed.
_CONTINUES: Final = bytes(int(b >= 0x80) for b in range(256))
#: A too-long varint in those flags: as many 1s in a row as the varint's longest form.
_RUNS: Final = {n: b"\x01" * n for n in set(_C_VARINT_MAX.values())}

_I16_AT = struct.Struct(">h").unpack_from
_I32_AT = struct.Struct(">i").unpack_from
_U32_AT = struct.Struct(">I").unpack_from


def _split(spec: Any) -> tuple[int, Any]:
    """A thriftpy2 element spec (``8`` or ``(12, Xtruct)``) as (type, sub-spec)."""
    if isinstance(spec, tuple):
        return spec[0], spec[1]
    return spec, None


def _same(wire: int, declared: int) -> bool:
    """Whether thriftpy2 reads a value sent as ``wire`` as the ``declared`` type."""
    return wire == declared or (wire in _BIN_TYPES and declared in _BIN_TYPES)


def _ttype_name(code: int) -> str:
    return _TTYPE_NAMES.get(code, f"code {code}")


class _Scan:
    """State shared by both protocols' walks: the bytes, the limits, the element tally.

    Every walking method takes the offset to read from and returns the offset just past what
    it read, so no slice of the message is ever made.
    """

    __slots__ = ("_flags", "data", "elements", "end", "max_depth", "max_elements", "trailing")
    protocol = ""

    def __init__(self, data: bytes, limits: DecodeLimits) -> None:
        self.data = data
        self.end = len(data)
        self.max_depth = limits.max_depth
        self.max_elements = limits.max_elements
        self.trailing = limits.allow_trailing_bytes
        self.elements = 0
        self._flags: bytes | None = None

    def refuse(self, offset: int, reason: str) -> MessageRefused:
        return MessageRefused(self.protocol, offset, reason)

    def short(self, offset: int, what: str) -> MessageRefused:
        return self.refuse(offset, f"the message ends inside {what}")

    def tally(self, offset: int, count: int) -> None:
        """Count ``count`` more elements against ``max_elements``."""
        self.elements += count
        if self.max_elements is not None and self.elements > self.max_elements:
            raise self.refuse(
                offset, f"more than {self.max_elements} container elements in one message"
            )

    def too_deep(self, offset: int) -> MessageRefused:
        return self.refuse(offset, f"structs and containers nest deeper than {self.max_depth}")

    def body_class(self, body: Body, mtype: int, offset: int) -> StructClass | None:
        if not isinstance(body, Mapping):
            return body
        cls = body.get(mtype)
        if cls is None:
            expected = " or ".join(_MESSAGE_TYPES.get(t, str(t)) for t in body)
            raise self.refuse(
                offset, f"unexpected message type {_MESSAGE_TYPES[mtype]} (expected {expected})"
            )
        return cls

    def check_type(self, mtype: int, offset: int) -> None:
        if mtype not in _MESSAGE_TYPES:
            raise self.refuse(
                offset, f"message type {mtype} is not CALL, REPLY, EXCEPTION or ONEWAY"
            )

    def finish(self, pos: int) -> None:
        if pos != self.end and not self.trailing:
            raise self.refuse(pos, f"{self.end - pos} bytes after the end of the message")


class _BinaryScan(_Scan):
    """The walk for the binary protocol (big-endian fixed-size integers, i32 lengths)."""

    __slots__ = ()
    protocol = "binary"

    def message(self, body: Body) -> None:
        data, end = self.data, self.end
        if end < 4:
            raise self.short(0, "the message header")
        word: int = _U32_AT(data, 0)[0]
        if word & 0x80000000:
            # Strict header: version word, name, seqid.
            if word & 0xFFFFFF00 != _BINARY_VERSION_1:
                raise self.refuse(0, f"bad version word 0x{word:08x} (expected 0x800100tt)")
            mtype = word & 0xFF
            self.check_type(mtype, 3)
            pos = self.string(4, "method name")
        else:
            # Old non-strict header: name length (this word), name, type byte, seqid.
            pos = 4 + word
            if pos >= end:
                raise self.refuse(0, f"method name of {word} bytes, {end - 4} left")
            mtype = data[pos]
            self.check_type(mtype, pos)
            pos += 1
        if pos + 4 > end:
            raise self.short(pos, "the seqid")
        cls = self.body_class(body, mtype, pos)
        self.finish(self.struct(pos + 4, cls, 1))

    def string(self, pos: int, what: str = "a string") -> int:
        if pos + 4 > self.end:
            raise self.short(pos, f"the length of {what}")
        size: int = _I32_AT(self.data, pos)[0]
        if size < 0:
            raise self.refuse(pos, f"negative length {size} of {what}")
        pos += 4
        if size > self.end - pos:
            raise self.refuse(pos - 4, f"{what} of {size} bytes, {self.end - pos} left")
        return pos + size

    def value(self, pos: int, t: int, spec: Any, level: int) -> int:
        """Walk one value of binary type ``t`` (already validated); ``level`` is its depth
        if it is a struct or container; ``spec`` is what thriftpy2 reads it as, or None."""
        size = _BIN_FIXED.get(t)
        if size is not None:
            if pos + size > self.end:
                raise self.short(pos, f"a {_ttype_name(t)} value")
            return pos + size
        if t == _STRING:
            return self.string(pos)
        if t == _STRUCT:
            return self.struct(pos, spec, level)
        if t == _MAP:
            return self.map(pos, spec, level)
        return self.list(pos, t, spec, level)

    def struct(self, pos: int, cls: StructClass | None, level: int) -> int:
        if level > self.max_depth:
            raise self.too_deep(pos)
        data, end = self.data, self.end
        fields: Mapping[int, Any] | None = None if cls is None else cls.thrift_spec
        while True:
            if pos >= end:
                raise self.short(pos, "a struct (no STOP)")
            t = data[pos]
            if t == 0:
                return pos + 1
            if t not in _BIN_MIN:
                raise self.refuse(pos, f"field type {_ttype_name(t)} is not a value type")
            if pos + 3 > end:
                raise self.short(pos, "a field header")
            spec = None
            if fields is not None:
                declared = fields.get(_I16_AT(data, pos + 1)[0])
                # thriftpy2 reads a field as declared when the types agree, else skips it by
                # its wire type; either way the wire type is what is read.
                if declared is not None and _same(t, declared[0]) and len(declared) > 3:
                    spec = declared[2]
            pos += 3
            size = _BIN_FIXED.get(t)
            if size is not None:
                pos += size
                if pos > end:
                    raise self.short(pos - size, f"a {_ttype_name(t)} field")
            else:
                pos = self.value(pos, t, spec, level + 1)

    def list(self, pos: int, kind: int, spec: Any, level: int) -> int:
        if level > self.max_depth:
            raise self.too_deep(pos)
        data, end = self.data, self.end
        what = "list" if kind == _LIST else "set"
        if pos + 5 > end:
            raise self.short(pos, f"a {what} header")
        et = data[pos]
        count: int = _I32_AT(data, pos + 1)[0]
        least = _BIN_MIN.get(et)
        if least is None:
            raise self.refuse(pos, f"{what} element type {_ttype_name(et)} is not a value type")
        if count < 0:
            raise self.refuse(pos + 1, f"negative {what} size {count}")
        pos += 5
        if count * least > end - pos:
            raise self.refuse(
                pos - 4,
                f"{what} of {count} {_ttype_name(et)} needs at least {count * least} bytes, "
                f"{end - pos} left",
            )
        if count == 0:
            return pos
        if self.max_elements is not None:
            self.tally(pos - 4, count)
        size = _BIN_FIXED.get(et)
        if size is not None:
            return pos + count * size  # in bounds: checked just above
        element_spec = None
        if spec is not None:
            declared, sub = _split(spec)
            # On disagreement thriftpy2 skips the elements by their wire type, as we do.
            if _same(et, declared):
                element_spec = sub
        if et == _STRING:
            for _ in range(count):
                if pos + 4 > end:
                    raise self.short(pos, "the length of a string")
                length: int = _I32_AT(data, pos)[0]
                if length < 0:
                    raise self.refuse(pos, f"negative length {length} of a string")
                if length > end - pos - 4:
                    raise self.refuse(pos, f"a string of {length} bytes, {end - pos - 4} left")
                pos += 4 + length
            return pos
        if et == _STRUCT:
            if level + 1 > self.max_depth:  # the inline path below does not check it
                raise self.too_deep(pos)
            for _ in range(count):
                if pos < end and data[pos] == 0:
                    pos += 1  # an empty struct: the common case in a big list, done inline
                else:
                    pos = self.struct(pos, element_spec, level + 1)
            return pos
        for _ in range(count):
            pos = self.value(pos, et, element_spec, level + 1)
        return pos

    def map(self, pos: int, spec: Any, level: int) -> int:
        if level > self.max_depth:
            raise self.too_deep(pos)
        data, end = self.data, self.end
        if pos + 6 > end:
            raise self.short(pos, "a map header")
        kt, vt = data[pos], data[pos + 1]
        count: int = _I32_AT(data, pos + 2)[0]
        kmin, vmin = _BIN_MIN.get(kt), _BIN_MIN.get(vt)
        if kmin is None:
            raise self.refuse(pos, f"map key type {_ttype_name(kt)} is not a value type")
        if vmin is None:
            raise self.refuse(pos + 1, f"map value type {_ttype_name(vt)} is not a value type")
        if count < 0:
            raise self.refuse(pos + 2, f"negative map size {count}")
        pos += 6
        if count * (kmin + vmin) > end - pos:
            raise self.refuse(
                pos - 4,
                f"map of {count} {_ttype_name(kt)}->{_ttype_name(vt)} needs at least "
                f"{count * (kmin + vmin)} bytes, {end - pos} left",
            )
        if count == 0:
            return pos
        if self.max_elements is not None:
            self.tally(pos - 4, 2 * count)
        kspec, vspec = _map_specs(self, pos - 6, spec, kt, vt)
        ksize, vsize = _BIN_FIXED.get(kt), _BIN_FIXED.get(vt)
        if ksize is not None and vsize is not None:
            return pos + count * (ksize + vsize)
        for _ in range(count):
            pos = self.value(pos, kt, kspec, level + 1)
            pos = self.value(pos, vt, vspec, level + 1)
        return pos


def _map_specs(scan: _Scan, offset: int, spec: Any, kw: int, vw: int) -> tuple[Any, Any]:
    """The specs thriftpy2 reads a map's keys and values with, given their wire types (as
    thriftpy2 types), or (None, None) when it skips them by their wire types, as we do.

    thriftpy2 takes a key or value sent as a string to be of the *declared* type, whatever that
    is; if that is not a string type, it would read a string's bytes as, say, a struct. Refused.
    """
    if spec is None:
        return None, None
    (kd, ks), (vd, vs) = _split(spec[0]), _split(spec[1])
    for wire, declared, role in ((kw, kd, "key"), (vw, vd, "value")):
        if wire == _STRING and declared not in _BIN_TYPES:
            raise scan.refuse(
                offset,
                f"map {role}s are strings on the wire but {_ttype_name(declared)} in the IDL; "
                "thriftpy2 would read the strings' bytes as the latter",
            )
    if _same(kw, kd) and _same(vw, vd):
        return ks, vs
    return None, None


class _CompactScan(_Scan):
    """The walk for the compact protocol (varints, field-id deltas, bools in field headers)."""

    __slots__ = ()
    protocol = "compact"

    def message(self, body: Body) -> None:
        data, end = self.data, self.end
        if end < 2:
            raise self.short(0, "the message header")
        if data[0] != _COMPACT_ID:
            raise self.refuse(0, f"protocol id 0x{data[0]:02x} (expected 0x82)")
        version, mtype = data[1] & 0x1F, data[1] >> 5
        if version != _COMPACT_VERSION:
            raise self.refuse(1, f"version {version} (expected 1)")
        self.check_type(mtype, 1)
        pos = self.varint(2, 5, "the seqid")
        size, pos = self.size(pos, "method name length")
        if size > end - pos:
            raise self.refuse(pos, f"method name of {size} bytes, {end - pos} left")
        cls = self.body_class(body, mtype, pos)
        self.finish(self.struct(pos + size, cls, 1))

    def varint(self, pos: int, longest: int, what: str) -> int:
        """Skip one varint of at most ``longest`` bytes."""
        data, end = self.data, self.end
        stop = pos + longest
        i = pos
        while i < end:
            if data[i] < 0x80:
                return i + 1
            i += 1
            if i == stop:
                raise self.refuse(pos, f"{what} varint is longer than {longest} bytes")
        raise self.short(pos, f"{what} varint")

    def size(self, pos: int, what: str) -> tuple[int, int]:
        """Read a size or length varint (an i32 on the wire, >= 0)."""
        data, end = self.data, self.end
        if pos < end and data[pos] < 0x80:
            return data[pos], pos + 1
        after = self.varint(pos, 5, what)
        value = 0
        for i in range(after - 1, pos - 1, -1):
            value = (value << 7) | (data[i] & 0x7F)
        if value > _MAX_SIZE:
            raise self.refuse(pos, f"{what} {value} is over 2**31-1 (negative as an i32)")
        return value, after

    def varints(self, pos: int, count: int, longest: int, what: str) -> int:
        """Skip ``count`` varints of at most ``longest`` bytes each.

        A long run is counted on a byte-per-byte copy of the message holding 1 where a byte
        continues a varint: the run ends after its ``count``-th 0, found by counting 0s in
        windows (each window as long as the varints still missing, so the loop runs at most
        len/_VARINT_RUN_MIN times and reads each byte once); then one search for ``longest``
        1s in a row finds any varint that is too long.
        """
        data, end = self.data, self.end
        if count >= _VARINT_RUN_MIN:
            flags = self._flags
            if flags is None:
                flags = self._flags = data.translate(_CONTINUES)
            start, left = pos, count
            while left >= _VARINT_RUN_MIN:
                stop = pos + left
                if stop > end:
                    # Truncated or garbage: walk again one by one, for an exact diagnosis.
                    return self._varints_slowly(start, count, longest, what)
                left -= flags.count(0, pos, stop)
                pos = stop
            # The last few one by one (the first may start mid-varint: harmless, as the
            # search below covers the whole run).
            pos = self._varints_slowly(pos, left, longest, what)
            bad = flags.find(_RUNS[longest], start, pos)
            if bad != -1:
                raise self.refuse(bad, f"{what} varint is longer than {longest} bytes")
            return pos
        for _ in range(count):
            if pos < end and data[pos] < 0x80:
                pos += 1
            else:
                pos = self.varint(pos, longest, what)
        return pos

    def _varints_slowly(self, pos: int, count: int, longest: int, what: str) -> int:
        for _ in range(count):
            pos = self.varint(pos, longest, what)
        return pos

    def value(self, pos: int, ct: int, spec: Any, level: int) -> int:
        """Walk one container element or field value of compact type ``ct`` (validated)."""
        if ct <= _C_BYTE:  # BOOL (1 or 2) in a container, or BYTE: one byte
            if pos >= self.end:
                raise self.short(pos, f"a {_C_NAMES[ct]}")
            return pos + 1
        if ct <= _C_I64:
            if pos < self.end and self.data[pos] < 0x80:
                return pos + 1
            return self.varint(pos, _C_VARINT_MAX[ct], f"an {_C_NAMES[ct]}")
        if ct == _C_BINARY:
            size, pos = self.size(pos, "string length")
            if size > self.end - pos:
                raise self.refuse(pos, f"string of {size} bytes, {self.end - pos} left")
            return pos + size
        if ct == _C_STRUCT:
            return self.struct(pos, spec, level)
        if ct == _C_DOUBLE:
            if pos + 8 > self.end:
                raise self.short(pos, "a DOUBLE")
            return pos + 8
        if ct == _C_MAP:
            return self.map(pos, spec, level)
        return self.list(pos, ct, spec, level)

    def struct(self, pos: int, cls: StructClass | None, level: int) -> int:
        if level > self.max_depth:
            raise self.too_deep(pos)
        data, end = self.data, self.end
        fields: Mapping[int, Any] | None = None if cls is None else cls.thrift_spec
        last = 0
        while True:
            if pos >= end:
                raise self.short(pos, "a struct (no STOP)")
            header = data[pos]
            ct = header & 0x0F
            if ct == 0:
                if header:
                    raise self.refuse(pos, f"field header 0x{header:02x}: STOP with an id delta")
                return pos + 1
            if ct > _C_STRUCT:
                raise self.refuse(pos, f"field type {_C_NAMES[ct]} is not a value type")
            pos += 1
            if header >> 4:
                fid = last + (header >> 4)
            else:
                after = self.varint(pos, 5, "field id")
                zigzag = 0
                for i in range(after - 1, pos - 1, -1):
                    zigzag = (zigzag << 7) | (data[i] & 0x7F)
                fid = (zigzag >> 1) ^ -(zigzag & 1)
                pos = after
            last = fid
            if ct <= 2:
                continue  # a bool field's value is its header's type
            spec = None
            if fields is not None:
                declared = fields.get(fid)
                # As for binary: read as declared when the types agree, else skipped by the
                # wire type; the wire type is what is read either way.
                if declared is not None and _same(_C_TTYPE[ct], declared[0]) and len(declared) > 3:
                    spec = declared[2]
            if ct <= _C_I64 and pos < end and (ct == _C_BYTE or data[pos] < 0x80):
                pos += 1  # a byte or a one-byte varint, the most common fields, done inline
            else:
                pos = self.value(pos, ct, spec, level + 1)

    def list(self, pos: int, kind: int, spec: Any, level: int) -> int:
        if level > self.max_depth:
            raise self.too_deep(pos)
        data, end = self.data, self.end
        what = "list" if kind == _C_LIST else "set"
        header = pos
        if pos >= end:
            raise self.short(pos, f"a {what} header")
        et, count = data[pos] & 0x0F, data[pos] >> 4
        pos += 1
        if count == 15:
            count, pos = self.size(pos, f"{what} size")
        least = _C_MIN.get(et)
        if least is None:
            raise self.refuse(header, f"{what} element type {_C_NAMES[et]} is not a value type")
        if count * least > end - pos:
            raise self.refuse(
                header,
                f"{what} of {count} {_C_NAMES[et]} needs at least {count * least} bytes, "
                f"{end - pos} left",
            )
        if count == 0:
            return pos
        if self.max_elements is not None:
            self.tally(header, count)
        element_spec = None
        if spec is not None:
            declared, element_spec = _split(spec)
            # thriftpy2's compact decoder reads a declared list's elements as the declared
            # type without looking at the wire's: a disagreement would desynchronise it.
            if not _same(_C_TTYPE[et], declared):
                raise self.refuse(
                    header,
                    f"{what} elements are {_C_NAMES[et]} on the wire but "
                    f"{_ttype_name(declared)} in the IDL; thriftpy2 would read them as the latter",
                )
        size = _C_FIXED.get(et)
        if size is not None:
            return pos + count * size  # in bounds: checked above
        longest = _C_VARINT_MAX.get(et)
        if longest is not None:
            return self.varints(pos, count, longest, f"an {_C_NAMES[et]}")
        if et == _C_BINARY:
            for _ in range(count):
                if pos < end and data[pos] < 0x80:
                    size = data[pos]
                    pos += 1
                else:
                    size, pos = self.size(pos, "string length")
                if size > end - pos:
                    raise self.refuse(pos, f"string of {size} bytes, {end - pos} left")
                pos += size
            return pos
        if et == _C_STRUCT:
            if level + 1 > self.max_depth:  # the inline path below does not check it
                raise self.too_deep(pos)
            for _ in range(count):
                if pos < end and data[pos] == 0:
                    pos += 1  # an empty struct: the common case in a big list, done inline
                else:
                    pos = self.struct(pos, element_spec, level + 1)
            return pos
        for _ in range(count):
            pos = self.value(pos, et, element_spec, level + 1)
        return pos

    def map(self, pos: int, spec: Any, level: int) -> int:
        if level > self.max_depth:
            raise self.too_deep(pos)
        data, end = self.data, self.end
        header = pos
        count, pos = self.size(pos, "map size")
        if count == 0:
            return pos  # an empty map is a single 0x00: no types byte
        if pos >= end:
            raise self.short(pos, "a map header")
        kt, vt = data[pos] >> 4, data[pos] & 0x0F
        kmin, vmin = _C_MIN.get(kt), _C_MIN.get(vt)
        if kmin is None:
            raise self.refuse(pos, f"map key type {_C_NAMES[kt]} is not a value type")
        if vmin is None:
            raise self.refuse(pos, f"map value type {_C_NAMES[vt]} is not a value type")
        pos += 1
        if count * (kmin + vmin) > end - pos:
            raise self.refuse(
                header,
                f"map of {count} {_C_NAMES[kt]}->{_C_NAMES[vt]} needs at least "
                f"{count * (kmin + vmin)} bytes, {end - pos} left",
            )
        if self.max_elements is not None:
            self.tally(header, 2 * count)
        kspec, vspec = _map_specs(self, header, spec, _C_TTYPE[kt], _C_TTYPE[vt])
        ksize, vsize = _C_FIXED.get(kt), _C_FIXED.get(vt)
        if ksize is not None and vsize is not None:
            return pos + count * (ksize + vsize)
        klong, vlong = _C_VARINT_MAX.get(kt), _C_VARINT_MAX.get(vt)
        if klong is not None and klong == vlong:
            return self.varints(pos, 2 * count, klong, "a map key or value")
        for _ in range(count):
            pos = self.value(pos, kt, kspec, level + 1)
            pos = self.value(pos, vt, vspec, level + 1)
        return pos
