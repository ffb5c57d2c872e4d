"""Settings: flags, ``OFFLOOP_*`` variables and a TOML file, read into config dataclasses.

Nothing here knows a particular config: a frozen config dataclass is walked once, and every
leaf field becomes one :class:`Setting` (read by the :class:`~offloop.cli.kinds.Kind` of its
type); a field whose type is itself a dataclass is a section. From the settings come the
command's flags, the environment variables it reads, the TOML tables it accepts and the
reference tables of ``docs/configuration.md``. Help texts are the ``Attributes:`` entries of
the dataclasses' docstrings, defaults are the dataclasses' own.

Naming:

- flag: ``--`` + the ``prefix`` metadata of the enclosing section fields + the field's
  ``flag`` metadata, or else its name with ``_`` turned into ``-`` (``AdminConfig.port`` under
  ``metadata={"prefix": "admin-"}`` is ``--admin-port``; ``PoolConfig.kind`` with
  ``metadata={"flag": "pool"}`` is ``--pool``). A ``bool`` is ``--x/--no-x``; a tuple, a
  frozenset or a mapping is repeated.
- environment: ``OFFLOOP_`` + the flag's name in upper snake case (``OFFLOOP_ADMIN_PORT``);
  a repeated setting is comma-separated; an empty variable counts as unset.
- TOML: the table ``[command]`` holds the root's fields and one sub-table per section,
  ``[command.section]``, keyed by field names (``[worker.admin] port = 9100``). Unknown keys
  are errors.

Precedence, per setting: flag, then environment, then file, then the dataclass's default. Every
value given is checked, even one that a higher source overrides; every error is one line that
names its source and key (:class:`SettingsError`), including a dataclass's own ``ValueError``,
which is blamed on the values that cause it.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import inspect
import re
import tomllib
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from offloop.cli.kinds import Kind, kind_for

__all__ = [
    "ENV_PREFIX",
    "Kind",
    "Schema",
    "Setting",
    "SettingsError",
    "Sources",
    "Special",
    "Tree",
    "attribute_docs",
    "load_file",
    "markdown_table",
    "show_value",
]

T = TypeVar("T")

#: Every environment variable offloop reads starts with this.
ENV_PREFIX = "OFFLOOP_"

#: Flag names that the command line itself uses, so no setting may take them (the logging
#: options are ``offloop.cli.commands.LOG_OPTIONS``).
RESERVED_FLAGS = frozenset(
    {"help", "version", "config", "log-level", "log-format", "log-repeat-window", "access-log"}
)


class SettingsError(Exception):
    """A bad, unknown or missing setting; ``str(exc)`` is one line naming the source and key."""


# -- the walk -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Special:
    """A field read by hand: its own kind, flag name, metavar or help (``None``: the usual).

    Attributes:
        kind: how its values are read.
        flag: the flag's name without ``--`` (``backend`` for ``backends``).
        metavar: what ``--help`` shows for its value.
        help: what the setting means, when the docstring describes the field's value rather
            than the text a user gives.
    """

    kind: Kind | None = None
    flag: str | None = None
    metavar: str | None = None
    help: str | None = None


@dataclass(frozen=True)
class Tree:
    """One config dataclass tree that a command reads.

    Attributes:
        root: the root dataclass (``GatewayConfig``).
        exclude: root fields the command sets itself; they get no flag.
        require: fields the command needs although the dataclass has a default for them.
        special: dotted field path -> how that field is read, where its type alone does not say.
    """

    root: type[Any]
    exclude: frozenset[str] = frozenset()
    require: frozenset[str] = frozenset()
    special: Mapping[str, Special] = field(default_factory=dict)


@dataclass(frozen=True)
class Setting:
    """One leaf field of a config tree, and every name it goes by.

    Attributes:
        tree: the index of its tree in the :class:`Schema`.
        path: field names from the root (``("admin", "port")``).
        flag: the flag's name without ``--`` (``admin-port``).
        kind: how its values are read.
        default: the dataclass's default, ``dataclasses.MISSING`` when it has none.
        required: the command needs a value for it.
        doc: its help, the reST text of its docstring entry.
        metavar: what ``--help`` shows for its value.
    """

    tree: int
    path: tuple[str, ...]
    flag: str
    kind: Kind
    default: Any
    required: bool
    doc: str
    metavar: str

    @property
    def option(self) -> str:
        """The flag, ``--admin-port``."""
        return f"--{self.flag}"

    @property
    def env(self) -> str:
        """The environment variable, ``OFFLOOP_ADMIN_PORT``."""
        return ENV_PREFIX + self.flag.upper().replace("-", "_")

    @property
    def dest(self) -> str:
        """Where argparse stores the flag's value."""
        return f"setting:{self.tree}:{'.'.join(self.path)}"

    @property
    def key(self) -> str:
        """Its key in its TOML table (the field's name)."""
        return self.path[-1]


