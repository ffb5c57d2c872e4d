"""The entry points of the JSON mapping: values, structs, and a method's arguments and result.

Each compiles (once) the codec of the type it is given, runs it from depth 0, and turns a
fault inside into the public error with its full path: :class:`JsonMappingError` for input
(the caller is at fault), :class:`JsonEncodeError` for output (the peer is).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final, Literal

from thriftpy2.thrift import TType

from offloop.codec.jsonmap._compiler import compiled, compiled_struct
from offloop.codec.jsonmap._errors import Fault, JsonMappingError, encode_error, show
from offloop.errors import RemoteProtocolError
from offloop.idl import MethodInfo

__all__ = [
    "ARGUMENT_ROOT",
    "Outcome",
    "args_from_json",
    "args_to_json",
    "result_to_json",
    "struct_from_json",
    "struct_to_json",
    "value_from_json",
    "value_to_json",
]

ARGUMENT_ROOT: Final = "argument"
"""The root of error paths in a method's arguments: ``argument.xtructs[2].i32_thing``."""


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
    dec, _ = compiled(ttype, spec)
    try:
        return dec(value, 0)
    except Fault as fault:
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
    _, enc = compiled(ttype, spec)
    try:
        return enc(value, 0)
    except (Fault, TypeError, ValueError, AttributeError) as exc:
        raise encode_error(f"a {_type_name(ttype, spec)} value", exc) from None


def struct_from_json(cls: Any, obj: Any, path: str = "value") -> Any:
    """Build an instance of a struct or exception class from a decoded JSON object.

    Raises:
        JsonMappingError: the object does not fit the struct.
    """
    try:
        return compiled_struct(cls).decode(obj, 0)
    except Fault as fault:
        raise JsonMappingError(fault.path(path), fault.reason) from None


def struct_to_json(obj: Any) -> dict[str, Any]:
    """The JSON object of a struct or exception: fields by name, unset ones left out.

    Raises:
        JsonEncodeError: a field is nested too deep, or is not of its declared type.
    """
    try:
        return compiled_struct(type(obj)).encode(obj, 0)  # type: ignore[no-any-return]
    except (Fault, TypeError, ValueError, AttributeError) as exc:
        raise encode_error(f"a {type(obj).__name__}", exc) from None


def args_from_json(method: MethodInfo, obj: object) -> Any:
    """Build the ``<method>_args`` struct from a decoded JSON object of named arguments.

    An argument must be given unless the IDL marks it ``optional`` or gives it a default
    (:func:`offloop.idl_requiredness.required_arguments`); one left out takes its default, or
    is unset (``None``). ``null`` is no value: refused for every argument and field.

    Args:
        method: the method called.
        obj: the decoded request body: an object keyed by argument name.

    Returns:
        An instance of ``method.args_cls``.

    Raises:
        JsonMappingError: the body is not an object, names an unknown argument, lacks a
            required one, holds ``null``, or a value that does not fit; ``path`` starts with
            ``argument`` (e.g. ``argument.xtructs[2].i32_thing``).
    """
    codec = compiled_struct(method.args_cls, arguments=True)
    if not isinstance(obj, dict):
        raise JsonMappingError(
            ARGUMENT_ROOT, f"expected an object of named arguments, got {show(obj)}"
        )
    try:
        return codec.decode(obj, 0)
    except Fault as fault:
        raise JsonMappingError(fault.path(ARGUMENT_ROOT), fault.reason) from None


def args_to_json(method: MethodInfo, args: Any) -> dict[str, Any]:
    """The JSON object of named arguments of an ``<method>_args`` struct (a client's view).

    Raises:
        JsonEncodeError: an argument is nested too deep, or is not of its declared type.
    """
    codec = compiled_struct(method.args_cls, arguments=True)
    try:
        return codec.encode(args, 0)  # type: ignore[no-any-return]
    except (Fault, TypeError, ValueError, AttributeError) as exc:
        raise encode_error(f"the arguments of {method.name}", exc) from None


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
            when the result cannot be shown as JSON, and its :class:`ReplyBreaksIdl` when a
            struct in it lacks a field the IDL marks ``required``.
    """
    if method.oneway:
        return Outcome("success", None)
    encoders = compiled_struct(method.result_cls).encoder_map
    success = getattr(result_struct, "success", None)
    if success is not None:
        try:
            return Outcome("success", encoders["success"](success, 0))
        except (Fault, TypeError, ValueError, AttributeError) as exc:
            raise encode_error(f"the result of {method.name}", exc) from None
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
