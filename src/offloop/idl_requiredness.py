"""Which arguments a JSON body must hold: what the IDL says that thriftpy2 forgets.

The rule of the JSON mapping: an argument is required unless the IDL marks it ``optional`` or
gives it a default. thriftpy2 keeps a field's requiredness as one flag
(``thrift_spec[id][-1]``): ``True`` for ``required``, ``False`` for both ``optional`` and the
default requiredness, so ``1: string a`` and ``1: optional string a`` look the same once
parsed. It does keep the file a class was declared in (``__thrift_file__``) and the line of
each field's name (``__thrift_field_linenos__``), so this module reads that line of the
``.thrift`` source again and looks for ``optional`` before the field's type.

The answer is computed once per class and kept on it, so the source is read once per
``<method>_args`` class (the OpenAPI document asks first, when the gateway is built). When the
source cannot be read (an IDL parsed from a string, a file since deleted) or the text around
the name is not understood, a field counts as not marked ``optional``: the strict reading,
which refuses a body that leaves the argument out rather than hand the handler a ``None``.
"""

from __future__ import annotations

import functools
import os
import re
from typing import Any, Final

__all__ = ["marked_optional", "required_arguments"]

# Where the answer is kept on an ``<method>_args`` class: it lives and dies with the class.
_REQUIRED_ATTR: Final = "_offloop_required_arguments"

# One token of Thrift source (words may be dotted: ``shared.Color``); comments are skipped
# separately, strings are matched whole so that their content is never taken for code.
_TOKEN: Final = re.compile(
    r"""
    (?P<word>[A-Za-z_][A-Za-z0-9_.]*)
    | (?P<number>[+-]?[0-9][A-Za-z0-9_.]*)
    | (?P<string>"(?:[^"\\\n]|\\.)*"?|'(?:[^'\\\n]|\\.)*'?)
    | (?P<space>[ \t\r\f\v]+)
    | (?P<newline>\n)
    | (?P<comment>//[^\n]*|\#[^\n]*|/\*.*?(?:\*/|\Z))
    | (?P<punct>.)
    """,
    re.VERBOSE | re.DOTALL,
)
_PAIRS: Final = {")": "(", ">": "<"}


@functools.lru_cache(maxsize=32)
def _tokens(path: str, version: int) -> tuple[list[str], dict[int, list[int]]]:
    """The tokens of a ``.thrift`` file, and the indexes of each line's tokens (from 1);
    ``version`` (its modification time) keeps an edited file from being read stale."""
    with open(path, encoding="utf-8", errors="replace") as file:
        text = file.read()
    tokens: list[str] = []
    by_line: dict[int, list[int]] = {}
    line = 1
    for match in _TOKEN.finditer(text):
        kind = match.lastgroup
        if kind == "newline":
            line += 1
        elif kind == "comment":
            line += match.group().count("\n")
        elif kind != "space":
            by_line.setdefault(line, []).append(len(tokens))
            tokens.append(match.group())
    return tokens, by_line


def _optional_before(tokens: list[str], name_at: int) -> bool | None:
    """Whether ``optional`` precedes the type before the name at ``name_at``; ``None`` when
    the tokens before it do not read as ``[optional] type [(annotations)]``."""
    j = name_at - 1
    while j >= 0 and tokens[j] in _PAIRS:  # a type's annotations, then its <...> arguments
        closer, opener, depth = tokens[j], _PAIRS[tokens[j]], 0
        while j >= 0:
            depth += (tokens[j] == closer) - (tokens[j] == opener)
            j -= 1
            if depth == 0:
                break
    if j < 0 or not (tokens[j][0].isalpha() or tokens[j][0] == "_"):
        return None
    return j > 0 and tokens[j - 1] == "optional"


def _owner(tokens: list[str], at: int) -> str | None:
    """The name before the bracket that encloses token ``at``: the struct (``Foo {``) or
    function (``get(``) a field belongs to."""
    depth = 0
    for j in range(at - 1, -1, -1):
        text = tokens[j]
        if text in (")", "}"):
            depth += 1
        elif text in ("(", "{"):
            if depth == 0:
                return tokens[j - 1] if j > 0 else None
            depth -= 1
    return None


def marked_optional(cls: Any, field_name: str) -> bool:
    """Whether the IDL marks ``field_name`` of ``cls`` (a struct or ``<method>_args`` class)
    ``optional``; ``False`` when that cannot be read."""
    path = getattr(cls, "__thrift_file__", None)
    line = getattr(cls, "__thrift_field_linenos__", {}).get(field_name)
    if not isinstance(path, str) or not isinstance(line, int):
        return False
    try:
        tokens, by_line = _tokens(path, os.stat(path).st_mtime_ns)
    except OSError:
        return False
    # The name is a token of its text on its line that reads as a field's name; of several
    # (two functions on one line, each with an argument ``x``), the one of this class.
    owner = str(getattr(cls, "__name__", "")).removesuffix("_args")
    fallback = False
    for index in reversed(by_line.get(line, [])):
        if tokens[index] == field_name:
            found = _optional_before(tokens, index)
            if found is None:
                continue
            if _owner(tokens, index) == owner:
                return found
            fallback = found
    return fallback


def required_arguments(args_cls: Any) -> tuple[str, ...]:
    """The arguments of an ``<method>_args`` class that a JSON body must hold, in IDL order:
    those neither marked ``optional`` nor given a default.

    Kept on the class after the first call.
    """
    cached: tuple[str, ...] | None = args_cls.__dict__.get(_REQUIRED_ATTR)
    if cached is not None:
        return cached
    defaults = dict(getattr(args_cls, "default_spec", ()))
    required = tuple(
        field[1]
        for _, field in sorted(args_cls.thrift_spec.items())
        if field[-1] is True
        or (defaults.get(field[1]) is None and not marked_optional(args_cls, field[1]))
    )
    setattr(args_cls, _REQUIRED_ATTR, required)
    return required