def attribute_docs(cls: type[Any]) -> dict[str, str]:
    """Field name -> text, from the ``Attributes:`` section of a Google-style docstring."""
    docs: dict[str, str] = {}
    lines = inspect.cleandoc(cls.__doc__ or "").splitlines()
    try:
        start = lines.index("Attributes:") + 1
    except ValueError:
        return docs
    entry = re.compile(r"^    (\w+)(?: \([^)]*\))?:\s*(.*)$")
    name: str | None = None
    for line in lines[start:]:
        if line and not line.startswith(" "):
            break  # the next section
        match = entry.match(line)
        if match:
            name = match[1]
            docs[name] = match[2].strip()
        elif name is not None and line.startswith("        "):
            docs[name] += " " + line.strip()
        elif not line.strip():
            name = None
    return docs


def _hints(cls: type[Any]) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _section_type(cls: type[Any], f: dataclasses.Field[Any]) -> type[Any] | None:
    hint = _hints(cls)[f.name]
    return hint if isinstance(hint, type) and dataclasses.is_dataclass(hint) else None


def _field_default(f: dataclasses.Field[Any]) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _fields(cls: type[Any], path: tuple[str, ...], tree: Tree) -> list[dataclasses.Field[Any]]:
    return [f for f in dataclasses.fields(cls) if path or f.name not in tree.exclude]


