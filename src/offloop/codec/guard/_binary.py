"""The scan of a binary-protocol message."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from offloop.codec.guard._scan import (
    _BIN_FIXED,
    _BIN_MIN,
    _BINARY_VERSION_1,
    _I16_AT,
    _I32_AT,
    _LIST,
    _MAP,
    _STRING,
    _STRUCT,
    _U32_AT,
    Body,
    StructClass,
    _map_specs,
    _same,
    _Scan,
    _split,
    _ttype_name,
)


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
            if fields is not None and t >= _STRUCT:
                # thriftpy2 reads a field as declared when the types agree, else skips it by
                # its wire type; either way the wire type is what is read, and only inside a
                # struct or container can the IDL make a difference.
                declared = fields.get(_I16_AT(data, pos + 1)[0])
                if declared is not None and declared[0] == t and len(declared) > 3:
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
