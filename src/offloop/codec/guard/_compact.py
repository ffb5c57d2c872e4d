"""The scan of a compact-protocol message."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from offloop.codec.guard._scan import (
    _C_BINARY,
    _C_BYTE,
    _C_DOUBLE,
    _C_FIXED,
    _C_I64,
    _C_LIST,
    _C_MAP,
    _C_MIN,
    _C_NAMES,
    _C_STRUCT,
    _C_TTYPE,
    _C_VARINT_MAX,
    _COMPACT_ID,
    _COMPACT_VERSION,
    _CONTINUES,
    _MAX_SIZE,
    _RUNS,
    _VARINT_RUN_MIN,
    Body,
    StructClass,
    _map_specs,
    _same,
    _Scan,
    _split,
    _ttype_name,
)


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
            if fields is not None and ct >= _C_LIST:
                # As for binary: read as declared when the types agree, else skipped by the
                # wire type; the wire type is what is read either way.
                declared = fields.get(fid)
                if declared is not None and declared[0] == _C_TTYPE[ct] and len(declared) > 3:
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