class Schema:
    """The settings of one command: its config trees, walked once.

    Every tree's fields share the command's flags and its TOML table ``[command]``, so their
    names must not clash.

    Args:
        command: the command's name (``gateway``): the top table of its TOML file and the
            ``prog`` of its messages.
        trees: the config trees it reads.

    Raises:
        TypeError: a field has no help text, or a type that no kind reads.
        ValueError: two settings have the same flag, or one takes a reserved name.
    """

    def __init__(self, command: str, *trees: Tree) -> None:
        self.command = command
        self.trees = trees
        self.settings: list[Setting] = []
        #: Section path -> its help (the parent's docstring entry), in walk order.
        self.sections: dict[tuple[str, ...], str] = {}
        #: TOML table path (relative to ``[command]``) -> key -> whether it is a sub-table.
        self.tables: dict[tuple[str, ...], dict[str, bool]] = {(): {}}
        for index, tree in enumerate(trees):
            self._walk(index, tree, tree.root, (), "", None)
        self._options = {(s.tree, s.path): s.option for s in self.settings}
        seen: dict[str, Setting] = {}
        for setting in self.settings:
            if setting.flag in RESERVED_FLAGS or setting.flag in seen:
                raise ValueError(f"{command}: two settings or a reserved name use {setting.option}")
            seen[setting.flag] = setting

    def _walk(
        self, index: int, tree: Tree, cls: type[Any], path: tuple[str, ...], prefix: str, base: Any
    ) -> None:
        docs = attribute_docs(cls)
        table = self.tables.setdefault(path, {})
        for f in _fields(cls, path, tree):
            here = (*path, f.name)
            if f.name not in docs:
                raise TypeError(f"{cls.__name__}.{f.name} has no entry under 'Attributes:'")
            default = _field_default(f) if base is None else getattr(base, f.name)
            section = _section_type(cls, f)
            if section is not None:
                if default is dataclasses.MISSING:
                    raise TypeError(f"section {cls.__name__}.{f.name} needs a default")
                table[f.name] = True
                self.sections[here] = docs[f.name]
                inner = prefix + f.metadata.get("prefix", "")
                self._walk(index, tree, section, here, inner, default)
                continue
            dotted = ".".join(here)
            special = tree.special.get(dotted, Special())
            kind = special.kind or kind_for(_hints(cls)[f.name])
            flag = special.flag or prefix + f.metadata.get("flag", f.name.replace("_", "-"))
            table[f.name] = False
            self.settings.append(
                Setting(
                    tree=index,
                    path=here,
                    flag=flag,
                    kind=kind,
                    default=default,
                    required=default is dataclasses.MISSING or dotted in tree.require,
                    doc=special.help or docs[f.name],
                    metavar=special.metavar or kind.metavar(flag),
                )
            )

    # -- argparse ---------------------------------------------------------------------------

    def usage(self) -> str:
        """A one-line usage: the required flags, then ``[options]``."""
        needed = " ".join(f"{s.option} {s.metavar}" for s in self.settings if s.required)
        return f"%(prog)s {needed} [options]".replace("  ", " ")

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Add one flag per setting, grouped by TOML table, with no argparse defaults (a flag
        that was not given is absent from the namespace)."""
        groups: dict[tuple[str, ...], Any] = {}
        for s in self.settings:
            where = s.path[:-1]
            if where not in groups:
                title = "[" + ".".join((self.command, *where)) + "]"
                description = plain_text(self.sections[where]) if where else None
                groups[where] = parser.add_argument_group(title, description)
            notes = ["required" if s.required else f"default: {show_value(s.default)}"]
            if s.kind.repeatable:
                notes.append("repeatable")
            text = plain_text(s.doc).removesuffix(".")
            help_text = f"{text} ({'; '.join(notes)})".replace("%", "%%")
            if s.kind.boolean:
                groups[where].add_argument(
                    s.option,
                    dest=s.dest,
                    action=argparse.BooleanOptionalAction,
                    default=argparse.SUPPRESS,
                    help=help_text,
                )
            else:
                groups[where].add_argument(
                    s.option,
                    dest=s.dest,
                    action="append" if s.kind.repeatable else "store",
                    default=argparse.SUPPRESS,
                    metavar=s.metavar,
                    help=help_text,
                )

    # -- reading ------------------------------------------------------------------------------

    def check_file(self, sources: Sources) -> None:
        """Check the command's table of the file: known keys, tables where tables belong.

        Raises:
            SettingsError: an unknown key, or a value where a table belongs.
        """
        table = sources.file.get(self.command)
        if table is not None:
            self._check_table(sources, (), table, self.command)

    def _check_table(
        self, sources: Sources, path: tuple[str, ...], value: object, where: str
    ) -> None:
        if not isinstance(value, dict):
            table = "[" + ".".join((self.command, *path)) + "]"
            raise SettingsError(
                f"{sources.file_name} {where}: expected a table ({table}), got {value!r}"
            )
        allowed = self.tables[path]
        name = "[" + ".".join((self.command, *path)) + "]"
        for key, item in value.items():
            if key not in allowed:
                raise SettingsError(
                    f"{sources.file_name} {name} {key}: unknown key "
                    f"(known: {', '.join(sorted(allowed))})"
                )
            if allowed[key]:
                self._check_table(sources, (*path, key), item, f"{name} {key}")

    def values(self, sources: Sources) -> dict[tuple[int, tuple[str, ...]], tuple[Any, str]]:
        """The value of every setting that was given, by (tree, path), with its source's label.

        Every value of every source is read and checked; the highest source wins.

        Raises:
            SettingsError: a bad value, an unknown key in the file, or a required setting
                that no source gives.
        """
        self.check_file(sources)
        found: dict[tuple[int, tuple[str, ...]], tuple[Any, str]] = {}
        missing: list[str] = []
        for s in self.settings:
            given = _given(self.command, s, sources)
            if given:
                found[(s.tree, s.path)] = given[0]
            elif s.required:
                missing.append(s.option)
        if missing:
            raise SettingsError(f"the following arguments are required: {', '.join(missing)}")
        return found

    def build(
        self,
        root: type[T],
        values: Mapping[tuple[int, tuple[str, ...]], tuple[Any, str]],
        factory: Callable[..., T] | None = None,
    ) -> T:
        """Build one tree's root from the values given, defaults filling the rest.

        A section none of whose fields was given is left to its default; one with given
        fields is ``dataclasses.replace`` of its default.

        Args:
            root: the tree's root dataclass.
            values: what :meth:`values` returned.
            factory: makes the root from keyword arguments (default: ``root`` itself).

        Raises:
            SettingsError: a dataclass refused the values (its ``ValueError``), blamed on the
                values that cause it.
        """
        index = next(i for i, t in enumerate(self.trees) if t.root is root)
        tree = self.trees[index]
        built = self._build(index, tree, root, (), None, values, factory or root)
        return typing.cast(T, built)

    def _build(
        self,
        index: int,
        tree: Tree,
        cls: type[Any],
        path: tuple[str, ...],
        base: Any,
        values: Mapping[tuple[int, tuple[str, ...]], tuple[Any, str]],
        make: Callable[..., Any],
    ) -> Any:
        kwargs: dict[str, Any] = {}
        labels: dict[str, str] = {}
        options: dict[str, str] = {}
        needed: set[str] = set()
        for f in _fields(cls, path, tree):
            here = (*path, f.name)
            section = _section_type(cls, f)
            if section is not None:
                inner = _field_default(f) if base is None else getattr(base, f.name)
                sub = self._build(
                    index, tree, section, here, inner, values, functools.partial(_replace, inner)
                )
                if sub is not None:
                    kwargs[f.name] = sub
            elif (index, here) in values:
                kwargs[f.name], labels[f.name] = values[(index, here)]
                options[f.name] = self._options[(index, here)]
                if base is None and _field_default(f) is dataclasses.MISSING:
                    needed.add(f.name)
        if base is not None and not kwargs:
            return None
        try:
            return make(**kwargs)
        except ValueError as exc:
            blamed = _culprits(make, kwargs, labels, options, needed, str(exc))
            where = ", ".join(blamed) + ": " if blamed else ""
            raise SettingsError(f"{where}{exc}") from None


def _replace(base: Any, **changes: Any) -> Any:
    return dataclasses.replace(base, **changes)


def _culprits(
    make: Callable[..., Any],
    kwargs: dict[str, Any],
    labels: dict[str, str],
    options: dict[str, str],
    needed: set[str],
    message: str,
) -> list[str]:
    """The labels of the values that make ``make`` raise ``message``.

    The given fields the message names, by field name or by flag (the config classes name
    what they check, so a rule between two fields names both); else the first given value
    that fails on its own; else every value given.
    """
    named = [
        labels[k]
        for k in labels
        if re.search(rf"\b{re.escape(k)}\b", message)
        or re.search(rf"{re.escape(options[k])}\b", message)
    ]
    if named:
        return named
    base = {k: v for k, v in kwargs.items() if k not in labels or k in needed}
    try:
        make(**base)
    except ValueError:
        return [labels[k] for k in labels if k in needed] or list(labels.values())
    for name in labels:
        if name in needed:
            continue
        try:
            make(**base, **{name: kwargs[name]})
        except ValueError:
            return [labels[name]]
    return list(labels.values())


# -- sources ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sources:
    """Where values come from.

    Attributes:
        flags: the parsed flags (``vars(namespace)``), holding only the flags given.
        environ: the environment.
        file: the parsed TOML file, empty when there is none.
        file_name: the file's name as given, for messages.
    """

    flags: Mapping[str, Any] = field(default_factory=dict)
    environ: Mapping[str, str] = field(default_factory=dict)
    file: Mapping[str, Any] = field(default_factory=dict)
    file_name: str = ""


def _given(command: str, s: Setting, sources: Sources) -> list[tuple[Any, str]]:
    """The setting's value in each source that gives it, highest first, each checked."""
    found: list[tuple[Any, str]] = []

    def read(label: str, convert: Callable[[], Any]) -> None:
        try:
            found.append((convert(), label))
        except ValueError as exc:
            raise SettingsError(f"{label}: {exc}") from None

    if s.dest in sources.flags:
        read(s.option, lambda: s.kind.from_flag(sources.flags[s.dest]))
    text = sources.environ.get(s.env, "")
    if text:
        read(f"environment {s.env}", lambda: s.kind.from_env(text))
    table: Any = sources.file.get(command, {})
    for name in s.path[:-1]:
        table = table.get(name, {})
    if s.key in table:
        where = ".".join((command, *s.path[:-1]))
        read(f"{sources.file_name} [{where}] {s.key}", lambda: s.kind.from_toml(table[s.key]))
    return found


