"""The settings of each command: the config trees it reads, and the fields read by hand.

``worker`` reads a :class:`~offloop.worker.config.WorkerConfig`, ``gateway`` a
:class:`~offloop.gateway.config.GatewayConfig`, ``up`` a
:class:`~offloop.demo.up.DemoConfig` and the gateway's settings but those the demo sets
itself (``idl``, ``backends``, ``services``). Everything else about a setting (flag, variable,
TOML key, help, default) comes from the dataclasses (:mod:`offloop.cli.settings`).
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from offloop.cli.kinds import Bool, Choice, Float, Kind, Pairs, toml_strings
from offloop.cli.settings import (
    ENV_PREFIX,
    Schema,
    SettingsError,
    Special,
    Tree,
    attribute_docs,
    markdown_table,
    markdown_text,
    show_value,
)
from offloop.client.targets import Target
from offloop.demo.up import DemoConfig
from offloop.gateway.auth import key_line, new_key
from offloop.gateway.config import GatewayConfig, parse_backend
from offloop.logs import LOG_FORMATS, LOG_LEVELS, LogConfig
from offloop.worker.config import WorkerConfig

__all__ = [
    "COMMANDS",
    "GATEWAY",
    "LOG_OPTIONS",
    "UP",
    "WORKER",
    "Backends",
    "HandlerSpec",
    "LogLevel",
    "LogOption",
    "ServiceSpecs",
    "add_hash_key",
    "hash_key",
    "reference",
    "worker_config",
]


class Backends(Kind):
    """``GatewayConfig.backends``, given as ``[SERVICE=]TARGET`` once per target (no
    service: the target serves every service that has none of its own)."""

    repeatable = True

    def from_items(self, items: Sequence[str]) -> dict[str, tuple[Target, ...]]:
        table: dict[str, list[Target]] = {}
        for item in items:
            service, target = parse_backend(item)
            table.setdefault(service or "*", []).append(target)
        return {service: tuple(targets) for service, targets in table.items()}

    def from_toml(self, value: object) -> dict[str, tuple[Target, ...]]:
        return self.from_items(toml_strings(value))


class HandlerSpec(Kind):
    """``WorkerConfig.handler``: ``package.module:Name``, its form checked before anything
    is imported (whether it imports is the worker's start-up)."""

    FORM = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")

    def metavar(self, flag: str) -> str:
        return "MODULE:NAME"

    def from_text(self, text: str) -> str:
        if not self.FORM.match(text):
            raise ValueError(f"expected package.module:Name, got {text!r}")
        return text

    def from_toml(self, value: object) -> str:
        if not isinstance(value, str):
            raise ValueError(f"expected package.module:Name, got {value!r}")
        return self.from_text(value)


class ServiceSpecs(Kind):
    """``WorkerConfig.service`` and ``services``: ``NAME`` (served by ``--handler``) or
    ``NAME=package.module:Name``, once per service; in TOML a string, a list of such strings,
    or a table ``{NAME = "package.module:Name"}``. Read as (name, handler) pairs, the handler
    empty where none was given; :func:`worker_config` makes the config of them."""

    repeatable = True

    def metavar(self, flag: str) -> str:
        return "NAME[=MODULE:NAME]"

    def from_text(self, text: str) -> tuple[tuple[str, str], ...]:
        return self.from_items([text])

    def from_items(self, items: Sequence[str]) -> tuple[tuple[str, str], ...]:
        specs: dict[str, str] = {}
        for item in items:
            name, sep, handler = (part.strip() for part in item.partition("="))
            if not name.isidentifier() or (sep and not HandlerSpec.FORM.match(handler)):
                raise ValueError(f"expected NAME or NAME=package.module:Name, got {item!r}")
            if name in specs:
                raise ValueError(f"service {name} is given twice")
            specs[name] = handler
        return tuple(specs.items())

    def from_toml(self, value: object) -> tuple[tuple[str, str], ...]:
        if isinstance(value, str):
            return self.from_items([value])
        if isinstance(value, dict):
            if not all(isinstance(v, str) for v in value.values()):
                raise ValueError(f"expected a table of package.module:Name, got {value!r}")
            return self.from_items([f"{k}={v}" for k, v in value.items()])
        return self.from_items(toml_strings(value))


def worker_config(**settings: Any) -> WorkerConfig:
    """The :class:`WorkerConfig` of the worker's settings, whose ``service`` holds what
    :class:`ServiceSpecs` read: the first service becomes ``service`` (its handler, when
    given, ``handler``), the others ``services``. A service given without a handler is served
    by ``--handler``.

    Raises:
        SettingsError: a service has no handler and ``--handler`` is not given.
        ValueError: the config refused the values.
    """
    specs: tuple[tuple[str, str], ...] = settings.pop("service", ())
    handler: str = settings.pop("handler", "")
    if not specs:
        return WorkerConfig(service="", handler=handler, **settings)  # refused: no service
    if not handler and not all(spec for _, spec in specs):
        raise SettingsError("the following arguments are required: --handler")
    (first, first_handler), *others = specs
    return WorkerConfig(
        service=first,
        handler=first_handler or handler,
        services={name: spec or handler for name, spec in others},
        **settings,
    )


#: The gateway's fields whose flags are singular, or whose values are text of a given form.
GATEWAY_SPECIAL = {
    "backends": Special(
        Backends(),
        flag="backend",
        metavar="[SERVICE=]TARGET",
        help="where workers are: ``HOST:PORT`` (one worker), ``dns:///NAME:PORT`` (one per "
        "A/AAAA record, followed as DNS changes), ``dns://NAMESERVER:PORT/NAME:PORT`` (asking "
        "that DNS server) or ``dns+srv:///_thrift._tcp.NAME`` (one per SRV record); "
        "``SERVICE=TARGET`` serves one service, ``TARGET`` every service that has no target "
        "of its own; give several for several targets.",
    ),
    "services": Special(
        flag="service",
        metavar="SERVICE",
        help="a service of the IDL to expose; none given: every service of the IDL.",
    ),
    "idempotent": Special(
        metavar="SERVICE.METHOD",
        help="a method that may be retried after it was sent (``Service.method``).",
    ),
    "backend_multiplexed": Special(
        metavar="SERVICE",
        help="a service whose backends serve several services on one port (Apache's "
        "``TMultiplexedProtocol``): its calls are named ``Service:method``; ``*`` for every "
        "service; give it once per service.",
    ),
    "exception_status": Special(
        Pairs("TYPE=STATUS"),
        help="the HTTP status (4xx or 5xx) of a declared exception type; the others get 422.",
    ),
}

#: The gateway's fields that ``offloop up`` sets itself (the demo is plaintext on localhost:
#: no TLS, front or backend).
DEMO_FIXED = frozenset({"idl", "backends", "services", "tls", "backend_tls", "backend_multiplexed"})

WORKER = Schema(
    "worker",
    Tree(
        WorkerConfig,
        exclude=frozenset({"services"}),  # the --service flag gives them
        special={
            "service": Special(
                ServiceSpecs(),
                help="a service of the IDL to serve: ``NAME`` (its handler is ``handler``) or "
                "``NAME=package.module:Name``; give it once per service, to serve several on "
                "one port (see docs/worker.md, several services).",
            ),
            "handler": Special(HandlerSpec()),
            "app_dir": Special(metavar="DIR"),
        },
    ),
)
GATEWAY = Schema("gateway", Tree(GatewayConfig, special=GATEWAY_SPECIAL))
UP = Schema(
    "up",
    Tree(DemoConfig),
    Tree(
        GatewayConfig,
        exclude=DEMO_FIXED,
        special={k: v for k, v in GATEWAY_SPECIAL.items() if k not in DEMO_FIXED},
    ),
)

#: Each command's schema, by name, with its one-line help.
COMMANDS: dict[str, tuple[Schema, str]] = {
    "worker": (WORKER, "run a Thrift worker server"),
    "gateway": (GATEWAY, "run the HTTP/JSON gateway"),
    "up": (UP, "run the demo: a textlab worker and a gateway in front"),
}


class LogLevel(Kind):
    """``LogConfig.level``: a level's name, whatever its case."""

    def metavar(self, flag: str) -> str:
        return "LEVEL"

    def from_text(self, text: str) -> str:
        return self.from_toml(text)

    def from_toml(self, value: object) -> str:
        if not isinstance(value, str) or value.upper() not in LOG_LEVELS:
            raise ValueError(f"expected one of {', '.join(LOG_LEVELS)}, got {value!r}")
        return value.upper()


@dataclass(frozen=True)
class LogOption:
    """One field of :class:`~offloop.logs.LogConfig`, an option of every command (before or
    after it), read by hand: its TOML key sits at the top of the file, not in a command's table.

    Attributes:
        field: the ``LogConfig`` field.
        flag: the flag's name without ``--``; the environment variable is ``OFFLOOP_`` and
            the flag's name in upper snake case.
        key: the key at the top of the config file.
        kind: how its values are read.
        metavar: what ``--help`` shows for its value (``None``: the kind's).
    """

    field: str
    flag: str
    key: str
    kind: Kind
    metavar: str | None = None

    @property
    def option(self) -> str:
        """The flag, ``--log-level``."""
        return f"--{self.flag}"

    @property
    def shown(self) -> str:
        """What ``--help`` shows for its value."""
        return self.metavar or self.kind.metavar(self.flag)

    @property
    def env(self) -> str:
        """The environment variable, ``OFFLOOP_LOG_LEVEL``."""
        return ENV_PREFIX + self.flag.upper().replace("-", "_")

    @property
    def dest(self) -> str:
        """Where argparse stores the flag's value."""
        return f"log:{self.field}"

    @property
    def default(self) -> object:
        """``LogConfig``'s default."""
        return next(f.default for f in dataclasses.fields(LogConfig) if f.name == self.field)

    @property
    def doc(self) -> str:
        """Its help: the field's entry in ``LogConfig``'s docstring."""
        return attribute_docs(LogConfig)[self.field]


#: How the process logs (:class:`~offloop.logs.LogConfig`): options every command takes.
LOG_OPTIONS = (
    LogOption("level", "log-level", "log_level", LogLevel()),
    LogOption("format", "log-format", "log_format", Choice(LOG_FORMATS)),
    LogOption("repeat_window", "log-repeat-window", "log_repeat_window", Float(), "SECONDS"),
    LogOption("access_log", "access-log", "access_log", Bool()),
)


def _log_option_row(option: LogOption) -> tuple[str, str, str, str, str]:
    if option.kind.boolean:
        flag = f"`{option.option}`, `--no-{option.flag}`"
    else:
        flag = f"`{option.option} {option.shown}`"
    return (
        flag,
        f"`{option.env}`",
        f"`{option.key}` (top level)",
        f"`{show_value(option.default)}`",
        markdown_text(option.doc),
    )


#: The options every command takes: flag, variable, TOML key, default, meaning.
COMMON_OPTIONS = (
    (
        "`--config PATH`",
        "`OFFLOOP_CONFIG`",
        "—",
        "none",
        "the TOML file to read settings from",
    ),
    *(_log_option_row(option) for option in LOG_OPTIONS),
)


def reference() -> str:
    """The settings reference of ``docs/configuration.md``, in Markdown: the common options,
    then one table per command (``offloop config-reference`` prints it)."""
    rows = [
        "| Flag | Environment | TOML key | Default | Meaning |",
        "|---|---|---|---|---|",
        *("| " + " | ".join(row) + " |" for row in COMMON_OPTIONS),
    ]
    parts = ["### Every command\n", "\n".join(rows) + "\n"]
    for name, (schema, _) in COMMANDS.items():
        parts += [f"### `offloop {name}`\n", markdown_table(schema)]
    return "\n".join(parts)


# -- offloop hash-key -----------------------------------------------------------------------


def add_hash_key(sub: argparse._SubParsersAction[Any]) -> None:
    """Add the ``hash-key`` command to the ``offloop`` parser's commands."""
    command = sub.add_parser(
        "hash-key",
        help="hash an API key into a line of the --auth-api-keys file",
        description="Print the line of the API key file (--auth-api-keys) for a key: its "
        "name, the SHA-256 hash of the key, the methods it may call. The key is read from "
        "the first line of standard input, or made with --new and printed on standard "
        "error (once: only its hash is kept). See docs/security.md.",
    )
    command.add_argument("name", help="who holds the key: the identity of its calls")
    command.add_argument(
        "methods",
        nargs="*",
        metavar="METHOD",
        help="what the key may call: Service.method, Service.* or * (the default)",
    )
    command.add_argument(
        "--new", action="store_true", help="make a new random key (256 bits) instead"
    )


def hash_key(args: argparse.Namespace) -> int:
    """Run ``offloop hash-key``; returns the exit status (2 for a bad name, key or method)."""
    if args.new:
        key = new_key()
        sys.stderr.write(f"the new key of {args.name} (keep it secret; not shown again):\n")
        sys.stderr.write(key + "\n")
    else:
        key = sys.stdin.readline().strip()
    try:
        line = key_line(args.name, key, args.methods)
    except ValueError as exc:
        sys.stderr.write(f"offloop hash-key: {exc}\n")
        return 2
    sys.stdout.write(line + "\n")
    return 0
