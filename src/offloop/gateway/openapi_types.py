"""JSON schemas and examples of Thrift types, for the OpenAPI document
(:mod:`offloop.gateway.openapi`).

Structs, exceptions and enums reached from a service are named schemas under
``components/schemas``, by their Thrift name (qualified by their IDL's name where two IDLs
declare the same name), referenced with ``$ref``. The schemas follow
:mod:`offloop.codec.jsonmap` exactly and use its helpers to classify types; integer strings
(``i64``, integer map keys) have a pattern that holds their range exactly.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Final

from thriftpy2.thrift import TException, TType

from offloop.codec.jsonmap import (
    is_enum,
    map_form,
    split_elem_spec,
    split_field_spec,
    value_to_json,
)
from offloop.gateway.examples import ExampleMaker
from offloop.idl import ServiceInfo
from offloop.idl_docs import IdlDocs
from offloop.idl_requiredness import required_arguments

__all__ = ["ERROR_SCHEMA", "TypeSchemas", "is_exception", "ref"]

_SCHEMAS: Final = "#/components/schemas/"
#: The name of the error body's schema: no type's schema may take it.
ERROR_SCHEMA: Final = "Error"
_BASE64_PATTERN: Final = "^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"
_INT_SCHEMAS: Final[dict[int, dict[str, Any]]] = {
    ttype: {"type": "integer", "format": f"int{bits}", "minimum": -(2**(bits - 1)),
            "maximum": 2**(bits - 1) - 1}
    for ttype, bits in ((TType.BYTE, 8), (TType.I16, 16), (TType.I32, 32), (TType.I64, 64))
}  # fmt: skip
_MODULE_SUFFIX: Final = re.compile(r"(?:_[0-9a-f]{8})?_thrift$")


def _at_most(limit: int) -> str:
    """A regular expression (unanchored) of the decimal numbers 0 to ``limit``, leading zeros
    allowed, digit by digit: shorter numbers, then each digit below the limit's there."""
    digits = str(limit)
    count = len(digits)
    alternatives = [f"[0-9]{{1,{count - 1}}}"] if count > 1 else []
    for i, digit in enumerate(int(d) for d in digits):
        if digit:
            rest = count - i - 1
            below = "0" if digit == 1 else f"[0-{digit - 1}]"
            alternatives.append(digits[:i] + below + (f"[0-9]{{{rest}}}" if rest else ""))
    alternatives.append(digits)
    return "0*(?:" + "|".join(alternatives) + ")"


def _decimal_pattern(ttype: int) -> str:
    """What the JSON mapping takes as a decimal string of an integer type: its range, exactly
    (``"99999"`` is no i16), leading zeros and ``-0`` included."""
    hi = _INT_SCHEMAS[ttype]["maximum"]
    return f"^(?:{_at_most(hi)}|-{_at_most(hi + 1)})$"


def ref(name: str) -> dict[str, Any]:
    return {"$ref": _SCHEMAS + name}


def _module_name(cls: Any) -> str:
    return _MODULE_SUFFIX.sub("", str(getattr(cls, "__module__", "")) or "idl") or "idl"


