"""How offloop logs: one handler on the root logger, text or JSON lines, repeats rate-limited.

:func:`configure_logging` turns a :class:`LogConfig` into the process's logging: one handler
on the root logger writing to stderr, in the text format offloop has always used
(:data:`LOG_FORMAT`) or as one JSON object per line (:class:`JsonFormatter`). Calling it again
replaces that handler, so it is idempotent; handlers that others installed are left alone.

Repeats. A failing backend makes every request log the same warning: 153,000 lines in 40 s
with no backend up. :class:`RepeatFilter` lets a record through at most once per
``repeat_window`` seconds per *kind* (logger, level, message as rendered, exception types);
the next one through after the window says how many were held back ("... (and 1,523 more like
it in the last 10 s)"). The rendered message, not the template: ``"%s failed: %s"`` about
``Shop.place`` and about ``Shop.stock`` are two lines to see, not one. Which levels it limits,
and why:

- ``DEBUG`` passes: asking for DEBUG is asking for every line, and it is off by default.
- ``INFO``, ``WARNING`` and ``ERROR`` are limited. Errors too: a backend that is down makes
  errors exactly as repetitive as warnings, and a flood of them costs as much (the loop's time,
  the disk, whatever ships logs) and buries the other lines. Nothing is hidden but the
  repetition: every kind still shows once per window, with its count.
- ``CRITICAL`` passes: rare by nature, and the process is usually about to stop.
- The access log (:data:`ACCESS_LOGGER`) passes: one line per request is its contract.

Counts still held back when the handler is closed (at exit, or when it is replaced) are written
then, one line per kind.

Child processes. :func:`child_logging` sets up a child (spawned, forked or forkserver) from the
same picklable :class:`LogConfig`, so its lines have the parent's format plus the child's name;
:func:`run_child` is a process target that does that, then runs the real target, and logs an
exception that escapes it instead of letting ``multiprocessing`` print a bare traceback. Both
:func:`configure_logging` and :func:`child_logging` route uncaught exceptions (main thread and
other threads) through the log, so that tracebacks carry the prefix and a JSON log stays JSON.

This module imports nothing of offloop, so that any layer may use it.
"""

from __future__ import annotations

import collections
import contextlib
import datetime
import json
import logging
import math
import multiprocessing
import sys
import threading
import time
import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, TextIO

from offloop.context import REQUEST_ID

__all__ = [
    "ACCESS_LOGGER",
    "CHILD_LOG_FORMAT",
    "LOG_FORMAT",
    "LOG_FORMATS",
    "LOG_LEVELS",
    "MAX_TEMPLATES",
    "JsonFormatter",
    "LogConfig",
    "RepeatFilter",
    "TextFormatter",
    "build_handler",
    "child_logging",
    "configure_logging",
    "installed_config",
    "log_access",
    "run_child",
]

#: How a line reads: time, level, logger and process (the pid tells a worker's children apart).
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s"

#: The same in a child process, with the child's name in parentheses (``{child}``).
CHILD_LOG_FORMAT = "%(asctime)s %(levelname)s ({child}) %(name)s[%(process)d]: %(message)s"

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LOG_FORMATS = ("text", "json")

#: The logger of the access log: one INFO record per HTTP request (see :func:`log_access`).
ACCESS_LOGGER = "offloop.access"

#: Kinds of record the repeat filter remembers, least recently seen forgotten first. A kind is
#: a rendered message (its template and arguments), so a line that names a method, a backend
#: or a peer makes one kind of each; a busy process repeats a few hundred of them at a time,
#: and 1,024 holds those. Messages that differ every time (a count, a port) make every record
#: a kind of its own: then the cap bounds the table at 1,024 entries whatever the traffic, and
#: the least recently seen kinds are forgotten (with their counts) first.
MAX_TEMPLATES = 1024

#: The lowest and highest levels the repeat filter limits (the module's docstring says why).
LIMITED_LEVELS = (logging.INFO, logging.ERROR)

#: The level that turns a logger off.
_OFF = logging.CRITICAL + 1

#: Where uncaught exceptions are logged.
_UNCAUGHT_LOGGER = "offloop.uncaught"

_access = logging.getLogger(ACCESS_LOGGER)


