"""Parsing a JSON document from bytes, strictly: what :func:`json.loads` lets through that the
mapping must not see.

- ``NaN``, ``Infinity`` and ``-Infinity`` are not JSON (RFC 8259); :func:`json.loads` takes
  them as floats. Refused here: a double takes the strings ``"NaN"``, ``"Infinity"`` and
  ``"-Infinity"`` instead (the mapping's table). A number too large for a double (``1e400``)
  parses as an infinity; the mapping refuses that where a value is decoded, with its path.
- Duplicate keys: :func:`json.loads` keeps the last; which one a client meant is unknown, so
  the document is refused, naming the key.
- Nesting: the C parser recurses once per array or object and stops with ``RecursionError``
  near the interpreter's recursion limit (about 1,000 levels); that is the caller's fault
  like any other bad input. The mapping itself stops at :data:`MAX_DEPTH`.

Every refusal is a :class:`JsonSyntaxError`, a :class:`~offloop.errors.LocalProtocolError`
(status 400).
"""

from __future__ import annotations

import json
from typing import Any, NoReturn

from offloop.codec.jsonmap._errors import MAX_DEPTH, show
from offloop.errors import LocalProtocolError

__all__ = ["JsonSyntaxError", "parse_json"]


class JsonSyntaxError(LocalProtocolError):
    """The bytes are not one strict JSON document; the caller is at fault."""


class _Refused(ValueError):
    """Raised from the parser's hooks; turned into a :class:`JsonSyntaxError`."""


def _no_constant(name: str) -> NoReturn:
    raise _Refused(f'{name} is not JSON (a double takes the string "{name}")')


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _Refused(f"duplicate key {show(key)} in an object")
            seen.add(key)
    return obj


_DECODER = json.JSONDecoder(object_pairs_hook=_object, parse_constant=_no_constant)


def parse_json(data: bytes) -> Any:
    """Parse one JSON document (UTF-8, or UTF-16/32 as :func:`json.loads` detects them).

    Returns:
        The decoded value: ``dict``, ``list``, ``str``, ``int``, ``float``, ``bool`` or
        ``None``. A float may be infinite (a number beyond the double range); no float is NaN.

    Raises:
        JsonSyntaxError: the bytes are not JSON, not text, or hold ``NaN``/``Infinity``, a
            duplicate key, or nesting the parser cannot follow.
    """
    try:
        # json.loads would build a decoder per call with these hooks: one is kept instead.
        text = data.decode(json.detect_encoding(data), "surrogatepass")
        return _DECODER.decode(text)
    except _Refused as exc:
        raise JsonSyntaxError(str(exc)) from None
    except RecursionError:
        raise JsonSyntaxError(
            f"JSON nested too deep (arguments may nest {MAX_DEPTH} levels)"
        ) from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise JsonSyntaxError(f"malformed JSON: {exc}") from None
