"""Strings that are not UTF-8 in decoded arguments: found where the IDL says ``string``.

thriftpy2 hands a handler ``bytes`` where the IDL says ``string`` when the bytes are not UTF-8.
After decoding, only the IDL's string-typed places can hold such ``bytes``, so a plan made once
per struct class (:class:`StringCheck`) looks there and nowhere else; a method without strings
costs nothing. The dispatcher (:mod:`offloop.worker.dispatch`) answers such a call as a bad
request naming the path found.
"""

from __future__ import annotations

from typing import Any

from thriftpy2.thrift import TType

__all__ = ["StringCheck"]

# Where strings can be in a value of one IDL type: ("s",) a string; ("list", elem) and
# ("set", elem); ("map", key, value), either None if it holds no string; ("struct", cls).
_Plan = tuple[Any, ...]
_STRING_PLAN: _Plan = ("s",)


class StringCheck:
    """Finds a value of a string-typed place that thriftpy2 left as ``bytes`` (it does so
    when the bytes are not UTF-8) in a decoded struct, and names its path.

    Plans are made once per struct class from its ``thrift_spec`` and cover only the places
    that can hold strings (``binary`` is ``bytes`` by design and is never looked at). They are
    all made before serving (:meth:`prepare`), so that pool threads only read them.
    """

    def __init__(self) -> None:
        self._structs: dict[type, tuple[tuple[str, _Plan], ...]] = {}
        self._making: set[type] = set()  # struct classes whose plan is being made

    def prepare(self, cls: type) -> None:
        """Make the plans of struct class ``cls`` and of every struct it holds."""
        self._fields(cls)

    def find(self, struct: Any) -> str | None:
        """The path of the first string that is not UTF-8 in ``struct`` (``texts[2]``,
        ``doc.title``), or None."""
        found = self._find(struct, ("struct", type(struct)))
        return None if found is None else "".join(reversed(found)).lstrip(".")

    def _fields(self, cls: type) -> tuple[tuple[str, _Plan], ...]:
        fields = self._structs.get(cls)
        if fields is None:
            self._making.add(cls)
            try:
                plans = []
                for spec in getattr(cls, "thrift_spec", {}).values():
                    info = spec[2] if len(spec) > 3 else None
                    plan = self._plan(spec[0], info)
                    if plan is not None:
                        plans.append((str(spec[1]), plan))
            finally:
                self._making.discard(cls)
            fields = self._structs[cls] = tuple(plans)
        return fields

    def _plan(self, ttype: int, info: Any) -> _Plan | None:
        if ttype == TType.STRING:
            return _STRING_PLAN
        if ttype in (TType.LIST, TType.SET):
            elem = self._plan(*_type_of(info))
            return None if elem is None else ("list" if ttype == TType.LIST else "set", elem)
        if ttype == TType.MAP:
            key, value = self._plan(*_type_of(info[0])), self._plan(*_type_of(info[1]))
            return None if key is None and value is None else ("map", key, value)
        if ttype == TType.STRUCT:
            # A struct within itself (a tree) is kept: its own fields say if it holds strings.
            return ("struct", info) if info in self._making or self._fields(info) else None
        return None

    def _find(self, value: Any, plan: _Plan) -> list[str] | None:
        """The path to the first bad string in ``value``, innermost part first; the path is
        made only for what is found, and runs of strings are scanned at C speed."""
        if value is None:
            return None
        kind = plan[0]
        if kind == "s":
            return [] if isinstance(value, bytes) else None
        if kind == "list" or kind == "set":
            elem = plan[1]
            if elem is _STRING_PLAN and bytes not in map(type, value):
                return None
            for i, item in enumerate(value):
                found = self._find(item, elem)
                if found is not None:
                    found.append(f"[{i}]" if kind == "list" else "{}")
                    return found
            return None
        if kind == "map":
            key_plan, value_plan = plan[1], plan[2]
            if key_plan is not None and (key_plan is not _STRING_PLAN or bytes in map(type, value)):
                for key in value:
                    found = self._find(key, key_plan)
                    if found is not None:
                        found.append(" (a key)")
                        return found
            if value_plan is not None and (
                value_plan is not _STRING_PLAN or bytes in map(type, value.values())
            ):
                for key, item in value.items():
                    found = self._find(item, value_plan)
                    if found is not None:
                        found.append(f"[{key!r:.40}]")
                        return found
            return None
        for name, field_plan in self._fields(type(value)):
            found = self._find(getattr(value, name, None), field_plan)
            if found is not None:
                found.append(f".{name}")
                return found
        return None


def _type_of(info: Any) -> tuple[int, Any]:
    """A container's element spec as (type, info): thriftpy2 writes a bare type code for a
    scalar and (type, info) otherwise."""
    return (info, None) if isinstance(info, int) else (info[0], info[1])
