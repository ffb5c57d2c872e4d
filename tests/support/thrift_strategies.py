"""Hypothesis strategies of Thrift values, as thriftpy2 holds them, by type spec.

For the tests of the JSON mapping (``tests/codec``) and of the OpenAPI schemas that describe
it (``tests/gateway``).
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st
from thriftpy2.thrift import TType

from offloop.codec.jsonmap import split_elem_spec, split_field_spec

__all__ = ["INT_BOUNDS", "structs", "thrift_values"]

#: The range of each Thrift integer type.
INT_BOUNDS = {
    TType.BYTE: (-(2**7), 2**7 - 1),
    TType.I16: (-(2**15), 2**15 - 1),
    TType.I32: (-(2**31), 2**31 - 1),
    TType.I64: (-(2**63), 2**63 - 1),
}
# Recursive structs (Node) stop growing below this depth.
_MAX_GEN_DEPTH = 3


def thrift_values(
    ttype: int, spec: Any, *, depth: int = 0, hashable: bool = False
) -> st.SearchStrategy[Any]:
    """Values thriftpy2 would hold for ``(ttype, spec)``.

    ``hashable`` values (set elements, map keys) hold no NaN, which equals nothing.
    """
    if ttype == TType.BOOL:
        return st.booleans()
    if ttype == TType.I32 and spec is not None:
        return st.sampled_from(sorted(spec._VALUES_TO_NAMES))
    if ttype in INT_BOUNDS:
        lo, hi = INT_BOUNDS[ttype]
        return st.integers(lo, hi)
    if ttype == TType.DOUBLE:
        return st.floats(allow_nan=not hashable)
    if ttype == TType.STRING:
        return st.text(max_size=12)
    if ttype == TType.BINARY:
        return st.binary(max_size=12)
    if ttype == TType.STRUCT:
        return structs(spec, depth=depth, hashable=hashable)
    size = 0 if depth >= _MAX_GEN_DEPTH else 3
    if ttype == TType.LIST:
        if not size:
            return st.just([])
        return st.lists(thrift_values(*split_elem_spec(spec), depth=depth + 1), max_size=size)
    if ttype == TType.SET:
        if not size:
            return st.just(set())
        elems = thrift_values(*split_elem_spec(spec), depth=depth + 1, hashable=True)
        return st.sets(elems, max_size=size)
    if ttype == TType.MAP:
        if not size:
            return st.just({})
        keys = thrift_values(*split_elem_spec(spec[0]), depth=depth + 1, hashable=True)
        values = thrift_values(*split_elem_spec(spec[1]), depth=depth + 1)
        return st.dictionaries(keys, values, max_size=size)
    raise AssertionError(f"no strategy for {ttype}")


def structs(cls: Any, *, depth: int = 0, hashable: bool = False) -> st.SearchStrategy[Any]:
    """Instances of a struct class, as a decoder would build them.

    A field with a default always has a value: left out of the JSON, it would come back as
    its default, not as ``None``.
    """
    defaults = dict(getattr(cls, "default_spec", ()))
    fields: dict[str, st.SearchStrategy[Any]] = {}
    for field in cls.thrift_spec.values():
        name = field[1]
        ttype, spec = split_field_spec(field)
        if ttype == TType.STRUCT and depth >= _MAX_GEN_DEPTH and not field[-1]:
            fields[name] = st.none()
            continue
        value = thrift_values(ttype, spec, depth=depth + 1, hashable=hashable)
        if field[-1] or defaults.get(name) is not None:
            fields[name] = value
        else:
            fields[name] = st.none() | value
    return st.fixed_dictionaries(fields).map(lambda kwargs: cls(**kwargs))
