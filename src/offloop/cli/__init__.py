"""The ``offloop`` command: flags, environment and a config file become config objects.

:func:`parse` turns a command line, ``OFFLOOP_*`` environment variables and a TOML file
(``--config``) into an :class:`Invocation` holding frozen config objects (see
:mod:`offloop.cli.settings` for the rules, ``docs/configuration.md`` for every setting);
:func:`main` hands them to :mod:`offloop.app` (or :mod:`offloop.demo.up`), which builds and
serves. Nothing is wired here.

Exit statuses: 0 after a clean stop; 2 for a configuration error (a usage line, then one line
naming the source and key of the bad value, or a service the IDL does not declare) or a
handler that cannot be loaded (one line,
``offloop: cannot load handler 'shop:Handler': SyntaxError at shop.py:3: invalid syntax``; its
traceback at DEBUG level); 1 when start-up failed (one log line says why: a
port in use, a handler that does not import, an IDL that does not load); 130 on Ctrl-C outside
the serving loop.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

from offloop import __version__
from offloop.app import build_gateway, run, serve_gateway, serve_worker
from offloop.app.worker import unknown_services
from offloop.cli.commands import (
    COMMANDS,
    LOG_OPTIONS,
    UP,
    LogOption,
    add_hash_key,
    hash_key,
    reference,
    worker_config,
)
from offloop.cli.settings import (
    ENV_PREFIX,
    SettingsError,
    Sources,
    load_file,
    plain_text,
    show_value,
)
from offloop.demo.up import DemoConfig, demo_gateway, demo_worker, run_demo
from offloop.errors import OffloopError
from offloop.gateway.config import GatewayConfig
from offloop.logs import LOG_FORMAT, LogConfig, configure_logging
from offloop.worker.config import WorkerConfig
from offloop.worker.handler_loading import HandlerError

__all__ = ["LOG_FORMAT", "Invocation", "build_parser", "main", "parse"]

log = logging.getLogger("offloop")

#: The environment variable of ``--config``.
CONFIG_ENV = ENV_PREFIX + "CONFIG"

#: The keys a config file may have at its top level besides the commands' tables.
TOP_KEYS = tuple(option.key for option in LOG_OPTIONS)


@dataclass(frozen=True)
class Invocation:
    """What a command line asks for, as config objects.

    Attributes:
        command: ``worker``, ``gateway``, ``up`` or ``config-reference``.
        log: how the process logs (level, format, repeat window, access log).
        worker: the worker's config (``worker``; ``up``: the demo worker's).
        gateway: the gateway's config (``gateway``; ``up``: the demo gateway's).
    """

    command: str
    log: LogConfig = field(default_factory=LogConfig)
    worker: WorkerConfig | None = None
    gateway: GatewayConfig | None = None

    @property
    def log_level(self) -> str:
        """The logging level's name (``INFO``): ``log.level``."""
        return self.log.level


