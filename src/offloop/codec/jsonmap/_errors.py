"""The errors of the JSON mapping, and the paths that say where a bad value is.

Codecs raise :class:`Fault`, which knows only what is wrong; each container on the way out
appends its path segment, and the entry point that catches it turns it into a public error
(:class:`JsonMappingError` for input, :class:`JsonEncodeError` for output) with the full path.
So paths cost nothing unless something fails.
"""

from __future__ import annotations

import json
from typing import Any, Final

from offloop.errors import LocalProtocolError, RemoteProtocolError

__all__ = [
    "MAX_DEPTH",
    "Fault",
    "JsonEncodeError",
    "JsonMappingError",
    "MissingRequired",
    "ReplyBreaksIdl",
    "encode_error",
    "fault_at",
    "field_segment",
    "key_segment",
    "show",
    "too_deep",
]

MAX_DEPTH: Final = 64
"""Most arrays and objects nested in one another that a value may have (the outermost counts).

Deep enough for any sane document, shallow enough that the recursion (a few Python frames a
level) stays far from the interpreter's limit even for recursive structs.
"""


class JsonMappingError(LocalProtocolError):
    """A JSON value does not fit the Thrift type it is meant for; the caller is at fault.

    Attributes:
        path: where the bad value is, e.g. ``argument.xtructs[2].i32_thing``.
        reason: what is wrong with it, e.g. ``expected an integer, got "x"``.
    """

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class JsonEncodeError(RemoteProtocolError):
    """A Thrift value (from a peer's reply) cannot be shown as JSON: nested too deep, or not
    of its declared type."""


class ReplyBreaksIdl(JsonEncodeError):
    """A peer's value leaves out a field its IDL marks ``required``: the reply breaks the
    contract, and must not pass as a good one.

    Attributes:
        struct: the Thrift name of the struct (or exception) missing the field.
        field: the name of the field.
    """

    def __init__(self, what: str, struct: str, field: str) -> None:
        public = f"reply breaks the IDL: required field {struct}.{field} is missing"
        super().__init__(f"{what}: {public}", public_message=public)
        self.struct = struct
        self.field = field


class Fault(Exception):
    """Raised inside the codecs; each container on the way out adds its path segment.

    Segments are appended innermost first, so the path is their reverse.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.segments: list[str] = []

    def path(self, root: str) -> str:
        return root + "".join(reversed(self.segments))


class MissingRequired(Fault):
    """Raised while encoding a struct whose ``required`` field is unset (``None``)."""

    def __init__(self, struct: str, field: str) -> None:
        super().__init__(f"required field {struct}.{field} is missing")
        self.struct = struct
        self.field = field


def show(value: Any) -> str:
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


def key_segment(key: Any) -> str:
    return f"[{show(key)}]"


def field_segment(key: Any) -> str:
    if isinstance(key, str) and key.isidentifier():
        return "." + key
    return key_segment(key)


def fault_at(segment: str, reason: str) -> Fault:
    fault = Fault(reason)
    fault.segments.append(segment)
    return fault


def too_deep() -> Fault:
    return Fault(f"nested deeper than {MAX_DEPTH} levels")


def encode_error(what: str, exc: Exception) -> JsonEncodeError:
    if isinstance(exc, MissingRequired):
        return ReplyBreaksIdl(what, exc.struct, exc.field)
    if isinstance(exc, Fault):
        return JsonEncodeError(f"cannot show {what} as JSON: {exc.reason}")
    return JsonEncodeError(f"cannot show {what} as JSON: {type(exc).__name__}: {exc}")
