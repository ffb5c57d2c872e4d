"""The logging options of every command: precedence, errors, --help, and what ``main`` does
with them. Everything parses in-process; nothing is served (``main``'s serving step is
replaced). Every test starts with no ``OFFLOOP_*`` variable set."""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import offloop.cli
from offloop.cli import Invocation, main, parse
from offloop.demo.textlab import IDL_PATH
from offloop.logs import ACCESS_LOGGER, LogConfig, installed_config

GATEWAY = ["gateway", "--idl", str(IDL_PATH), "--backend", "127.0.0.1:9"]


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("OFFLOOP_"):
            monkeypatch.delenv(name)


@pytest.fixture
def restored_logging() -> Iterator[None]:
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


def toml_file(tmp_path: Path, text: str) -> str:
    path = tmp_path / "offloop.toml"
    path.write_text(text)
    return str(path)


def errors_of(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    """Run ``main(argv)``, expect status 2, a usage line and one error line; return that line."""
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2, lines
    assert lines[0].startswith("usage: offloop ")
    return lines[1]


# -- precedence ---------------------------------------------------------------------------


#: Per option: field, flag arguments for (before, after) the command, variable, TOML line, and
#: the values of default, file, env, flag before, flag after.
OPTIONS: list[tuple[str, tuple[list[str], list[str]], tuple[str, str], str, list[Any]]] = [
    (
        "format",
        (["--log-format", "json"], ["--log-format", "text"]),
        ("OFFLOOP_LOG_FORMAT", "text"),
        'log_format = "json"',
        ["text", "json", "text", "json", "text"],
    ),
    (
        "repeat_window",
        (["--log-repeat-window", "2.5"], ["--log-repeat-window", "0"]),
        ("OFFLOOP_LOG_REPEAT_WINDOW", "30"),
        "log_repeat_window = 60",
        [10.0, 60.0, 30.0, 2.5, 0.0],
    ),
    (
        "access_log",
        (["--no-access-log"], ["--access-log"]),
        ("OFFLOOP_ACCESS_LOG", "true"),
        "access_log = false",
        [False, False, True, False, True],
    ),
    (
        "level",
        (["--log-level", "debug"], ["--log-level", "error"]),
        ("OFFLOOP_LOG_LEVEL", "warning"),
        'log_level = "critical"',
        ["INFO", "CRITICAL", "WARNING", "DEBUG", "ERROR"],
    ),
]


@pytest.mark.parametrize(
    ("field", "flags", "env", "line", "expected"), OPTIONS, ids=[o[0] for o in OPTIONS]
)
def test_flag_after_then_before_then_environment_then_file_then_default(
    field: str,
    flags: tuple[list[str], list[str]],
    env: tuple[str, str],
    line: str,
    expected: list[Any],
    tmp_path: Path,
) -> None:
    path = toml_file(tmp_path, line + "\n")
    before, after = flags
    steps = [
        ([*GATEWAY], {}),
        ([*GATEWAY, "--config", path], {}),
        ([*GATEWAY, "--config", path], dict([env])),
        ([*before, *GATEWAY, "--config", path], dict([env])),
        ([*before, *GATEWAY, "--config", path, *after], dict([env])),
    ]
    got = [getattr(parse(argv, environ=environ).log, field) for argv, environ in steps]
    assert got == expected


def test_the_invocation_holds_a_log_config() -> None:
    invocation = parse(
        [*GATEWAY, "--log-level", "debug", "--log-format", "json", "--access-log"], environ={}
    )
    assert invocation.log == LogConfig(level="DEBUG", format="json", access_log=True)
    assert invocation.log_level == "DEBUG"
    assert Invocation("worker").log == LogConfig()


def test_every_command_takes_the_options() -> None:
    for argv in (
        ["up", "--log-format", "json"],
        ["--log-format", "json", "worker", "--idl", str(IDL_PATH), "--service", "TextLab",
         "--handler", "offloop.demo.textlab:Handler"],
    ):  # fmt: skip
        assert parse(argv, environ={}).log.format == "json"


# -- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--log-format", "xml"], "--log-format: expected one of text, json, got 'xml'"),
        (["--log-repeat-window", "soon"], "--log-repeat-window: expected a number, got 'soon'"),
        (["--log-repeat-window", "-1"],
         "--log-repeat-window: repeat_window must be >= 0 seconds (0: off), not -1.0"),
        (["--log-repeat-window", "inf"],
         "--log-repeat-window: repeat_window must be >= 0 seconds (0: off), not inf"),
        (["--log-level", "loud"],
         "--log-level: expected one of DEBUG, INFO, WARNING, ERROR, CRITICAL, got 'loud'"),
    ],
)  # fmt: skip
def test_bad_flags(argv: list[str], expected: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert errors_of(capsys, [*GATEWAY, *argv]) == f"offloop gateway: {expected}"


def test_a_bad_flag_before_the_command(capsys: pytest.CaptureFixture[str]) -> None:
    line = errors_of(capsys, ["--log-format", "xml", *GATEWAY])
    assert line == "offloop gateway: --log-format: expected one of text, json, got 'xml'"


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("OFFLOOP_LOG_FORMAT", "yaml", "expected one of text, json, got 'yaml'"),
        ("OFFLOOP_LOG_REPEAT_WINDOW", "-3", "repeat_window must be >= 0 seconds"),
        ("OFFLOOP_ACCESS_LOG", "maybe", "expected true or false, got 'maybe'"),
    ],
)
def test_bad_environment(
    name: str,
    value: str,
    expected: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(name, value)
    line = errors_of(capsys, GATEWAY)
    assert line.startswith(f"offloop gateway: environment {name}: {expected}"), line


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("log_format = 3\n", "{path} log_format: expected one of text, json, got 3"),
        ('log_repeat_window = "10"\n', "{path} log_repeat_window: expected a number, got '10'"),
        ("log_repeat_window = -1\n", "{path} log_repeat_window: repeat_window must be >= 0"),
        ('access_log = "yes"\n', "{path} access_log: expected true or false, got 'yes'"),
        ("log_colour = 1\n", "{path} log_colour: unknown key (known: worker, gateway, up, "
         "log_level, log_format, log_repeat_window, access_log)"),
    ],
)  # fmt: skip
def test_bad_config_files(
    text: str, expected: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = toml_file(tmp_path, text)
    line = errors_of(capsys, [*GATEWAY, "--config", path])
    assert line.startswith("offloop gateway: " + expected.format(path=path)), line


def test_a_bad_value_is_an_error_even_when_a_flag_overrides_it(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OFFLOOP_LOG_FORMAT", "yaml")
    line = errors_of(capsys, [*GATEWAY, "--log-format", "json"])
    assert line.startswith("offloop gateway: environment OFFLOOP_LOG_FORMAT: expected one of")


def test_an_empty_variable_counts_as_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OFFLOOP_LOG_REPEAT_WINDOW", "")
    assert parse(GATEWAY).log.repeat_window == 10.0


# -- help -----------------------------------------------------------------------------------


@pytest.mark.parametrize("argv", [["--help"], ["gateway", "--help"]])
def test_help_lists_the_options_and_their_variables(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        main(argv)
    out = capsys.readouterr().out
    for text in (
        "--log-format {text,json}",
        "--log-repeat-window SECONDS",
        "--access-log, --no-access-log",
        "OFFLOOP_LOG_FORMAT",
        "OFFLOOP_LOG_REPEAT_WINDOW",
        "OFFLOOP_ACCESS_LOG",
    ):
        assert text in out, text


# -- what main does with them -----------------------------------------------------------------


@pytest.mark.usefixtures("restored_logging")
def test_main_installs_the_log_config_before_it_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[LogConfig | None] = []

    def fake_run(invocation: Invocation, parser: object) -> int:
        seen.append(installed_config())
        return 0

    monkeypatch.setattr(offloop.cli, "_run", fake_run)
    status = main([*GATEWAY, "--log-format", "json", "--log-repeat-window", "5"])
    assert status == 0
    assert seen == [LogConfig(format="json", repeat_window=5.0)]
    assert logging.getLogger().level == logging.INFO


@pytest.mark.usefixtures("restored_logging")
def test_up_hands_the_log_config_to_the_demo(monkeypatch: pytest.MonkeyPatch) -> None:
    given: dict[str, Any] = {}

    def fake_run_demo(gateway: object, worker: object, **kwargs: Any) -> int:
        given.update(kwargs)
        return 0

    monkeypatch.setattr(offloop.cli, "run_demo", fake_run_demo)
    assert main(["up", "--log-format", "json", "--access-log"]) == 0
    assert given["log"] == LogConfig(format="json", access_log=True)