class _Parser(argparse.ArgumentParser):
    """Errors as ``usage: ...`` and one ``offloop worker: message`` line, status 2."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: {message}\n")


def _add_common(parser: argparse.ArgumentParser) -> None:
    """``--config`` and the logging options, accepted before and after the command."""
    group = parser.add_argument_group("every command")
    group.add_argument(
        "--config",
        default=argparse.SUPPRESS,
        metavar="PATH",
        help=f"TOML file of settings, one table per command ([worker], [gateway], [up]); "
        f"environment {CONFIG_ENV}",
    )
    for option in LOG_OPTIONS:
        text = plain_text(option.doc).removesuffix(".")
        help_text = (
            f"{text} (default: {show_value(option.default)}; environment {option.env}, "
            f"or {option.key} at the top of the config file)"
        ).replace("%", "%%")
        if option.kind.boolean:
            group.add_argument(
                option.option,
                dest=option.dest,
                action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS,
                help=help_text,
            )
        else:
            group.add_argument(
                option.option,
                dest=option.dest,
                default=argparse.SUPPRESS,
                metavar=option.shown,
                help=help_text,
            )


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The ``offloop`` parser and its commands' parsers, by name.

    No flag has an argparse default: a flag not given is absent from the namespace, so that
    the environment and the file can fill it.
    """
    parser = _Parser(
        prog="offloop",
        description="HTTP/JSON gateway and Thrift worker pools that keep event loops free.",
        epilog="Every setting is a flag, an OFFLOOP_* environment variable and a key of the "
        "--config file; flags win over the environment, which wins over the file. "
        "Exit status: 0 after a clean stop, 1 if start-up failed, 2 for a configuration "
        "error or a handler that cannot be loaded, 130 on Ctrl-C.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _add_common(parser)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands: dict[str, argparse.ArgumentParser] = {}
    for name, (schema, summary) in COMMANDS.items():
        example = next(s for s in schema.settings if s.flag == "port")
        command = sub.add_parser(
            name,
            help=summary,
            description=summary[0].upper() + summary[1:] + ".",
            usage=schema.usage(),
            epilog=f"Every flag is also an environment variable, OFFLOOP_ and its name in "
            f"upper snake case ({example.option}: {example.env}; a repeated flag's values "
            f"comma-separated), and a key of the [{name}] table of the --config file, "
            f"sections as sub-tables ([{name}.listen] port = 8000). Flags win over the "
            f"environment, which wins over the file. See docs/configuration.md.",
        )
        _add_common(command)
        schema.add_arguments(command)
        commands[name] = command
    add_hash_key(sub)
    sub.add_parser(
        "config-reference",
        help="print the reference of every setting (Markdown)",
        description="Print the tables of docs/configuration.md: every setting of every "
        "command, with its flag, environment variable, TOML key and default.",
    )
    return parser, commands


def parse(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> Invocation:
    """Read a command line, the environment and the config file into config objects.

    Args:
        argv: the arguments (default: ``sys.argv[1:]``).
        environ: the environment (default: ``os.environ``).

    Raises:
        SystemExit: status 2 after a usage line and one line saying what is wrong; status 0
            after ``--help`` or ``--version``.
    """
    parser, commands = build_parser()
    return _parse(parser, commands, argv, os.environ if environ is None else environ)


def _parse(
    parser: argparse.ArgumentParser,
    commands: Mapping[str, argparse.ArgumentParser],
    argv: Sequence[str] | None,
    environ: Mapping[str, str],
) -> Invocation:
    namespace, unknown = parser.parse_known_args(argv)
    flags: dict[str, Any] = vars(namespace)
    name = flags.pop("command")
    if unknown:  # said by the command's parser, with its usage
        commands.get(name, parser).error(f"unrecognized arguments: {' '.join(unknown)}")
    if name not in commands:
        return Invocation(name)
    try:
        log_flags = {o.dest: flags.pop(o.dest) for o in LOG_OPTIONS if o.dest in flags}
        sources = _sources(flags, environ)
        logs = _log_config(log_flags, sources)
        schema = COMMANDS[name][0]
        values = schema.values(sources)
        if name == "worker":
            worker = schema.build(WorkerConfig, values, worker_config)
            return Invocation(name, logs, worker=worker)
        if name == "gateway":
            return Invocation(name, logs, gateway=schema.build(GatewayConfig, values))
        demo = UP.build(DemoConfig, values)
        gateway = UP.build(GatewayConfig, values, lambda **kw: demo_gateway(demo, **kw))
        return Invocation(
            name, logs, worker=demo_worker(demo, grace=gateway.grace), gateway=gateway
        )
    except SettingsError as exc:
        commands[name].error(str(exc))


def _sources(flags: dict[str, Any], environ: Mapping[str, str]) -> Sources:
    """The flags, the environment, and the config file that one of them names."""
    path = flags.pop("config", None)
    label = "--config"
    if path is None and environ.get(CONFIG_ENV):
        path, label = environ[CONFIG_ENV], f"environment {CONFIG_ENV}"
    if not path:
        return Sources(flags, environ)
    try:
        file = load_file(path)
    except SettingsError as exc:
        raise SettingsError(f"{label}: {exc}") from None
    known = (*COMMANDS, *TOP_KEYS)
    for key in file:
        if key not in known:
            raise SettingsError(f"{path} {key}: unknown key (known: {', '.join(known)})")
    return Sources(flags, environ, file, path)


def _log_config(flags: Mapping[str, Any], sources: Sources) -> LogConfig:
    """How the process logs: per option, flag, then environment, then file, then default;
    every value given checked, even one that a higher source overrides."""
    values = {}
    for option in LOG_OPTIONS:
        given = _log_values(option, flags, sources)
        if given:
            values[option.field] = given[0]
    return LogConfig(**values)


def _log_values(option: LogOption, flags: Mapping[str, Any], sources: Sources) -> list[Any]:
    """The option's value in each source that gives it, highest first, each checked by its
    kind and by ``LogConfig``."""
    found: list[Any] = []

    def read(label: str, convert: Callable[[], Any]) -> None:
        try:
            found.append(getattr(LogConfig(**{option.field: convert()}), option.field))
        except ValueError as exc:
            raise SettingsError(f"{label}: {exc}") from None

    if option.dest in flags:
        read(option.option, lambda: option.kind.from_flag(flags[option.dest]))
    text = sources.environ.get(option.env, "")
    if text:
        read(f"environment {option.env}", lambda: option.kind.from_env(text))
    if option.key in sources.file:
        value = sources.file[option.key]
        read(f"{sources.file_name} {option.key}", lambda: option.kind.from_toml(value))
    return found


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``offloop`` console script; returns the exit status.

    Raises:
        SystemExit: a configuration error (status 2), ``--help`` or ``--version`` (0).
    """
    parser, commands = build_parser()
    invocation = _parse(parser, commands, argv, os.environ)
    if invocation.command == "config-reference":
        sys.stdout.write(reference())
        return 0
    if invocation.command == "hash-key":
        return hash_key(parser.parse_args(argv))
    configure_logging(invocation.log)
    try:
        return _run(invocation, commands[invocation.command])
    except KeyboardInterrupt:  # Ctrl-C outside the serving loop (start-up, clean-up)
        return 130


def _run(invocation: Invocation, parser: argparse.ArgumentParser) -> int:
    try:
        if invocation.command == "worker":
            assert invocation.worker is not None
            unknown = unknown_services(invocation.worker)  # a typo: the user's, like a flag's
            if unknown is not None:
                parser.error(unknown)
            run(serve_worker(invocation.worker))
        elif invocation.command == "gateway":
            assert invocation.gateway is not None
            try:
                gateway = build_gateway(invocation.gateway)
            except (ValueError, OffloopError) as exc:  # the IDL or the backends: the user's
                parser.error(str(exc))
            run(serve_gateway(gateway))
        else:
            assert invocation.gateway is not None and invocation.worker is not None
            return run_demo(invocation.gateway, invocation.worker, log=invocation.log)
    except (OffloopError, ImportError, OSError) as exc:  # start-up failed: say why, once
        handler_error = _handler_error(exc)
        if handler_error is not None:  # the user's code: one line, like a setting's error
            log.debug("the handler's traceback", exc_info=exc)
            sys.stderr.write(f"offloop: {handler_error}\n")
            return 2
        log.error("%s failed to start: %s", invocation.command, exc)
        return 1
    return 0


def _handler_error(exc: BaseException) -> HandlerError | None:
    """The :class:`HandlerError` that ``exc`` is or was raised from (a process pool's
    children raise theirs in the parent as the cause of a ``WorkerStartError``), if any."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, HandlerError):
            return current
        seen.add(id(current))
        current = current.__cause__
    return None