@dataclass(frozen=True)
class LogConfig:
    """How the process logs; picklable, so a child process can be given it.

    Attributes:
        level: the lowest level logged, one of ``DEBUG``, ``INFO``, ``WARNING``, ``ERROR``
            and ``CRITICAL``, in any case.
        format: ``text``, one line per record (time, level, logger[pid]: message, then
            ``request_id=...`` for a line about a request), or
            ``json``, one JSON object per line (time, level, logger, process, message, and
            exception, request_id and the like when present).
        repeat_window: seconds: the same message (logger, level, text with its arguments) is
            logged at most once per window, and the next one after the window says how many
            were held back; DEBUG, CRITICAL and the access log are never held back; 0 turns
            this off.
        access_log: log one line per HTTP request (method, path, status, duration) at INFO,
            whatever the level.
    """

    level: str = "INFO"
    format: Literal["text", "json"] = "text"
    repeat_window: float = 10.0
    access_log: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.level, str) or self.level.upper() not in LOG_LEVELS:
            raise ValueError(f"level must be one of {', '.join(LOG_LEVELS)}, not {self.level!r}")
        object.__setattr__(self, "level", self.level.upper())
        if self.format not in LOG_FORMATS:
            raise ValueError(f"format must be one of {', '.join(LOG_FORMATS)}, not {self.format!r}")
        window = self.repeat_window
        if isinstance(window, bool) or not isinstance(window, int | float):
            raise ValueError(f"repeat_window must be a number of seconds, not {window!r}")
        if not math.isfinite(window) or window < 0:
            raise ValueError(f"repeat_window must be >= 0 seconds (0: off), not {window!r}")
        if not isinstance(self.access_log, bool):
            raise ValueError(f"access_log must be true or false, not {self.access_log!r}")


# -- the repeat filter --------------------------------------------------------------------------

_Key = tuple[str, int, str, type[BaseException] | None, tuple[type[BaseException], ...]]


class _Window:
    """One kind's current window: when it opened, how many records it has held back."""

    __slots__ = ("held", "start")

    def __init__(self, start: float) -> None:
        self.start = start
        self.held = 0


