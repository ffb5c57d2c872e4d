"""The JSON mapping of Thrift values, both ways, sans-I/O.

The gateway calls this on every request, so each Thrift type is compiled once into a pair of
small functions (decode from JSON, encode to JSON) and kept: on the struct class itself for
structs and exceptions (so that it goes when the class goes), in a small LRU cache for other
specs. Values are "decoded JSON": what :func:`json.loads` returns, and what
:func:`json.dumps` accepts.

The mapping:

============================  ======================================  ===========================
Thrift                        JSON out (``value_to_json``)            JSON in (``value_from_json``)
============================  ======================================  ===========================
``bool``                      ``true`` / ``false``                    the same; not ``0`` / ``1``
``byte`` ``i8`` ``i16``       integer                                 integer in range (not a bool)
``i32``
``i64``                       integer                                 integer, or decimal string
``double``                    number; ``"NaN"``, ``"Infinity"``,      the same; integers too
                              ``"-Infinity"``
``string``                    string                                  string (valid Unicode)
``binary``                    base64 string (standard alphabet,       the same, strictly checked
                              padded)
enum                          its name (unknown values: the integer)  name or integer value
struct, exception             object by field name; unset (``None``)  the same; unknown field and
                              fields left out                         missing required field are
                                                                      errors; ``null`` is absent;
                                                                      defaults applied
``list``                      array                                   array
``set``                       array, sorted where sortable            array (duplicates merge)
``map``, key string           object                                  object
``map``, key enum             object keyed by enum name               keys: name or decimal value
``map``, key integer          object keyed by decimal string          the same, range-checked
``map``, any other key        array of ``[key, value]`` pairs         the same
============================  ======================================  ===========================

Typedefs need nothing: thriftpy2 resolves them when it parses the IDL.

Errors in input raise :class:`JsonMappingError` (status 400) with the path of the bad value:
``argument.`` then the argument name for :func:`args_from_json` (e.g.
``argument.xtructs[2].i32_thing``), the ``path`` given to :func:`value_from_json` otherwise.
Object-form map entries are addressed as ``m["key"]``, pair-form ones as ``m[3][0]`` (key) and
``m[3][1]`` (value). Paths are built only when something fails, so good input pays nothing for
them.
"""

from __future__ import annotations

import base64
import binascii
import copy
import functools
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Literal

from thriftpy2.thrift import TType

from offloop.errors import LocalProtocolError, RemoteProtocolError
from offloop.idl import MethodInfo

__all__ = [
    "ARGUMENT_ROOT",
    "MAX_DEPTH",
    "JsonEncodeError",
    "JsonMappingError",
    "MapForm",
    "Outcome",
    "args_from_json",
    "args_to_json",
    "is_enum",
    "map_form",
    "result_to_json",
    "split_elem_spec",
    "split_field_spec",
    "struct_from_json",
    "struct_to_json",
    "value_from_json",
    "value_to_json",
]

MAX_DEPTH: Final = 64
"""Most arrays and objects nested in one another that a value may have (the outermost counts).

Deep enough for any sane document, shallow enough that the recursion (a few Python frames a
level) stays far from the interpreter's limit even for recursive structs.
"""

ARGUMENT_ROOT: Final = "argument"
"""The root of error paths in a method's arguments: ``argument.xtructs[2].i32_thing``."""

MapForm = Literal["string", "integer", "enum", "pairs"]

# Names and inclusive ranges of the integer types.
_INT_RANGES: Final[dict[int, tuple[str, int, int]]] = {
    TType.BYTE: ("i8", -(2**7), 2**7 - 1),
    TType.I16: ("i16", -(2**15), 2**15 - 1),
    TType.I32: ("i32", -(2**31), 2**31 - 1),
    TType.I64: ("i64", -(2**63), 2**63 - 1),
}
_STRING_TYPES: Final = frozenset({TType.STRING, TType.UTF8, TType.UTF16})
_DECIMAL: Final = re.compile(r"-?[0-9]+")
# The most significant digits an i64 has; a decimal string with more is out of range before
# int() sees it, so that no one can make us parse a megabyte of digits.
_MAX_DIGITS: Final = 19
_SPECIAL_DOUBLES: Final[dict[str, float]] = {
    "NaN": float("nan"),
    "Infinity": float("inf"),
    "-Infinity": float("-inf"),
}
# Where a compiled struct codec is kept on its class: it lives and dies with the class, and no
# module-level registry grows as IDLs are loaded.
_CODEC_ATTR: Final = "_offloop_json_codec"
_ARGS_CODEC_ATTR: Final = "_offloop_json_args_codec"

