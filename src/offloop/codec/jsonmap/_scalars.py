"""The codecs of scalar values: booleans, integers, doubles, strings, binary and enums.

A codec is a pair of functions ``(value, depth) -> value``: a decoder from JSON and an encoder
to JSON (:data:`Dec`, :data:`Enc`); scalars ignore the depth. Map keys in object form are
always JSON strings, so they have codecs of their own, ``str -> value`` and ``value -> str``.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable
from typing import Any, Final

from thriftpy2.thrift import TType

from offloop.codec.jsonmap._errors import Fault, show
from offloop.codec.jsonmap._specs import INT_RANGES

__all__ = [
    "Dec",
    "Enc",
    "dec_binary",
    "dec_bool",
    "dec_double",
    "dec_string",
    "enc_binary",
    "enc_double",
    "enc_string",
    "enum_codec",
    "enum_key_codec",
    "identity",
    "int_codec",
    "int_key_codec",
    "string_key_dec",
    "string_key_enc",
]

_DECIMAL: Final = re.compile(r"-?[0-9]+")
# The most significant digits an i64 has; a decimal string with more is out of range before
# int() sees it, so that no one can make us parse a megabyte of digits.
_MAX_DIGITS: Final = 19
# Below this magnitude a double holds every integer exactly, so an integral float there is
# the integer its text wrote (45.0 is 45); above it, 9007199254740993.0 parses as ...992.
_EXACT_FLOAT_INTS: Final = 2.0**53
_SPECIAL_DOUBLES: Final[dict[str, float]] = {
    "NaN": float("nan"),
    "Infinity": float("inf"),
    "-Infinity": float("-inf"),
}

Dec = Callable[[Any, int], Any]
Enc = Callable[[Any, int], Any]


def _decimal(text: str) -> int | None:
    """The integer of a string that matches ``_DECIMAL``; ``None`` when it cannot be an i64."""
    if len(text) <= _MAX_DIGITS:
        return int(text)
    digits = text.lstrip("-").lstrip("0")
    if len(digits) > _MAX_DIGITS:
        return None
    return int(text[0] + digits) if text[0] == "-" and digits else int(digits or "0")


# -- scalars --------------------------------------------------------------------------------


def _integral(value: float) -> int | None:
    """The integer an integral float stands for (``45.0``: JSON Schema's "integer" takes
    it); ``None`` when it has a fraction, is not finite, or is too large to be exact."""
    if value.is_integer() and -_EXACT_FLOAT_INTS < value < _EXACT_FLOAT_INTS:
        return int(value)
    return None


def identity(value: Any, depth: int) -> Any:
    return value


def dec_bool(value: Any, depth: int) -> Any:
    if value is True or value is False:
        return value
    raise Fault(f"expected true or false, got {show(value)}")


def int_codec(ttype: int) -> tuple[Dec, Enc]:
    name, lo, hi = INT_RANGES[ttype]
    accepts_string = ttype == TType.I64
    expected = "an integer or a decimal string" if accepts_string else "an integer"

    def dec(value: Any, depth: int) -> Any:
        if value.__class__ is not int:
            if accepts_string and value.__class__ is str and _DECIMAL.fullmatch(value):
                number = _decimal(value)
                if number is not None and lo <= number <= hi:
                    return number
                raise Fault(f"{show(value)} is out of range for {name} ({lo} to {hi})")
            if isinstance(value, float):
                number = _integral(value)
                if number is None:
                    raise Fault(f"expected {expected}, got {show(value)}{_why_not(value)}")
                value = number
            elif not isinstance(value, int) or isinstance(value, bool):
                raise Fault(f"expected {expected}, got {show(value)}")
            else:
                value = int(value)
        if lo <= value <= hi:
            return value
        raise Fault(f"{value} is out of range for {name} ({lo} to {hi})")

    return dec, identity


def _why_not(value: float) -> str:
    """Why an integral-looking float is no integer, for an error message."""
    if value - value != 0:  # an infinity (NaN does not parse)
        return " (a number beyond the double range)"
    if value.is_integer():
        return " (an integer written as a float is exact only below 2**53)"
    return ""


def dec_double(value: Any, depth: int) -> Any:
    cls = value.__class__
    if cls is float:
        # x - x is 0 for every finite float. JSON has no infinity: 1e400 parses as one.
        if value - value == 0:
            return value
        raise Fault(
            f"{show(value)} is out of range for double"
            ' (for an infinity, send the string "Infinity" or "-Infinity")'
        )
    if cls is int:
        try:
            return float(value)
        except OverflowError:
            raise Fault(f"{show(value)} is out of range for double") from None
    if cls is str:
        special = _SPECIAL_DOUBLES.get(value)
        if special is not None:
            return special
    elif isinstance(value, int | float) and not isinstance(value, bool):
        return dec_double(float(value), depth)
    raise Fault(f'expected a number or "NaN", "Infinity", "-Infinity", got {show(value)}')


def enc_double(value: Any, depth: int) -> Any:
    # x - x is 0 for every finite float, and NaN for NaN and the infinities.
    if value - value == 0:
        return value
    if value != value:
        return "NaN"
    return "Infinity" if value > 0 else "-Infinity"


def dec_string(value: Any, depth: int) -> Any:
    if value.__class__ is not str:
        if not isinstance(value, str):
            raise Fault(f"expected a string, got {show(value)}")
        value = str(value)
    if not value.isascii():
        # JSON "\ud800" decodes to a lone surrogate, which no Thrift protocol can encode.
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise Fault("string is not valid Unicode (it holds a lone surrogate)") from None
    return value


def enc_string(value: Any, depth: int) -> Any:
    if value.__class__ is str:
        return value
    # thriftpy2 hands over bytes when a peer sent a string that is not UTF-8.
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "replace")
    return str(value)


def dec_binary(value: Any, depth: int) -> Any:
    if not isinstance(value, str):
        raise Fault(f"expected a base64 string, got {show(value)}")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise Fault(f"invalid base64: {exc}") from None


def enc_binary(value: Any, depth: int) -> Any:
    if isinstance(value, str):
        value = value.encode("utf-8")
    return base64.b64encode(value).decode("ascii")


def enum_codec(enum_cls: Any) -> tuple[Dec, Enc]:
    by_name: dict[str, int] = enum_cls._NAMES_TO_VALUES
    by_value: dict[int, str] = enum_cls._VALUES_TO_NAMES
    tname = enum_cls.__name__
    valid = ", ".join(by_name)

    def dec(value: Any, depth: int) -> Any:
        if value.__class__ is str:
            number = by_name.get(value)
            if number is not None:
                return number
            raise Fault(f"unknown {tname} name {show(value)} (valid: {valid})")
        if isinstance(value, float):
            number = _integral(value)
            if number is not None:
                value = number
        if isinstance(value, int) and not isinstance(value, bool):
            if value in by_value:
                return int(value)
            raise Fault(f"unknown {tname} value {value} (valid: {valid})")
        raise Fault(f"expected a {tname} name or integer, got {show(value)}")

    def enc(value: Any, depth: int) -> Any:
        # An unknown value (a peer with a newer IDL) goes out as its integer.
        return by_value.get(value, value)

    return dec, enc


# -- map keys (always JSON strings in object form; no depth) --------------------------------


def int_key_codec(ttype: int) -> tuple[Callable[[str], Any], Callable[[Any], str]]:
    name, lo, hi = INT_RANGES[ttype]

    def dec(key: str) -> Any:
        if not _DECIMAL.fullmatch(key):
            raise Fault(f"key {show(key)} is not a decimal integer")
        number = _decimal(key)
        if number is not None and lo <= number <= hi:
            return number
        raise Fault(f"key {show(key)} is out of range for {name} ({lo} to {hi})")

    return dec, str


def enum_key_codec(enum_cls: Any) -> tuple[Callable[[str], Any], Callable[[Any], str]]:
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
        raise Fault(f"unknown {tname} key {show(key)} (valid: {valid})")

    def enc(key: Any) -> str:
        name = by_value.get(key)
        return str(key) if name is None else name

    return dec, enc


def string_key_dec(key: str) -> Any:
    return dec_string(key, 0)


def string_key_enc(key: Any) -> str:
    return enc_string(key, 0)  # type: ignore[no-any-return]
