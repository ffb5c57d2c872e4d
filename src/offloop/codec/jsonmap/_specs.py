"""Reading Thrift type specs: what kind of value a ``(ttype, spec)`` pair describes.

thriftpy2 describes types by a type code and a spec (``None``, a class, or nested element
specs). The codecs and the OpenAPI document (:mod:`offloop.gateway.openapi`) classify types
with these same helpers, so that the document always says what the mapping does.
"""

from __future__ import annotations

from typing import Any, Final, Literal

from thriftpy2.thrift import TType

__all__ = [
    "INT_RANGES",
    "STRING_TYPES",
    "MapForm",
    "is_enum",
    "map_form",
    "split_elem_spec",
    "split_field_spec",
]

MapForm = Literal["string", "integer", "enum", "pairs"]

# Names and inclusive ranges of the integer types.
INT_RANGES: Final[dict[int, tuple[str, int, int]]] = {
    TType.BYTE: ("i8", -(2**7), 2**7 - 1),
    TType.I16: ("i16", -(2**15), 2**15 - 1),
    TType.I32: ("i32", -(2**31), 2**31 - 1),
    TType.I64: ("i64", -(2**63), 2**63 - 1),
}
STRING_TYPES: Final = frozenset({TType.STRING, TType.UTF8, TType.UTF16})


def split_field_spec(field: tuple[Any, ...]) -> tuple[int, Any]:
    """The ``(ttype, spec)`` of a ``thrift_spec`` entry.

    Args:
        field: ``(ttype, name, required)`` for scalars, ``(ttype, name, spec, required)`` for
            enums, structs and containers.

    Returns:
        The type code and its spec (``None`` for scalars).
    """
    return (field[0], field[2]) if len(field) == 4 else (field[0], None)


def split_elem_spec(elem: Any) -> tuple[int, Any]:
    """The ``(ttype, spec)`` of a container's element spec (a bare type code, or a pair)."""
    if isinstance(elem, tuple):
        return elem[0], elem[1]
    return elem, None


def is_enum(ttype: int, spec: Any) -> bool:
    """Whether ``(ttype, spec)`` is a Thrift enum (an ``i32`` carrying its enum class)."""
    return ttype == TType.I32 and spec is not None and hasattr(spec, "_VALUES_TO_NAMES")


def map_form(key_ttype: int, key_spec: Any) -> MapForm:
    """How a map with this key type is shown in JSON.

    Returns:
        ``"string"``, ``"enum"`` or ``"integer"`` for a JSON object keyed by the string, the
        enum name or the decimal integer; ``"pairs"`` for an array of ``[key, value]``.
    """
    if key_ttype in STRING_TYPES:
        return "string"
    if is_enum(key_ttype, key_spec):
        return "enum"
    if key_ttype in INT_RANGES:
        return "integer"
    return "pairs"