_Dec = Callable[[Any, int], Any]
_Enc = Callable[[Any, int], Any]


# -- errors ---------------------------------------------------------------------------------


class JsonMappingError(LocalProtocolError):
    """A JSON value does not fit the Thrift type it is meant for; the caller is at fault.

    Attributes:
        path: where the bad value is, e.g. ``argument.xtructs[2].i32_thing``.
        reason: what is wrong with it, e.g. ``expected an integer, got "x"``.
    """

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}", status_hint=400)
        self.path = path
        self.reason = reason


class JsonEncodeError(RemoteProtocolError):
    """A Thrift value (from a peer's reply) cannot be shown as JSON: nested too deep, or not
    of its declared type."""


class _Fault(Exception):
    """Raised inside the codecs; each container on the way out adds its path segment.

    Segments are appended innermost first, so the path is their reverse.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.segments: list[str] = []

    def path(self, root: str) -> str:
        return root + "".join(reversed(self.segments))


def _show(value: Any) -> str:
    """A short rendering of a bad JSON value for an error message."""
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list | tuple):
        return "an array"
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _key_segment(key: Any) -> str:
    return f"[{_show(key)}]"


def _field_segment(key: Any) -> str:
    if isinstance(key, str) and key.isidentifier():
        return "." + key
    return _key_segment(key)


def _decimal(text: str) -> int | None:
    """The integer of a string that matches ``_DECIMAL``; ``None`` when it cannot be an i64."""
    if len(text) <= _MAX_DIGITS:
        return int(text)
    digits = text.lstrip("-").lstrip("0")
    if len(digits) > _MAX_DIGITS:
        return None
    return int(text[0] + digits) if text[0] == "-" and digits else int(digits or "0")


def _fault_at(segment: str, reason: str) -> _Fault:
    fault = _Fault(reason)
    fault.segments.append(segment)
    return fault


def _too_deep() -> _Fault:
    return _Fault(f"nested deeper than {MAX_DEPTH} levels")


# -- spec helpers ---------------------------------------------------------------------------


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
    if key_ttype in _STRING_TYPES:
        return "string"
    if is_enum(key_ttype, key_spec):
        return "enum"
    if key_ttype in _INT_RANGES:
        return "integer"
    return "pairs"


# -- scalars --------------------------------------------------------------------------------


def _identity(value: Any, depth: int) -> Any:
    return value


def _dec_bool(value: Any, depth: int) -> Any:
    if value is True or value is False:
        return value
    raise _Fault(f"expected true or false, got {_show(value)}")


def _int_codec(ttype: int) -> tuple[_Dec, _Enc]:
    name, lo, hi = _INT_RANGES[ttype]
    accepts_string = ttype == TType.I64
    expected = "an integer or a decimal string" if accepts_string else "an integer"

    def dec(value: Any, depth: int) -> Any:
        if value.__class__ is not int:
            if accepts_string and value.__class__ is str and _DECIMAL.fullmatch(value):
                number = _decimal(value)
                if number is not None and lo <= number <= hi:
                    return number
                raise _Fault(f"{_show(value)} is out of range for {name} ({lo} to {hi})")
            if not isinstance(value, int) or isinstance(value, bool):
                raise _Fault(f"expected {expected}, got {_show(value)}")
            value = int(value)
        if lo <= value <= hi:
            return value
        raise _Fault(f"{value} is out of range for {name} ({lo} to {hi})")

    return dec, _identity


def _dec_double(value: Any, depth: int) -> Any:
    cls = value.__class__
    if cls is float:
        return value
    if cls is int:
        try:
            return float(value)
        except OverflowError:
            raise _Fault(f"{_show(value)} is out of range for double") from None
    if cls is str:
        special = _SPECIAL_DOUBLES.get(value)
        if special is not None:
            return special
    elif isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    raise _Fault(f'expected a number or "NaN", "Infinity", "-Infinity", got {_show(value)}')


def _enc_double(value: Any, depth: int) -> Any:
    # x - x is 0 for every finite float, and NaN for NaN and the infinities.
    if value - value == 0:
        return value
    if value != value:
        return "NaN"
    return "Infinity" if value > 0 else "-Infinity"


def _dec_string(value: Any, depth: int) -> Any:
    if value.__class__ is not str:
        if not isinstance(value, str):
            raise _Fault(f"expected a string, got {_show(value)}")
        value = str(value)
    if not value.isascii():
        # JSON "\ud800" decodes to a lone surrogate, which no Thrift protocol can encode.
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise _Fault("string is not valid Unicode (it holds a lone surrogate)") from None
    return value


def _enc_string(value: Any, depth: int) -> Any:
    if value.__class__ is str:
        return value
    # thriftpy2 hands over bytes when a peer sent a string that is not UTF-8.
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "replace")
    return str(value)


def _dec_binary(value: Any, depth: int) -> Any:
    if not isinstance(value, str):
        raise _Fault(f"expected a base64 string, got {_show(value)}")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise _Fault(f"invalid base64: {exc}") from None


def _enc_binary(value: Any, depth: int) -> Any:
    if isinstance(value, str):
        value = value.encode("utf-8")
    return base64.b64encode(value).decode("ascii")


def _enum_codec(enum_cls: Any) -> tuple[_Dec, _Enc]:
    by_name: dict[str, int] = enum_cls._NAMES_TO_VALUES
    by_value: dict[int, str] = enum_cls._VALUES_TO_NAMES
    tname = enum_cls.__name__
    valid = ", ".join(by_name)

    def dec(value: Any, depth: int) -> Any:
        if value.__class__ is str:
            number = by_name.get(value)
            if number is not None:
                return number
            raise _Fault(f"unknown {tname} name {_show(value)} (valid: {valid})")
        if isinstance(value, int) and not isinstance(value, bool):
            if value in by_value:
                return int(value)
            raise _Fault(f"unknown {tname} value {value} (valid: {valid})")
        raise _Fault(f"expected a {tname} name or integer, got {_show(value)}")

    def enc(value: Any, depth: int) -> Any:
        # An unknown value (a peer with a newer IDL) goes out as its integer.
        return by_value.get(value, value)

    return dec, enc


# -- map keys (always JSON strings in object form; no depth) --------------------------------


def _int_key_codec(ttype: int) -> tuple[Callable[[str], Any], Callable[[Any], str]]:
    name, lo, hi = _INT_RANGES[ttype]

    def dec(key: str) -> Any:
        if not _DECIMAL.fullmatch(key):
            raise _Fault(f"key {_show(key)} is not a decimal integer")
        number = _decimal(key)
        if number is not None and lo <= number <= hi:
            return number
        raise _Fault(f"key {_show(key)} is out of range for {name} ({lo} to {hi})")

    return dec, str


def _enum_key_codec(enum_cls: Any) -> tuple[Callable[[str], Any], Callable[[Any], str]]:
    by_name: dict[str, int] = enum_cls._NAMES_TO_VALUES
    by_value: dict[int, str] = enum_cls._VALUES_TO_NAMES
    tname = enum_cls.__name__
    valid = ", ".join(by_name)

    def dec(key: str) -> Any:
        number = by_name.get(key)
        if number is not None:
            return number
        if _DECIMAL.fullmatch(key):
            number = _decimal(key)
            if number is not None and number in by_value:
                return number
        raise _Fault(f"unknown {tname} key {_show(key)} (valid: {valid})")

    def enc(key: Any) -> str:
        name = by_value.get(key)
        return str(key) if name is None else name

    return dec, enc


def _string_key_dec(key: str) -> Any:
    return _dec_string(key, 0)


def _string_key_enc(key: Any) -> str:
    return _enc_string(key, 0)  # type: ignore[no-any-return]


# -- containers -----------------------------------------------------------------------------


def _list_codec(edec: _Dec, eenc: _Enc) -> tuple[_Dec, _Enc]:
    def dec(value: Any, depth: int) -> Any:
        if not isinstance(value, list):
            raise _Fault(f"expected an array, got {_show(value)}")
        if depth >= MAX_DEPTH:
            raise _too_deep()
        depth += 1
        out: list[Any] = []
        append = out.append
        try:
            for item in value:
                append(edec(item, depth))
        except _Fault as fault:
            fault.segments.append(f"[{len(out)}]")
            raise
        return out

    def enc(value: Any, depth: int) -> Any:
        if depth >= MAX_DEPTH:
            raise _too_deep()
        if eenc is _identity:
            return list(value)
        depth += 1
        return [eenc(item, depth) for item in value]

    return dec, enc


def _set_codec(edec: _Dec, eenc: _Enc) -> tuple[_Dec, _Enc]:
    def dec(value: Any, depth: int) -> Any:
        if not isinstance(value, list):
            raise _Fault(f"expected an array, got {_show(value)}")
        if depth >= MAX_DEPTH:
            raise _too_deep()
        depth += 1
        out: set[Any] = set()
        add = out.add
        for index, item in enumerate(value):
            try:
                add(edec(item, depth))
            except _Fault as fault:
                fault.segments.append(f"[{index}]")
                raise
            except TypeError:
                raise _fault_at(
                    f"[{index}]", "set elements of this type cannot be hashed"
                ) from None
        return out

    def enc(value: Any, depth: int) -> Any:
        if depth >= MAX_DEPTH:
            raise _too_deep()
        try:
            items = sorted(value)
        except TypeError:
            items = list(value)
        if eenc is _identity:
            return items
        depth += 1
        return [eenc(item, depth) for item in items]

    return dec, enc


def _object_map_codec(
    kdec: Callable[[str], Any], kenc: Callable[[Any], str], vdec: _Dec, venc: _Enc
) -> tuple[_Dec, _Enc]:
    def dec(value: Any, depth: int) -> Any:
        if not isinstance(value, dict):
            raise _Fault(f"expected an object, got {_show(value)}")
        if depth >= MAX_DEPTH:
            raise _too_deep()
        depth += 1
        out: dict[Any, Any] = {}
        for key, item in value.items():
            try:
                out[kdec(key)] = vdec(item, depth)
            except _Fault as fault:
                fault.segments.append(_key_segment(key))
                raise
        return out

    def enc(value: Any, depth: int) -> Any:
        if depth >= MAX_DEPTH:
            raise _too_deep()
        depth += 1
        return {kenc(key): venc(item, depth) for key, item in value.items()}

    return dec, enc


def _pairs_map_codec(kdec: _Dec, kenc: _Enc, vdec: _Dec, venc: _Enc) -> tuple[_Dec, _Enc]:
    def dec(value: Any, depth: int) -> Any:
        if not isinstance(value, list):
            raise _Fault(f"expected an array of [key, value] pairs, got {_show(value)}")
        if depth + 1 >= MAX_DEPTH:
            raise _too_deep()
        depth += 2
        out: dict[Any, Any] = {}
        for index, pair in enumerate(value):
            try:
                if not isinstance(pair, list) or len(pair) != 2:
                    raise _Fault(f"expected a [key, value] pair, got {_show(pair)}")
                try:
                    key = kdec(pair[0], depth)
                except _Fault as fault:
                    fault.segments.append("[0]")
                    raise
                try:
                    item = vdec(pair[1], depth)
                except _Fault as fault:
                    fault.segments.append("[1]")
                    raise
                try:
                    out[key] = item
                except TypeError:
                    raise _Fault("map keys of this type cannot be hashed") from None
            except _Fault as fault:
                fault.segments.append(f"[{index}]")
                raise
        return out

    def enc(value: Any, depth: int) -> Any:
        if depth + 1 >= MAX_DEPTH:
            raise _too_deep()
        depth += 2
        return [[kenc(key, depth), venc(item, depth)] for key, item in value.items()]

    return dec, enc


# -- structs --------------------------------------------------------------------------------

_IMMUTABLE: Final = (type(None), bool, int, float, str, bytes)


class _StructCodec:
    """The compiled codec of one struct, exception or ``<method>_args`` class.

    Built in two steps so that a recursive struct can refer to itself: the instance exists
    (and is findable) before its fields are compiled.
    """

    __slots__ = (
        "cls",
        "decoders",
        "encoder_map",
        "encoders",
        "fresh_defaults",
        "noun",
        "owner",
        "required",
    )

    def __init__(self, cls: Any, *, arguments: bool) -> None:
        self.cls = cls
        self.noun = "argument" if arguments else "field"
        name: str = cls.__name__
        self.owner = name.removesuffix("_args") if arguments else name
        self.decoders: dict[str, _Dec] = {}
        self.encoders: tuple[tuple[str, _Enc], ...] = ()
        self.encoder_map: dict[str, _Enc] = {}
        self.required: tuple[str, ...] = ()
        self.fresh_defaults: tuple[tuple[str, Any], ...] = ()

    def build(self, pending: dict[Any, _StructCodec]) -> None:
        decoders: dict[str, _Dec] = {}
        encoders: list[tuple[str, _Enc]] = []
        required: list[str] = []
        for field in self.cls.thrift_spec.values():
            name = field[1]
            ttype, spec = split_field_spec(field)
            dec, enc = _compile(ttype, spec, pending)
            decoders[name] = dec
            encoders.append((name, enc))
            if field[-1] is True:
                required.append(name)
        # thriftpy2's generated __init__ shares one default object among all instances; a
        # mutable default ([] or a struct) is copied so that decoded values never alias.
        fresh = tuple(
            (name, default)
            for name, default in getattr(self.cls, "default_spec", ())
            if not isinstance(default, _IMMUTABLE)
        )
        self.decoders = decoders
        self.encoders = tuple(encoders)
        self.encoder_map = dict(encoders)
        self.required = tuple(required)
        self.fresh_defaults = fresh

    def decode(self, value: Any, depth: int) -> Any:
        if not isinstance(value, dict):
            raise _Fault(f"expected an object, got {_show(value)}")
        if depth >= MAX_DEPTH:
            raise _too_deep()
        depth += 1
        decoders = self.decoders
        kwargs: dict[str, Any] = {}
        for key, item in value.items():
            dec = decoders.get(key)
            if dec is None:
                raise _fault_at(
                    _field_segment(key),
                    f"unknown {self.noun} ({self.owner} has: {', '.join(decoders) or 'none'})",
                )
            if item is None:
                continue
            try:
                kwargs[key] = dec(item, depth)
            except _Fault as fault:
                fault.segments.append("." + key)
                raise
        for name in self.required:
            if name not in kwargs:
                state = "null" if name in value else "missing"
                raise _fault_at("." + name, f"required {self.noun} is {state}")
        for name, default in self.fresh_defaults:
            if name not in kwargs:
                kwargs[name] = copy.deepcopy(default)
        return self.cls(**kwargs)

    def encode(self, obj: Any, depth: int) -> Any:
        if depth >= MAX_DEPTH:
            raise _too_deep()
        depth += 1
        out: dict[str, Any] = {}
        for name, enc in self.encoders:
            item = getattr(obj, name, None)
            if item is not None:
                out[name] = enc(item, depth)
        return out


def _struct_codec(cls: Any, pending: dict[Any, _StructCodec]) -> _StructCodec:
    codec: _StructCodec | None = cls.__dict__.get(_CODEC_ATTR) or pending.get(cls)
    if codec is None:
        codec = _StructCodec(cls, arguments=False)
        pending[cls] = codec
        codec.build(pending)
    return codec


def _compiled_struct(cls: Any, *, arguments: bool = False) -> _StructCodec:
    """The codec of a struct class, compiled on first use and kept on the class.

    With ``arguments``, the codec of an ``<method>_args`` class, whose errors speak of
    arguments; it is kept apart from the plain codec of the same class.
    """
    attr = _ARGS_CODEC_ATTR if arguments else _CODEC_ATTR
    codec: _StructCodec | None = cls.__dict__.get(attr)
    if codec is not None:
        return codec
    pending: dict[Any, _StructCodec] = {}
    if arguments:
        codec = _StructCodec(cls, arguments=True)
        codec.build(pending)
    else:
        codec = _struct_codec(cls, pending)
    # Published only once every struct it reaches is complete, so another thread never sees
    # a half-built codec; two threads racing here build equal codecs, and either may win.
    for struct_cls, built in pending.items():
        setattr(struct_cls, _CODEC_ATTR, built)
    setattr(cls, attr, codec)
    return codec


# -- compiling ------------------------------------------------------------------------------


def _compile(ttype: int, spec: Any, pending: dict[Any, _StructCodec]) -> tuple[_Dec, _Enc]:
    if ttype == TType.BOOL:
        return _dec_bool, _identity
    if ttype in _INT_RANGES:
        if is_enum(ttype, spec):
            return _enum_codec(spec)
        return _int_codec(ttype)
    if ttype == TType.DOUBLE:
        return _dec_double, _enc_double
    if ttype in _STRING_TYPES:
        return _dec_string, _enc_string
    if ttype == TType.BINARY:
        return _dec_binary, _enc_binary
    if ttype == TType.STRUCT:
        codec = _struct_codec(spec, pending)
        return codec.decode, codec.encode
    if ttype in (TType.LIST, TType.SET):
        edec, eenc = _compile(*split_elem_spec(spec), pending)
        return _list_codec(edec, eenc) if ttype == TType.LIST else _set_codec(edec, eenc)
    if ttype == TType.MAP:
        ktype, kspec = split_elem_spec(spec[0])
        vdec, venc = _compile(*split_elem_spec(spec[1]), pending)
        form = map_form(ktype, kspec)
        if form == "pairs":
            kdec, kenc = _compile(ktype, kspec, pending)
            return _pairs_map_codec(kdec, kenc, vdec, venc)
        if form == "string":
            return _object_map_codec(_string_key_dec, _string_key_enc, vdec, venc)
        if form == "enum":
            return _object_map_codec(*_enum_key_codec(kspec), vdec, venc)
        return _object_map_codec(*_int_key_codec(ktype), vdec, venc)
    raise ValueError(f"unsupported Thrift type {ttype}")


@functools.lru_cache(maxsize=512)
def _compiled(ttype: int, spec: Any) -> tuple[_Dec, _Enc]:
    if ttype == TType.STRUCT:
        codec = _compiled_struct(spec)
        return codec.decode, codec.encode
    pending: dict[Any, _StructCodec] = {}
    pair = _compile(ttype, spec, pending)
    for struct_cls, built in pending.items():
        setattr(struct_cls, _CODEC_ATTR, built)
    return pair


def _encode_error(what: str, exc: Exception) -> JsonEncodeError:
    if isinstance(exc, _Fault):
        return JsonEncodeError(f"cannot show {what} as JSON: {exc.reason}")
    return JsonEncodeError(f"cannot show {what} as JSON: {type(exc).__name__}: {exc}")


# -- public API -----------------------------------------------------------------------------


def value_from_json(ttype: int, spec: Any, value: Any, path: str = "value") -> Any:
    """Turn a decoded JSON value into the Python value thriftpy2 holds for a Thrift type.

    Args:
        ttype: the Thrift type code (``TType.I32``, ``TType.LIST``...).
        spec: its spec as in ``thrift_spec``: ``None`` for scalars, the class for enums and
            structs, the element spec for lists and sets, ``(key, value)`` specs for maps.
        value: the decoded JSON value.
        path: the root of the path named in errors.

    Returns:
        The Thrift value (``int``, ``float``, ``str``, ``bytes``, a struct, ``list``, ``set``,
        ``dict``...).

    Raises:
        JsonMappingError: the value does not fit the type.
        ValueError: ``ttype`` is not a type a value can have (``VOID``, ``STOP``).
    """
    dec, _ = _compiled(ttype, spec)
    try:
        return dec(value, 0)
    except _Fault as fault:
        raise JsonMappingError(fault.path(path), fault.reason) from None


def value_to_json(ttype: int, spec: Any, value: Any) -> Any:
    """Turn a Thrift value into a JSON-ready value (for :func:`json.dumps`).

    Args:
        ttype: the Thrift type code.
        spec: its spec, as for :func:`value_from_json`.
        value: the Thrift value; not ``None``.

    Returns:
        ``dict``, ``list``, ``str``, ``int``, ``float`` or ``bool``; never a non-finite float.

    Raises:
        JsonEncodeError: the value is nested too deep, or is not of its declared type.
        ValueError: ``ttype`` is not a type a value can have.
    """
    _, enc = _compiled(ttype, spec)
    try:
        return enc(value, 0)
    except (_Fault, TypeError, ValueError, AttributeError) as exc:
        raise _encode_error(f"a {_type_name(ttype, spec)} value", exc) from None


def struct_from_json(cls: Any, obj: Any, path: str = "value") -> Any:
    """Build an instance of a struct or exception class from a decoded JSON object.

    Raises:
        JsonMappingError: the object does not fit the struct.
    """
    try:
        return _compiled_struct(cls).decode(obj, 0)
    except _Fault as fault:
        raise JsonMappingError(fault.path(path), fault.reason) from None


def struct_to_json(obj: Any) -> dict[str, Any]:
    """The JSON object of a struct or exception: fields by name, unset ones left out.

    Raises:
        JsonEncodeError: a field is nested too deep, or is not of its declared type.
    """
    try:
        return _compiled_struct(type(obj)).encode(obj, 0)  # type: ignore[no-any-return]
    except (_Fault, TypeError, ValueError, AttributeError) as exc:
        raise _encode_error(f"a {type(obj).__name__}", exc) from None


def args_from_json(method: MethodInfo, obj: object) -> Any:
    """Build the ``<method>_args`` struct from a decoded JSON object of named arguments.

    Missing optional arguments take their IDL default (``None`` where there is none); a JSON
    ``null`` counts as missing.

    Args:
        method: the method called.
        obj: the decoded request body: an object keyed by argument name.

    Returns:
        An instance of ``method.args_cls``.

    Raises:
        JsonMappingError: the body is not an object, names an unknown argument, lacks a
            required one, or holds a value that does not fit; ``path`` starts with
            ``argument`` (e.g. ``argument.xtructs[2].i32_thing``).
    """
    codec = _compiled_struct(method.args_cls, arguments=True)
    if not isinstance(obj, dict):
        raise JsonMappingError(
            ARGUMENT_ROOT, f"expected an object of named arguments, got {_show(obj)}"
        )
    try:
        return codec.decode(obj, 0)
    except _Fault as fault:
        raise JsonMappingError(fault.path(ARGUMENT_ROOT), fault.reason) from None


def args_to_json(method: MethodInfo, args: Any) -> dict[str, Any]:
    """The JSON object of named arguments of an ``<method>_args`` struct (a client's view).

    Raises:
        JsonEncodeError: an argument is nested too deep, or is not of its declared type.
    """
    codec = _compiled_struct(method.args_cls, arguments=True)
    try:
        return codec.encode(args, 0)  # type: ignore[no-any-return]
    except (_Fault, TypeError, ValueError, AttributeError) as exc:
        raise _encode_error(f"the arguments of {method.name}", exc) from None


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a call came to, in JSON terms.

    Attributes:
        kind: ``"success"``: the method returned (``value`` is the JSON of its result,
            ``None`` for ``void`` and ``oneway``); ``"exception"``: it raised one of its
            declared exceptions (``value`` is the exception's JSON object).
        value: see ``kind``.
        exception_type: the Thrift name of the exception (``"Xception"``), or ``None``.
        exception_field: the name the method's ``throws`` clause gives it (``"err1"``), or
            ``None``.
    """

    kind: Literal["success", "exception"]
    value: Any
    exception_type: str | None = None
    exception_field: str | None = None


def result_to_json(method: MethodInfo, result_struct: Any) -> Outcome:
    """Turn a decoded ``<method>_result`` struct into an :class:`Outcome`.

    Args:
        method: the method called.
        result_struct: the decoded reply (ignored for a ``oneway`` method, may be ``None``).

    Returns:
        The outcome; a set ``success`` wins over a set exception, as in thriftpy2's client.

    Raises:
        RemoteProtocolError: a non-void method's reply carries neither a result nor a declared
            exception (Thrift's ``MISSING_RESULT``); :class:`JsonEncodeError` (a subclass)
            when the result cannot be shown as JSON.
    """
    if method.oneway:
        return Outcome("success", None)
    encoders = _compiled_struct(method.result_cls).encoder_map
    success = getattr(result_struct, "success", None)
    if success is not None:
        try:
            return Outcome("success", encoders["success"](success, 0))
        except (_Fault, TypeError, ValueError, AttributeError) as exc:
            raise _encode_error(f"the result of {method.name}", exc) from None
    for field_name, _ in method.exceptions:
        exc_value = getattr(result_struct, field_name, None)
        if exc_value is not None:
            return Outcome(
                "exception",
                struct_to_json(exc_value),
                exception_type=type(exc_value).__name__,
                exception_field=field_name,
            )
    if "success" not in encoders:
        return Outcome("success", None)
    raise RemoteProtocolError(
        f"the reply to {method.name} carries neither a result nor a declared exception"
    )


def _type_name(ttype: int, spec: Any) -> str:
    if spec is not None and hasattr(spec, "__name__"):
        return str(spec.__name__)
    return str(TType._VALUES_TO_NAMES.get(ttype, ttype)).lower()