class RepeatFilter(logging.Filter):
    """Let each kind of record through at most once per window; count the rest.

    A kind is the logger's name, the level, the message as rendered (``record.getMessage()``:
    the template with its arguments filled in) and the types of the exceptions the record
    carries: its ``exc_info``'s and those among its arguments. The rendered message, so that
    one template about two methods (the gateway's ``log.warning("%s%s", prefix, exc)`` for
    ``Shop.place`` and for ``Shop.stock``) makes two kinds: neither hides the other. The
    exception types, so that two failures whose text happens to match stay apart.
    The first record of a kind opens
    a window and passes; the others inside the window are held back and counted; the first one
    after it passes, opens the next window, and carries the count as ``record.suppressed``
    (and the seconds they span as ``record.suppressed_seconds``), which
    :class:`TextFormatter` and :class:`JsonFormatter` show.

    Only INFO to ERROR are limited (see the module's docstring); records of
    :data:`ACCESS_LOGGER` always pass. At most ``max_templates`` kinds are remembered (least
    recently seen forgotten first, with their counts: :data:`MAX_TEMPLATES` by default).
    Thread-safe: one lock, held for a dictionary look-up.

    Args:
        window: seconds per window; must be > 0 (no filter at all is what 0 means).
        max_templates: kinds remembered.
        clock: a monotonic clock, in seconds (tests give a fake one).
    """

    def __init__(
        self,
        window: float,
        *,
        max_templates: int = MAX_TEMPLATES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        if not window > 0:
            raise ValueError(f"window must be > 0 seconds, not {window!r}")
        if max_templates < 1:
            raise ValueError(f"max_templates must be >= 1, not {max_templates!r}")
        self._window = window
        self._max = max_templates
        self._clock = clock
        self._lock = threading.Lock()
        self._kinds: collections.OrderedDict[_Key, _Window] = collections.OrderedDict()

    def __len__(self) -> int:
        """Kinds remembered."""
        return len(self._kinds)

    def filter(self, record: logging.LogRecord) -> bool:
        level = record.levelno
        if not LIMITED_LEVELS[0] <= level <= LIMITED_LEVELS[1] or _is_access(record.name):
            return True
        try:
            msg = record.getMessage()
        except Exception:  # arguments that do not fit the template: logging reports it later
            msg = record.msg if isinstance(record.msg, str) else str(record.msg)
        error = record.exc_info[0] if record.exc_info else None
        args = record.args
        among = tuple(type(a) for a in args if isinstance(a, BaseException)) if args else ()
        key = (record.name, level, msg, error, among)
        now = self._clock()
        with self._lock:
            kind = self._kinds.get(key)
            if kind is None:
                self._kinds[key] = _Window(now)
                if len(self._kinds) > self._max:
                    self._kinds.popitem(last=False)
                return True
            self._kinds.move_to_end(key)
            if now - kind.start < self._window:
                kind.held += 1
                return False
            held, since = kind.held, kind.start
            kind.start, kind.held = now, 0
        if held:
            record.suppressed = held
            record.suppressed_seconds = now - since
        return True

    def drain(self) -> list[logging.LogRecord]:
        """Records saying what is held back now, one per kind (its rendered message, the
        count as ``suppressed``); the counts start again from 0."""
        now = self._clock()
        records = []
        with self._lock:
            for (name, level, msg, _, _), kind in self._kinds.items():
                if kind.held:
                    record = logging.makeLogRecord(
                        {"name": name, "levelno": level, "levelname": logging.getLevelName(level)}
                    )
                    record.msg = msg
                    record.suppressed = kind.held
                    record.suppressed_seconds = now - kind.start
                    records.append(record)
                    kind.held = 0
        return records


def _is_access(name: str) -> bool:
    return name == ACCESS_LOGGER or name.startswith(ACCESS_LOGGER + ".")


def _held_back(record: logging.LogRecord) -> str:
    """`` (and 1,523 more like it in the last 10 s)``, or nothing."""
    count = getattr(record, "suppressed", 0)
    if not count:
        return ""
    seconds = float(getattr(record, "suppressed_seconds", 0.0))
    span = f"{seconds:,.0f}" if seconds >= 10 else f"{seconds:.1f}"
    return f" (and {count:,} more like it in the last {span} s)"


# -- formats ------------------------------------------------------------------------------------


class TextFormatter(logging.Formatter):
    """:data:`LOG_FORMAT` (:data:`CHILD_LOG_FORMAT` in a child), and the count of records
    held back, if any, at the end of the first line.

    Args:
        child: the child process's name, shown in parentheses; ``None`` in the main process.
    """

    def __init__(self, child: str | None = None) -> None:
        if child is None:
            fmt = LOG_FORMAT
        else:
            fmt = CHILD_LOG_FORMAT.format(child=child.replace("%", "%%"))
        super().__init__(fmt)

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        request_id = getattr(record, "request_id", None)
        if request_id is not None and record.name != ACCESS_LOGGER:  # that one says it already
            line += f" request_id={request_id}"
        return line + _held_back(record)


def _stamp_request_id(record: logging.LogRecord) -> bool:
    """Give ``record`` the id of the request being served (:data:`offloop.context.REQUEST_ID`)
    as its ``request_id``, where it has none; :class:`TextFormatter` ends the line with it
    and :class:`JsonFormatter` makes it a field. A filter, so that the id is read in the
    thread and task that logged, even if the line is written later."""
    if not hasattr(record, "request_id"):
        request_id = REQUEST_ID.get()
        if request_id is not None:
            record.request_id = request_id
    return True


#: The attributes every record has; any other is an ``extra`` key.
_RECORD_ATTRIBUTES = frozenset(
    {
        *logging.makeLogRecord({}).__dict__,
        "message",
        "asctime",
        "taskName",
        "suppressed",
        "suppressed_seconds",
    }
)


class JsonFormatter(logging.Formatter):
    """One JSON object per line (newlines inside values are escaped), ASCII only.

    Fields, in order:

    - ``time``: ISO 8601, UTC, milliseconds (``2025-01-31T12:00:00.123Z``).
    - ``level``: ``INFO``...; ``logger``: the logger's name; ``process``: the pid.
    - ``child``: the child process's name (in a child only).
    - ``message``: the message, its arguments filled in.
    - ``suppressed`` and ``suppressed_seconds``: records of this kind held back, and the seconds
      they span (only when some were; see :class:`RepeatFilter`).
    - ``exception``: the formatted traceback, when the record has one; ``stack``: the stack,
      when it was asked for.
    - then every ``extra`` key whose value JSON can encode (``request_id``, and the access
      log's ``method``, ``path``, ``status``, ``duration_ms``); one that names a field above,
      or whose value JSON cannot encode, is left out.

    Args:
        child: the child process's name; ``None`` in the main process.
    """

    def __init__(self, child: str | None = None) -> None:
        super().__init__()
        self._child = child

    def format(self, record: logging.LogRecord) -> str:
        moment = datetime.datetime.fromtimestamp(record.created, tz=datetime.UTC)
        entry: dict[str, Any] = {
            "time": moment.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "process": record.process,
        }
        if self._child is not None:
            entry["child"] = self._child
        entry["message"] = record.getMessage()
        count = getattr(record, "suppressed", 0)
        if count:
            entry["suppressed"] = count
            entry["suppressed_seconds"] = round(
                float(getattr(record, "suppressed_seconds", 0.0)), 3
            )
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        for key, value in record.__dict__.items():
            if key in _RECORD_ATTRIBUTES or key in entry or key.startswith("_"):
                continue
            try:
                json.dumps(value, allow_nan=False)
            except (TypeError, ValueError):  # not JSON: left out rather than lose the line
                continue
            entry[key] = value
        return json.dumps(entry, allow_nan=False)


# -- the handler --------------------------------------------------------------------------------


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]
    """The handler :func:`configure_logging` installs: it knows its config, and writes the
    counts still held back when it is closed."""

    def __init__(self, config: LogConfig, stream: TextIO, repeats: RepeatFilter | None) -> None:
        super().__init__(stream)
        self.config = config
        self.repeats = repeats
        self.addFilter(_stamp_request_id)
        if repeats is not None:
            self.addFilter(repeats)

    def close(self) -> None:
        if self.repeats is not None:
            with self.lock or contextlib.nullcontext():
                for record in self.repeats.drain():
                    self.emit(record)
        super().close()