class TypeSchemas:
    """The structs, exceptions and enums reached from the services, their schemas and
    examples.

    Args:
        services: the services.
        docs: the doc comments of their IDLs.
        unions: the classes that are Thrift unions (one field set), not structs.
    """

    def __init__(
        self, services: Sequence[ServiceInfo], docs: IdlDocs, unions: frozenset[Any]
    ) -> None:
        self.docs = docs
        self.unions = unions
        self._examples = ExampleMaker(unions)
        self.classes: list[Any] = []
        seen: set[Any] = set()
        for service in services:
            for method in service.methods.values():
                for cls in (method.args_cls, method.result_cls):
                    for field in cls.thrift_spec.values():
                        self._walk(*split_field_spec(field), seen)
        self.names = self._assign_names()

    def _walk(self, ttype: int, spec: Any, seen: set[Any]) -> None:
        if ttype == TType.STRUCT or is_enum(ttype, spec):
            if spec in seen:
                return
            seen.add(spec)
            self.classes.append(spec)
            if ttype == TType.STRUCT:
                for field in spec.thrift_spec.values():
                    self._walk(*split_field_spec(field), seen)
        elif ttype in (TType.LIST, TType.SET):
            self._walk(*split_elem_spec(spec), seen)
        elif ttype == TType.MAP:
            self._walk(*split_elem_spec(spec[0]), seen)
            self._walk(*split_elem_spec(spec[1]), seen)

    def _assign_names(self) -> dict[Any, str]:
        counts: dict[str, int] = {}
        for cls in self.classes:
            counts[cls.__name__] = counts.get(cls.__name__, 0) + 1
        taken = {ERROR_SCHEMA}
        names: dict[Any, str] = {}
        for cls in self.classes:
            name: str = cls.__name__
            if counts[name] > 1 or name == ERROR_SCHEMA or name.startswith(ERROR_SCHEMA + "."):
                name = f"{_module_name(cls)}.{name}"
            candidate, n = name, 2
            # The same IDL loaded twice gives equal names even when qualified.
            while candidate in taken:
                candidate, n = f"{name}_{n}", n + 1
            taken.add(candidate)
            names[cls] = candidate
        return names

    def exceptions(self) -> Iterator[Any]:
        return (cls for cls in self.classes if isinstance(cls, type) and is_exception(cls))

    def schema(self, ttype: int, spec: Any) -> dict[str, Any]:
        """The schema of a value of ``(ttype, spec)``, as jsonmap shows it."""
        if ttype == TType.BOOL:
            return {"type": "boolean"}
        if ttype == TType.STRUCT or is_enum(ttype, spec):
            return ref(self.names[spec])
        if ttype == TType.I64:
            return {
                "oneOf": [
                    dict(_INT_SCHEMAS[ttype]),
                    {"type": "string", "pattern": _decimal_pattern(ttype)},
                ]
            }
        if ttype in _INT_SCHEMAS:
            return dict(_INT_SCHEMAS[ttype])
        if ttype == TType.DOUBLE:
            return {
                "oneOf": [
                    {"type": "number", "format": "double"},
                    {"type": "string", "enum": ["NaN", "Infinity", "-Infinity"]},
                ]
            }
        if ttype in (TType.STRING, TType.UTF8, TType.UTF16):
            return {"type": "string"}
        if ttype == TType.BINARY:
            return {"type": "string", "contentEncoding": "base64", "pattern": _BASE64_PATTERN}
        if ttype in (TType.LIST, TType.SET):
            array: dict[str, Any] = {"type": "array", "items": self.schema(*split_elem_spec(spec))}
            if ttype == TType.SET:
                array["uniqueItems"] = True
            return array
        if ttype == TType.MAP:
            ktype, kspec = split_elem_spec(spec[0])
            value = self.schema(*split_elem_spec(spec[1]))
            form = map_form(ktype, kspec)
            if form == "pairs":
                pair = {
                    "type": "array",
                    "prefixItems": [self.schema(ktype, kspec), value],
                    "minItems": 2,
                    "maxItems": 2,
                }
                return {"type": "array", "items": pair}
            obj: dict[str, Any] = {"type": "object", "additionalProperties": value}
            if form == "integer":
                obj["propertyNames"] = {"pattern": _decimal_pattern(ktype)}
            elif form == "enum":
                names = list(kspec._NAMES_TO_VALUES)
                obj["propertyNames"] = {
                    "enum": names + [str(v) for v in kspec._NAMES_TO_VALUES.values()]
                }
            return obj
        raise ValueError(f"unsupported Thrift type {ttype}")

    def fields_schema(
        self,
        cls: Any,
        *,
        description: str | None = None,
        docs: Mapping[str, str | None] | None = None,
        arguments: bool = False,
    ) -> dict[str, Any]:
        """An object schema of a struct's (or an ``_args`` struct's) fields.

        ``required`` lists what the JSON mapping requires: a struct's fields the IDL marks
        ``required``; with ``arguments``, every argument the IDL neither marks ``optional``
        nor gives a default. No property allows ``null``: the mapping refuses it.

        Args:
            cls: the struct class.
            description: the schema's description.
            docs: each field's description, by field name.
            arguments: ``cls`` is a method's ``_args`` struct.
        """
        must = frozenset(required_arguments(cls)) if arguments else None
        defaults = dict(getattr(cls, "default_spec", ()))
        properties: dict[str, Any] = {}
        required: list[str] = []
        for field in cls.thrift_spec.values():
            name = field[1]
            ttype, spec = split_field_spec(field)
            prop = self.schema(ttype, spec)
            default = defaults.get(name)
            if default is not None:
                prop = {**prop, "default": value_to_json(ttype, spec, default)}
            doc = (docs or {}).get(name)
            if doc:
                prop = {**prop, "description": doc}
            properties[name] = prop
            if (field[-1] is True) if must is None else (name in must):
                required.append(name)
        schema: dict[str, Any] = {"type": "object"}
        if description:
            schema["description"] = description
        schema["properties"] = properties
        if required:
            schema["required"] = required
        schema["additionalProperties"] = False
        return schema

    def component(self, cls: Any) -> dict[str, Any]:
        """The named schema of a struct, exception or enum."""
        doc = self.docs.of(cls)
        if hasattr(cls, "_VALUES_TO_NAMES"):
            names = list(cls._NAMES_TO_VALUES)
            description = doc or f"The Thrift enum {cls.__name__}."
            values = [
                f"- `{name}`: {value_doc}"
                for name in names
                if (value_doc := self.docs.of(cls, name))
            ]
            if values:
                description += "\n\n" + "\n".join(values)
            # One type, the names: what the gateway answers with, and what a client
            # generator makes one enum class of (a oneOf of names and integers makes two,
            # ``StorageType0`` and ``StorageType1``). The gateway still takes the integer:
            # ``x-enum-values`` gives each name's, for the /docs page and for people.
            return {
                "title": cls.__name__,
                "description": description
                + "\n\nGiven as its name (the gateway also takes its integer value).",
                "type": "string",
                "enum": names,
                "x-enum-values": [cls._NAMES_TO_VALUES[name] for name in names],
            }
        if is_exception(cls):
            description = doc or f"The Thrift exception {cls.__name__}."
        elif cls in self.unions:
            description = (doc or f"The Thrift union {cls.__name__}.") + "\n\nSet one field."
        else:
            description = doc or f"The Thrift struct {cls.__name__}."
        field_docs = {f[1]: self.docs.of(cls, f[1]) for f in cls.thrift_spec.values()}
        schema = self.fields_schema(cls, description=description, docs=field_docs)
        return {"title": cls.__name__, **schema}

    # -- examples ------------------------------------------------------------------------

    def example_fields(self, cls: Any, *, arguments: bool = False) -> dict[str, Any] | None:
        """An example object of a struct's fields (see :class:`ExampleMaker`)."""
        return self._examples.example_fields(cls, arguments=arguments)

    def example(self, ttype: int, spec: Any, name: str) -> Any:
        """An example value of ``(ttype, spec)``.

        Raises:
            NoExample: none can be made.
        """
        return self._examples.example(ttype, spec, name)


def is_exception(cls: Any) -> bool:
    return isinstance(cls, type) and issubclass(cls, TException)