def load_file(path: str) -> dict[str, Any]:
    """Parse a TOML config file.

    Raises:
        SettingsError: it cannot be read or is not valid TOML (one line).
    """
    try:
        with Path(path).open("rb") as file:
            return tomllib.load(file)
    except OSError as exc:
        raise SettingsError(f"{path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"{path}: {exc}") from None


# -- text -----------------------------------------------------------------------------------

_ROLE = re.compile(r":\w+:`~?([^`]+)`")
_LITERAL = re.compile(r"``([^`]+)``")


def _short_role(match: re.Match[str]) -> str:
    return match[1].rsplit(".", 1)[-1] if "~" in match[0] else match[1]


def plain_text(doc: str) -> str:
    """A docstring entry for a terminal: reST markup dropped."""
    return _LITERAL.sub(r"\1", _ROLE.sub(_short_role, doc))


def markdown_text(doc: str) -> str:
    """A docstring entry for a Markdown table cell."""
    text = _LITERAL.sub(r"`\1`", _ROLE.sub(lambda m: f"`{_short_role(m)}`", doc))
    return text.replace("|", "\\|")


def show_value(value: Any) -> str:
    """A default as ``--help`` and the docs show it."""
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, str):
        return value or '""'
    if isinstance(value, Mapping):
        return ", ".join(f"{k}={v}" for k, v in value.items()) or "none"
    if isinstance(value, tuple | frozenset | list):
        return ", ".join(sorted(str(v) for v in value)) or "none"
    return str(value)


def markdown_table(schema: Schema) -> str:
    """The reference table of a command: flag, environment variable, TOML key, default and
    meaning of every setting."""
    rows = [
        "| Flag | Environment | TOML key | Default | Meaning |",
        "|---|---|---|---|---|",
    ]
    for s in schema.settings:
        if s.kind.boolean:
            flag = f"`{s.option}`, `--no-{s.flag}`"
        elif s.metavar != s.flag.upper().replace("-", "_"):
            flag = f"`{s.option} {s.metavar}`"
        else:
            flag = f"`{s.option}`"
        if s.kind.repeatable:
            flag += " (repeatable)"
        where = ".".join((schema.command, *s.path[:-1]))
        default = "required" if s.required else f"`{show_value(s.default)}`"
        cells = [flag, f"`{s.env}`", f"`[{where}] {s.key}`", default, markdown_text(s.doc)]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"