def build_handler(
    config: LogConfig,
    *,
    stream: TextIO | None = None,
    child: str | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> logging.Handler:
    """The handler :func:`configure_logging` installs, without installing it.

    Args:
        config: the format and the repeat window (the level is the root logger's business).
        stream: where lines go (default: ``sys.stderr`` at the time of the call).
        child: the child process's name, for :func:`child_logging`.
        clock: the repeat filter's clock.
    """
    repeats = RepeatFilter(config.repeat_window, clock=clock) if config.repeat_window else None
    handler = _Handler(config, sys.stderr if stream is None else stream, repeats)
    formatter = JsonFormatter(child) if config.format == "json" else TextFormatter(child)
    handler.setFormatter(formatter)
    return handler


def _install(handler: logging.Handler, config: LogConfig, *, inherited: bool) -> None:
    root = logging.getLogger()
    for old in list(root.handlers):
        if isinstance(old, _Handler):
            root.removeHandler(old)
            if inherited:
                # A forked child's copy of its parent's: its counts are not ours to write,
                # and its filter's lock may have been held by a parent thread at the fork,
                # so the filter is dropped without being touched.
                old.repeats = None
            else:
                old.close()
    root.addHandler(handler)
    root.setLevel(config.level)
    _access.setLevel(logging.INFO if config.access_log else _OFF)
    if sys.excepthook in (sys.__excepthook__, _excepthook):
        sys.excepthook = _excepthook
    if threading.excepthook in (threading.__excepthook__, _thread_excepthook):
        threading.excepthook = _thread_excepthook


def configure_logging(config: LogConfig, *, stream: TextIO | None = None) -> None:
    """Set up this process's logging: one handler on the root logger.

    Replaces the handler an earlier call installed (closing it, which writes its held-back
    counts), so calling it twice leaves one; handlers that others installed stay. Sets the
    root logger's level, turns the access logger on or off, and routes uncaught exceptions
    (``sys.excepthook``, ``threading.excepthook``, unless someone else replaced them) through
    the log.

    Args:
        config: the level, format, repeat window and access log.
        stream: where lines go (default: ``sys.stderr``).
    """
    _install(build_handler(config, stream=stream), config, inherited=False)


def child_logging(config: LogConfig, name: str | None = None) -> None:
    """Set up logging in a child process, as its parent's with the child's name added.

    For any start method: a spawned or forkserver child has no handlers, a forked one has its
    parent's, which are replaced (without writing the parent's held-back counts twice).

    Args:
        config: the parent's config (a :class:`LogConfig` pickles).
        name: the child's name in each line (default: ``multiprocessing``'s name of the
            current process).
    """
    child = multiprocessing.current_process().name if name is None else name
    _install(build_handler(config, child=child), config, inherited=True)


def installed_config() -> LogConfig | None:
    """The config :func:`configure_logging` or :func:`child_logging` installed in this
    process, to hand to a child; ``None`` if neither was called."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, _Handler):
            return handler.config
    return None


def run_child(
    config: LogConfig, name: str | None, target: Callable[..., object], *args: Any
) -> None:
    """A process target: :func:`child_logging`, then ``target(*args)``.

    An exception that escapes ``target`` is logged (CRITICAL, with its traceback, so with the
    child's prefix) and the child exits with status 1, instead of ``multiprocessing`` printing
    a bare traceback. ``SystemExit`` and ``KeyboardInterrupt`` go through unchanged.

    Usage: ``context.Process(target=run_child, args=(config, "offloop-worker", main, sock))``.
    """
    child_logging(config, name)
    try:
        target(*args)
    except Exception:  # the child's last act: say why, with the prefix, then exit
        logging.getLogger(_UNCAUGHT_LOGGER).critical(
            "%s exited on an uncaught exception",
            getattr(target, "__qualname__", target),
            exc_info=True,
        )
        sys.exit(1)


def _excepthook(
    kind: type[BaseException], value: BaseException, tb: types.TracebackType | None
) -> None:
    if issubclass(kind, KeyboardInterrupt):
        sys.__excepthook__(kind, value, tb)
        return
    logging.getLogger(_UNCAUGHT_LOGGER).critical("uncaught exception", exc_info=(kind, value, tb))


def _thread_excepthook(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:  # what threading itself ignores
        return
    name = args.thread.name if args.thread is not None else "a thread"
    logging.getLogger(_UNCAUGHT_LOGGER).error(
        "uncaught exception in %s",
        name,
        exc_info=(args.exc_type, args.exc_value or args.exc_type(), args.exc_traceback),
    )


# -- the access log -----------------------------------------------------------------------------


def log_access(
    method: str,
    path: str,
    status: int,
    duration_ms: float,
    *,
    request_id: str | None = None,
    caller: str | None = None,
) -> None:
    """Log one HTTP request to :data:`ACCESS_LOGGER`, if the access log is on.

    One INFO record, never rate-limited: ``POST /rpc/TextLab/parse 200 12.3 ms`` (then
    ``request_id=...`` when there is one) in text, and in JSON the fields ``method``, ``path``,
    ``status``, ``duration_ms`` (rounded to microseconds) and ``request_id`` (when there is
    one). Characters that are not printable in the method and path are escaped (``\\n``), so a
    request cannot forge a log line. Costs one level check when the access log is off.

    Args:
        method: the request's method.
        path: the request's path (and query, as the gateway sees fit).
        status: the response's status.
        duration_ms: from the request's first byte to the response's last, in milliseconds.
        request_id: the request's id, when the gateway has one.
        caller: who made the request (``key:billing``, ``jwt:alice``, ``address:10.0.0.7``),
            when known; then ``caller=...`` ends the text line, and JSON has ``caller``.
    """
    if not _access.isEnabledFor(logging.INFO):
        return
    method, path = _printable(method), _printable(path)
    extra: dict[str, object] = {
        "method": method,
        "path": path,
        "status": status,
        "duration_ms": round(duration_ms, 3),
    }
    fmt = "%s %s %d %.1f ms"
    args: list[object] = [method, path, status, duration_ms]
    if request_id is not None:
        extra["request_id"] = request_id = _printable(request_id)
        fmt += " request_id=%s"
        args.append(request_id)
    if caller is not None:
        extra["caller"] = caller = _printable(caller)
        fmt += " caller=%s"
        args.append(caller)
    _access.info(fmt, *args, extra=extra)


def _printable(text: str) -> str:
    if text.isprintable():
        return text
    return text.encode("unicode_escape").decode("ascii")
