"""Type codes, and what the binary and compact scans share."""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import Any, Final

from offloop.codec.guard.limits import DecodeLimits, MessageRefused

#: How thriftpy2 decodes one message body: a generated struct class (``method.args_cls``,
#: ``TApplicationException``...), or one per message type, or ``None`` for structure only.
StructClass = type[Any]
Body = StructClass | Mapping[int, StructClass] | None

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
