"""offloop.logs: the repeat filter, the text and JSON formats, the handler, child processes.

The repeat filter runs on a fake clock; nothing here sleeps. Tests that install the handler on
the root logger put logging back as it was afterwards.
"""

from __future__ import annotations

import datetime
import io
import json
import logging
import multiprocessing
import operator
import os
import pickle
import re
import sys
import threading
from collections.abc import Iterator

import pytest

from offloop.logs import (
    ACCESS_LOGGER,
    MAX_TEMPLATES,
    LogConfig,
    RepeatFilter,
    build_handler,
    child_logging,
    configure_logging,
    installed_config,
    log_access,
    run_child,
)

#: A text line: time, level, logger[pid]: message.
TEXT_LINE = re.compile(
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (?P<level>[A-Z]+) (?P<logger>[\w.]+)"
    r"\[(?P<pid>\d+)\]: (?P<message>.*)$"
)


class FakeClock:
    """A monotonic clock that moves only when told."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def restored_logging() -> Iterator[None]:
    """Whatever a test does to the root logger, the access logger and the exception hooks
    is undone."""
    root = logging.getLogger()
    access = logging.getLogger(ACCESS_LOGGER)
    saved = (list(root.handlers), root.level, access.level, sys.excepthook, threading.excepthook)
    yield
    for handler in list(root.handlers):
        if handler not in saved[0]:
            root.removeHandler(handler)
    root.setLevel(saved[1])
    access.setLevel(saved[2])
    sys.excepthook, threading.excepthook = saved[3], saved[4]


class Captured:
    """A logger of its own whose records go to one handler of ``build_handler``."""

    def __init__(self, config: LogConfig, clock: FakeClock, name: str = "offloop.test") -> None:
        self.stream = io.StringIO()
        self.handler = build_handler(config, stream=self.stream, clock=clock)
        self.logger = logging.getLogger(name)
        self.logger.handlers = [self.handler]
        self.logger.propagate = False
        self.logger.setLevel(logging.DEBUG)

    def lines(self) -> list[str]:
        return self.stream.getvalue().splitlines()

    def close(self) -> None:
        self.logger.handlers = []
        self.logger.propagate = True
        self.logger.setLevel(logging.NOTSET)


@pytest.fixture
def captured(clock: FakeClock) -> Iterator[Captured]:
    capture = Captured(LogConfig(), clock)
    yield capture
    capture.close()


def record(
    msg: str = "backend %s is down",
    *args: object,
    name: str = "offloop.test",
    level: int = logging.WARNING,
) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, msg, args or ("x",), None)


# -- LogConfig --------------------------------------------------------------------------------


def test_config_defaults_and_normalised_level() -> None:
    config = LogConfig(level="debug")
    assert (config.level, config.format, config.repeat_window, config.access_log) == (
        "DEBUG",
        "text",
        10.0,
        False,
    )
    assert pickle.loads(pickle.dumps(config)) == config


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"level": "loud"}, "level must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL"),
        ({"level": 10}, "level must be one of"),
        ({"format": "xml"}, "format must be one of text, json"),
        ({"repeat_window": -1.0}, "repeat_window must be >= 0 seconds"),
        ({"repeat_window": float("nan")}, "repeat_window must be >= 0 seconds"),
        ({"repeat_window": True}, "repeat_window must be a number"),
        ({"access_log": "yes"}, "access_log must be true or false"),
    ],
)
def test_config_refuses_bad_values(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        LogConfig(**fields)  # type: ignore[arg-type]


# -- the repeat filter ----------------------------------------------------------------------------


def test_a_burst_from_four_threads_is_one_line_then_one_count_after_the_window(
    captured: Captured, clock: FakeClock
) -> None:
    start = threading.Barrier(4)

    def burst() -> None:
        start.wait()
        for _ in range(2_500):
            captured.logger.warning("backend %s is down", "a")

    threads = [threading.Thread(target=burst) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(captured.lines()) == 1
    assert TEXT_LINE.match(captured.lines()[0])

    clock.now += 10.0
    captured.logger.warning("backend %s is down", "a")
    lines = captured.lines()
    assert len(lines) == 2
    expected = "backend a is down (and 9,999 more like it in the last 10 s)"
    assert lines[1].endswith(expected), lines[1]

    clock.now += 1.0  # a new window: held back again, nothing to count yet
    captured.logger.warning("backend %s is down", "a")
    assert len(captured.lines()) == 2


def test_inside_the_window_records_are_held_back_and_counted(clock: FakeClock) -> None:
    repeats = RepeatFilter(10.0, clock=clock)
    assert repeats.filter(record())
    clock.now += 9.999
    assert not repeats.filter(record())
    clock.now += 0.001
    passed = record()
    assert repeats.filter(passed)
    held = (getattr(passed, "suppressed", None), getattr(passed, "suppressed_seconds", None))
    assert held == (1, pytest.approx(10.0))
    clock.now += 10.0
    quiet = record()
    assert repeats.filter(quiet)
    assert not hasattr(quiet, "suppressed")  # nothing was held back in that window


@pytest.mark.parametrize(
    "other",
    [
        record("backend %s is slow"),
        record(level=logging.ERROR),
        record(level=logging.INFO),
        record(name="offloop.elsewhere"),
    ],
    ids=["template", "level", "level INFO", "logger"],
)
def test_kinds_are_independent(other: logging.LogRecord, clock: FakeClock) -> None:
    repeats = RepeatFilter(10.0, clock=clock)
    assert repeats.filter(record())
    assert repeats.filter(other)
    assert not repeats.filter(record())
    assert not repeats.filter(record(other.msg, name=other.name, level=other.levelno))


def test_the_rendered_message_decides_not_the_template(clock: FakeClock) -> None:
    repeats = RepeatFilter(10.0, clock=clock)
    assert repeats.filter(record("backend %s is down", "a"))
    assert repeats.filter(record("backend %s is down", "b"))  # another message: shown
    assert not repeats.filter(record("backend %s is down", "a"))
    assert not repeats.filter(record("backend %s is down", "b"))
    assert not repeats.filter(record("backend a is down"))  # the same text, however built


def test_two_messages_of_one_template_both_appear(captured: Captured, clock: FakeClock) -> None:
    """One method's failures do not hide another's for the window (the gateway logs both
    with one template)."""
    for _ in range(3):
        captured.logger.warning("%s%s", "Shop.place: ", ConnectionRefusedError("no backend"))
        captured.logger.warning("%s%s", "Shop.stock: ", ConnectionRefusedError("no backend"))
    lines = captured.lines()
    assert len(lines) == 2, lines
    assert lines[0].endswith("Shop.place: no backend"), lines
    assert lines[1].endswith("Shop.stock: no backend"), lines
    clock.now += 10.0
    captured.logger.warning("%s%s", "Shop.stock: ", ConnectionRefusedError("no backend"))
    assert captured.lines()[2].endswith(
        "Shop.stock: no backend (and 2 more like it in the last 10 s)"
    )


def test_arguments_that_do_not_fit_the_template_do_not_break_the_filter(
    clock: FakeClock,
) -> None:
    repeats = RepeatFilter(10.0, clock=clock)
    assert repeats.filter(record("backend %d is down", "not a number"))
    assert not repeats.filter(record("backend %d is down", "not a number"))


def test_exception_types_are_kinds_of_their_own(clock: FakeClock) -> None:
    repeats = RepeatFilter(10.0, clock=clock)

    def failed(exc: BaseException) -> logging.LogRecord:
        made = record("call failed")
        made.exc_info = (type(exc), exc, None)
        return made

    assert repeats.filter(failed(ConnectionRefusedError()))
    assert repeats.filter(failed(TimeoutError()))
    assert not repeats.filter(failed(ConnectionRefusedError()))


def test_exceptions_among_the_arguments_are_kinds_of_their_own(clock: FakeClock) -> None:
    """The gateway logs every 5xx as ``log.warning("%s%s", prefix, exc)``."""
    repeats = RepeatFilter(10.0, clock=clock)
    assert repeats.filter(record("%s%s", "A.ping: ", ConnectionRefusedError("failed")))
    assert repeats.filter(record("%s%s", "A.ping: ", TimeoutError("failed")))  # same text
    assert not repeats.filter(record("%s%s", "A.ping: ", ConnectionRefusedError("failed")))


@pytest.mark.parametrize(
    "passing",
    [
        record(level=logging.DEBUG),
        record(level=logging.CRITICAL),
        record("%s %s %d %.1f ms", "GET", "/", 200, 1.0, name=ACCESS_LOGGER, level=logging.INFO),
    ],
    ids=["debug", "critical", "access log"],
)
def test_debug_critical_and_the_access_log_are_never_held_back(
    passing: logging.LogRecord, clock: FakeClock
) -> None:
    repeats = RepeatFilter(10.0, clock=clock)
    for _ in range(100):
        assert repeats.filter(passing)
    assert len(repeats) == 0


def test_memory_is_bounded_under_100000_distinct_templates(clock: FakeClock) -> None:
    repeats = RepeatFilter(10.0, clock=clock)
    for i in range(100_000):
        assert repeats.filter(record(f"template {i}"))
        assert len(repeats) <= MAX_TEMPLATES
    assert len(repeats) == MAX_TEMPLATES
    assert not repeats.filter(record("template 99999"))  # recent: remembered
    assert repeats.filter(record("template 0"))  # long forgotten: a new kind


def test_a_kind_seen_often_is_not_forgotten(clock: FakeClock) -> None:
    repeats = RepeatFilter(10.0, max_templates=4, clock=clock)
    assert repeats.filter(record("hot"))
    for i in range(20):
        assert repeats.filter(record(f"cold {i}"))
        assert not repeats.filter(record("hot"))  # seen again: moves to the recent end


def test_counts_held_back_are_written_when_the_handler_closes(
    captured: Captured, clock: FakeClock
) -> None:
    for _ in range(5):
        captured.logger.error("backend %s is down", "a")
    clock.now += 3.0
    captured.handler.close()
    lines = captured.lines()
    assert len(lines) == 2
    assert lines[1].endswith("backend a is down (and 4 more like it in the last 3.0 s)")
    assert " ERROR offloop.test[" in lines[1]


def test_a_zero_window_turns_the_filter_off(clock: FakeClock) -> None:
    capture = Captured(LogConfig(repeat_window=0), clock)
    try:
        for _ in range(50):
            capture.logger.warning("same")
        assert len(capture.lines()) == 50
    finally:
        capture.close()


# -- formats -------------------------------------------------------------------------------------


def test_text_lines_keep_the_old_format(captured: Captured) -> None:
    captured.logger.info("hello %s", "there")
    match = TEXT_LINE.match(captured.lines()[0])
    assert match is not None
    assert match.group("level", "logger", "pid", "message") == (
        "INFO",
        "offloop.test",
        str(os.getpid()),
        "hello there",
    )


def json_capture(clock: FakeClock) -> Captured:
    return Captured(LogConfig(format="json"), clock)


def test_json_lines_parse_and_carry_the_fields(clock: FakeClock) -> None:
    capture = json_capture(clock)
    try:
        capture.logger.warning(
            "two\nlines %s",
            "here",
            extra={"request_id": "r-1", "opaque": object(), "nan": float("nan")},
        )
        capture.logger.info("second")
        lines = capture.lines()
        assert len(lines) == 2
        entry = json.loads(lines[0])
        assert list(entry)[:5] == ["time", "level", "logger", "process", "message"]
        assert entry["level"] == "WARNING"
        assert entry["logger"] == "offloop.test"
        assert entry["process"] == os.getpid()
        assert entry["message"] == "two\nlines here"
        assert entry["request_id"] == "r-1"
        assert "opaque" not in entry and "nan" not in entry  # not JSON: left out
        moment = datetime.datetime.fromisoformat(entry["time"])
        assert entry["time"].endswith("Z") and moment.utcoffset() == datetime.timedelta(0)
        assert abs(moment - datetime.datetime.now(datetime.UTC)) < datetime.timedelta(minutes=1)
        assert "exception" not in entry and "child" not in entry
    finally:
        capture.close()


def test_json_lines_carry_the_exception(clock: FakeClock) -> None:
    capture = json_capture(clock)
    try:
        try:
            1 / 0  # noqa: B018
        except ZeroDivisionError:
            capture.logger.exception("call %s failed", "parse")
        (line,) = capture.lines()
        entry = json.loads(line)
        assert entry["level"] == "ERROR"
        assert entry["message"] == "call parse failed"
        assert entry["exception"].startswith("Traceback (most recent call last):")
        assert entry["exception"].rstrip().endswith("ZeroDivisionError: division by zero")
    finally:
        capture.close()


def test_json_lines_carry_the_count(clock: FakeClock) -> None:
    capture = json_capture(clock)
    try:
        for _ in range(3):
            capture.logger.warning("down")
        clock.now += 12.0
        capture.logger.warning("down")
        entry = json.loads(capture.lines()[1])
        assert (entry["message"], entry["suppressed"], entry["suppressed_seconds"]) == (
            "down",
            2,
            12.0,
        )
    finally:
        capture.close()


# -- the handler on the root logger ------------------------------------------------------------


@pytest.mark.usefixtures("restored_logging")
def test_configure_logging_is_idempotent() -> None:
    first, second = io.StringIO(), io.StringIO()
    configure_logging(LogConfig(level="warning"), stream=first)
    configure_logging(LogConfig(level="debug", format="json"), stream=second)
    root = logging.getLogger()
    ours = [h for h in root.handlers if type(h).__name__ == "_Handler"]
    assert len(ours) == 1
    assert root.level == logging.DEBUG
    assert installed_config() == LogConfig(level="DEBUG", format="json")
    logging.getLogger("offloop.test.root").debug("once")
    assert first.getvalue() == ""
    assert json.loads(second.getvalue())["message"] == "once"


@pytest.mark.usefixtures("restored_logging")
def test_the_access_log_is_off_unless_asked_for() -> None:
    stream = io.StringIO()
    configure_logging(LogConfig(level="WARNING"), stream=stream)
    log_access("GET", "/", 200, 1.0)
    assert stream.getvalue() == ""
    configure_logging(LogConfig(level="WARNING", access_log=True), stream=stream)
    for _ in range(3):  # whatever the level, and never held back
        log_access("POST", "/rpc/TextLab/parse", 200, 12.345)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3
    match = TEXT_LINE.match(lines[0])
    assert match is not None
    assert match["logger"] == ACCESS_LOGGER
    assert match["message"] == "POST /rpc/TextLab/parse 200 12.3 ms"


@pytest.mark.usefixtures("restored_logging")
def test_access_log_fields_in_json_and_escaped_paths() -> None:
    stream = io.StringIO()
    configure_logging(LogConfig(format="json", access_log=True), stream=stream)
    log_access("GET", "/x\nFAKE 200", 404, 0.5, request_id="r-9")
    (line,) = stream.getvalue().splitlines()
    entry = json.loads(line)
    assert entry["message"] == "GET /x\\nFAKE 200 404 0.5 ms request_id=r-9"
    assert {k: entry[k] for k in ("method", "path", "status", "duration_ms", "request_id")} == {
        "method": "GET",
        "path": "/x\\nFAKE 200",
        "status": 404,
        "duration_ms": 0.5,
        "request_id": "r-9",
    }


# -- child processes ---------------------------------------------------------------------------


def run_spawned(config: LogConfig, target: object, *args: object) -> int:
    """Run ``run_child(config, "test-child", target, *args)`` in a spawned process."""
    context = multiprocessing.get_context("spawn")
    process = context.Process(target=run_child, args=(config, "test-child", target, *args))
    process.start()
    process.join(60)
    assert process.exitcode is not None, "the child did not finish"
    return process.exitcode


def test_a_spawned_child_logs_with_its_name(capfd: pytest.CaptureFixture[str]) -> None:
    logger = logging.getLogger("offloop.test.child")
    assert run_spawned(LogConfig(), logger.warning, "hello from %s", "the child") == 0
    lines = capfd.readouterr().err.splitlines()
    assert len(lines) == 1, lines
    assert re.match(
        r"^\S+ \S+ WARNING \(test-child\) offloop\.test\.child\[\d+\]: hello from the child$",
        lines[0],
    ), lines[0]


def test_a_spawned_child_logs_json_with_its_name(capfd: pytest.CaptureFixture[str]) -> None:
    logger = logging.getLogger("offloop.test.child")
    assert run_spawned(LogConfig(format="json"), logger.info, "ready") == 0
    (line,) = capfd.readouterr().err.splitlines()
    entry = json.loads(line)
    assert (entry["child"], entry["message"], entry["level"]) == ("test-child", "ready", "INFO")
    assert entry["process"] != os.getpid()


def test_an_exception_escaping_a_child_is_logged_with_its_name(
    capfd: pytest.CaptureFixture[str],
) -> None:
    assert run_spawned(LogConfig(), operator.truediv, 1, 0) == 1
    lines = capfd.readouterr().err.splitlines()
    assert re.match(r"^\S+ \S+ CRITICAL \(test-child\) offloop\.uncaught\[\d+\]: ", lines[0])
    assert "truediv exited on an uncaught exception" in lines[0]
    assert lines[-1] == "ZeroDivisionError: division by zero"
    assert not any(line.startswith("Process ") for line in lines)  # multiprocessing's own


@pytest.mark.usefixtures("restored_logging")
def test_child_logging_in_a_forked_copy_replaces_the_parents_handler() -> None:
    """What a forked child does (done here, in-process): the inherited handler goes without
    writing the parent's held-back counts."""
    parent = io.StringIO()
    configure_logging(LogConfig(), stream=parent)
    logger = logging.getLogger("offloop.test.fork")
    for _ in range(3):
        logger.warning("held")
    child_logging(LogConfig(), name="forked")
    assert parent.getvalue().count("held") == 1  # no "(and 2 more ...)" from the child
    assert installed_config() == LogConfig()


@pytest.mark.usefixtures("restored_logging")
def test_a_really_forked_child_logs_with_its_name(capfd: pytest.CaptureFixture[str]) -> None:
    if "fork" not in multiprocessing.get_all_start_methods():
        pytest.skip("no fork here")
    configure_logging(LogConfig())
    logger = logging.getLogger("offloop.test.fork")
    for _ in range(3):
        logger.warning("held")
    context = multiprocessing.get_context("fork")
    process = context.Process(target=run_child, args=(LogConfig(), "forked", logger.warning, "hi"))
    process.start()
    process.join(60)
    assert process.exitcode == 0
    lines = capfd.readouterr().err.splitlines()
    child = [line for line in lines if "(forked)" in line]
    assert len(child) == 1 and child[0].endswith(f"offloop.test.fork[{process.pid}]: hi")
    assert not any("more like it" in line for line in lines)  # the parent's counts stay its own
