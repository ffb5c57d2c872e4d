"""Kinds: how the value of one setting is read from text (flags, environment) and from TOML.

A :class:`Kind` turns what a user typed, or what ``tomllib`` read, into the value a config
dataclass field takes, or raises ``ValueError`` with a message that says what was expected and
what was got (``expected an integer, got 'x'``); the caller names the source. :func:`kind_for`
picks the kind of a field from its type annotation.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

__all__ = [
    "Bool",
    "Choice",
    "Float",
    "Int",
    "Kind",
    "Optional",
    "Pairs",
    "Str",
    "Strings",
    "kind_for",
    "toml_strings",
]

#: Words an environment variable may use for a boolean (case does not matter).
TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
FALSE_WORDS = frozenset({"0", "false", "no", "off"})


class Kind:
    """How the values of one setting are read from text (flags, environment) and from TOML.

    Methods raise ``ValueError`` with a message that does not name the source; the caller
    adds it.
    """

    #: The flag may be repeated; the environment variable is a comma-separated list.
    repeatable = False
    #: The flag is ``--x/--no-x`` and takes no value.
    boolean = False

    def metavar(self, flag: str) -> str:
        """What ``--help`` shows for the flag's value."""
        return flag.upper().replace("-", "_")

    def from_text(self, text: str) -> Any:
        """A value from one flag argument or environment variable."""
        raise NotImplementedError

    def from_items(self, items: Sequence[str]) -> Any:
        """A value from the texts of a repeated flag, or of a comma-separated variable."""
        raise NotImplementedError

    def from_toml(self, value: object) -> Any:
        """A value from what ``tomllib`` read."""
        raise NotImplementedError

    def from_flag(self, raw: Any) -> Any:
        """A value from what argparse stored: a bool, a list of texts, or a text."""
        if self.boolean:
            return bool(raw)
        if self.repeatable:
            return self.from_items(list(raw))
        return self.from_text(str(raw))

    def from_env(self, text: str) -> Any:
        """A value from an environment variable."""
        if self.repeatable:
            return self.from_items([item.strip() for item in text.split(",") if item.strip()])
        return self.from_text(text.strip())


def _expected(what: str, value: object) -> ValueError:
    return ValueError(f"expected {what}, got {value!r}")


class Str(Kind):
    """Any text."""

    def from_text(self, text: str) -> str:
        return text

    def from_toml(self, value: object) -> str:
        if not isinstance(value, str):
            raise _expected("a string", value)
        return value


class Int(Kind):
    """An integer."""

    def from_text(self, text: str) -> int:
        try:
            return int(text)
        except ValueError:
            raise _expected("an integer", text) from None

    def from_toml(self, value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _expected("an integer", value)
        return value


class Float(Kind):
    """A number; an integer is taken as one."""

    def from_text(self, text: str) -> float:
        try:
            return float(text)
        except ValueError:
            raise _expected("a number", text) from None

    def from_toml(self, value: object) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _expected("a number", value)
        return float(value)


class Bool(Kind):
    """On or off: ``--x/--no-x``; ``true``/``false`` (or 1/0, yes/no, on/off) in the environment."""

    boolean = True

    def from_text(self, text: str) -> bool:
        word = text.lower()
        if word in TRUE_WORDS:
            return True
        if word in FALSE_WORDS:
            return False
        raise _expected("true or false", text)

    def from_toml(self, value: object) -> bool:
        if not isinstance(value, bool):
            raise _expected("true or false", value)
        return value


class Choice(Kind):
    """One of a few words (a ``Literal`` of strings)."""

    def __init__(self, choices: Sequence[str]) -> None:
        self.choices = tuple(choices)

    def metavar(self, flag: str) -> str:
        return "{" + ",".join(self.choices) + "}"

    def _check(self, value: object) -> str:
        if not isinstance(value, str) or value not in self.choices:
            raise _expected(f"one of {', '.join(self.choices)}", value)
        return value

    def from_text(self, text: str) -> str:
        return self._check(text)

    def from_toml(self, value: object) -> str:
        return self._check(value)


class Optional(Kind):
    """A value of ``inner``'s kind, or unset (``None``, the default)."""

    def __init__(self, inner: Kind) -> None:
        self.inner = inner

    def metavar(self, flag: str) -> str:
        return self.inner.metavar(flag)

    def from_text(self, text: str) -> Any:
        return self.inner.from_text(text)

    def from_toml(self, value: object) -> Any:
        return self.inner.from_toml(value)


def toml_strings(value: object) -> list[str]:
    """A TOML list of strings, as is.

    Raises:
        ValueError: it is something else.
    """
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise _expected("a list of strings", value)
    return value


class Strings(Kind):
    """Several texts, given one per flag; a tuple or a frozenset of ``str``."""

    repeatable = True

    def __init__(self, container: Callable[[Sequence[str]], object] = tuple) -> None:
        self.container = container

    def from_items(self, items: Sequence[str]) -> object:
        return self.container(items)

    def from_toml(self, value: object) -> object:
        return self.container(toml_strings(value))


class Pairs(Kind):
    """A ``Mapping[str, int]``, given as ``NAME=INT`` once per entry.

    Args:
        form: how an entry looks, for ``--help`` and messages.
    """

    repeatable = True

    def __init__(self, form: str = "NAME=INT") -> None:
        self.form = form

    def metavar(self, flag: str) -> str:
        return self.form

    def from_items(self, items: Sequence[str]) -> dict[str, int]:
        table: dict[str, int] = {}
        for item in items:
            name, sep, number = item.partition("=")
            try:
                if not sep or not name:
                    raise ValueError
                table[name] = int(number)
            except ValueError:
                raise _expected(self.form, item) from None
        return table

    def from_toml(self, value: object) -> dict[str, int]:
        return self.from_items(toml_strings(value))


def kind_for(annotation: Any) -> Kind:
    """The kind of a field's type.

    Raises:
        TypeError: no kind reads that type (give the field a ``Special`` kind).
    """
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    simple: dict[Any, Kind] = {bool: Bool(), int: Int(), float: Float(), str: Str()}
    if annotation in simple:
        return simple[annotation]
    if origin is Literal and all(isinstance(a, str) for a in args):
        return Choice(args)
    if origin in (types.UnionType, typing.Union) and len(args) == 2 and type(None) in args:
        inner = args[0] if args[1] is type(None) else args[1]
        return Optional(kind_for(inner))
    if origin is tuple and args == (str, ...):
        return Strings(tuple)
    if origin is frozenset and args == (str,):
        return Strings(frozenset)
    if origin in (Mapping, dict) and args == (str, int):
        return Pairs()
    raise TypeError(f"no setting kind reads {annotation!r}: give the field a Special")
