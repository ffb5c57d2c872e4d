"""Example values for the OpenAPI document: valid for their schema, readable on ``/docs``.

Strings read ``"example <name>"``, integers 1, doubles 1.5, booleans true, binary the base64 of
``example``, enums their first name; a field's default where it has one; one element per
container; one field of a union. A budget of values and a depth cut a wide or recursive IDL
short; a required field whose type recurses gets no example at all (:class:`NoExample`).
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any, Final

from thriftpy2.thrift import TType

from offloop.codec.jsonmap import (
    JsonMappingError,
    is_enum,
    map_form,
    split_elem_spec,
    split_field_spec,
    value_from_json,
    value_to_json,
)
from offloop.idl_requiredness import required_arguments

__all__ = ["ExampleMaker", "NoExample"]

# How deeply structs nest in one example, and about how many values it holds, before it
# leaves out what it may (fields not required, container elements); enough to show every
# field of a realistic IDL, few enough that a wide, deep one stays a readable page.
_EXAMPLE_DEPTH: Final = 6
_EXAMPLE_VALUES: Final = 200
_EXAMPLE_BINARY: Final = base64.b64encode(b"example").decode()
_INTEGERS: Final = frozenset((TType.BYTE, TType.I16, TType.I32, TType.I64))


class NoExample(Exception):
    """No value can be made: a required field whose type recurses, or an enum with no values."""


class ExampleMaker:
    """Makes example values of Thrift types.

    Args:
        unions: the struct classes that are Thrift unions (one field set).
    """

    def __init__(self, unions: frozenset[Any]) -> None:
        self.unions = unions
        self._budget = 0

    def example_fields(self, cls: Any, *, arguments: bool = False) -> dict[str, Any] | None:
        """An example object of a struct's (or, with ``arguments``, an ``_args`` struct's)
        fields, or ``None`` when none can be made (a required field recurses forever).

        An argument is required unless the IDL marks it ``optional`` or gives it a default
        (:func:`offloop.idl_requiredness.required_arguments`), as the JSON mapping says.
        """
        self._budget = _EXAMPLE_VALUES
        must = frozenset(required_arguments(cls)) if arguments else None
        try:
            return self._struct_example(cls, (), must)
        except NoExample:
            return None

    def example(self, ttype: int, spec: Any, name: str) -> Any:
        """An example value of ``(ttype, spec)``.

        Raises:
            NoExample: none can be made.
        """
        self._budget = _EXAMPLE_VALUES
        return self._example(ttype, spec, name, ())

    def _struct_example(
        self, cls: Any, path: tuple[Any, ...], must: frozenset[str] | None = None
    ) -> dict[str, Any]:
        if cls in path or len(path) >= _EXAMPLE_DEPTH:
            raise NoExample(cls.__name__)
        path = (*path, cls)
        defaults = dict(getattr(cls, "default_spec", ()))
        out: dict[str, Any] = {}
        for field in cls.thrift_spec.values():
            name = field[1]
            required = field[-1] is True if must is None else name in must
            if not required and (self._budget <= 0 or (cls in self.unions and out)):
                continue
            ttype, spec = split_field_spec(field)
            default = defaults.get(name)
            shown = None if default is None else value_to_json(ttype, spec, default)
            if shown not in (None, [], {}):
                out[name] = shown  # a default says more than a made-up value
                continue
            try:
                # An empty container shows nothing of its elements: one is made up instead.
                out[name] = self._example(ttype, spec, name, path)
            except NoExample:
                if shown is not None:
                    out[name] = shown
                elif required:
                    raise
        return out

    def _example(self, ttype: int, spec: Any, name: str, path: tuple[Any, ...]) -> Any:
        self._budget -= 1
        if ttype == TType.BOOL:
            return True
        if ttype == TType.STRUCT:
            return self._struct_example(spec, path)
        if is_enum(ttype, spec):
            if not spec._NAMES_TO_VALUES:
                raise NoExample(spec.__name__)
            return next(iter(spec._NAMES_TO_VALUES))
        if ttype in _INTEGERS:
            return 1
        if ttype == TType.DOUBLE:
            return 1.5
        if ttype == TType.BINARY:
            return _EXAMPLE_BINARY
        if ttype in (TType.STRING, TType.UTF8, TType.UTF16):
            return "example " + (name.replace("_", " ") or "text")
        if ttype == TType.LIST:
            return self._elements(lambda: [self._example(*split_elem_spec(spec), name, path)])
        if ttype == TType.SET:
            return self._elements(lambda: [self._hashable(*split_elem_spec(spec), name, path)])
        if ttype == TType.MAP:
            ktype, kspec = split_elem_spec(spec[0])
            vtype, vspec = split_elem_spec(spec[1])
            if map_form(ktype, kspec) == "pairs":
                return self._elements(
                    lambda: [
                        [
                            self._hashable(ktype, kspec, "key", path),
                            self._example(vtype, vspec, name, path),
                        ]
                    ]
                )

            def entry() -> dict[str, Any]:
                key = self._example(ktype, kspec, "key", path)
                return {str(key): self._example(vtype, vspec, name, path)}

            return self._elements(entry) or {}
        raise NoExample(f"Thrift type {ttype}")

    def _hashable(self, ttype: int, spec: Any, name: str, path: tuple[Any, ...]) -> Any:
        """An example of a set element or a map key: one the mapping can hash once decoded
        (a ``set<list<i32>>`` holds no list, so its only value is ``[]``)."""
        value = self._example(ttype, spec, name, path)
        if ttype in (TType.LIST, TType.SET, TType.MAP, TType.STRUCT):
            try:
                hash(value_from_json(ttype, spec, value))
            except (JsonMappingError, TypeError):
                raise NoExample(f"unhashable Thrift type {ttype}") from None
        return value

    def _elements(self, make: Callable[[], Any]) -> Any:
        """One element made by ``make``, or none when out of budget or none can be made."""
        if self._budget <= 0:
            return []
        try:
            return make()
        except NoExample:
            return []
