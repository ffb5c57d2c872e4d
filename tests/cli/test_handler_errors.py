"""``offloop worker`` as a new user runs it (issue 12, items 4, 8 and 9): from the directory of
their handler, without ``PYTHONPATH``.

- The handler module is found in the current directory (or ``--app-dir``), by the worker and
  by the children of its process pool.
- A handler that cannot be loaded costs one line, ``offloop: cannot load handler ...``, and
  status 2; the traceback only with ``--log-level debug``.
- A handler's log lines in a process-pool child come out in the parent's format (JSON here).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import thriftpy2
from thriftpy2.rpc import make_client
from thriftpy2.transport import TFramedTransportFactory
from waiting import wait_until

from offloop.idl import load_idl

ECHO_IDL = """\
exception Nope {
  1: string why,
}

service Echo {
  string echo(1: string text) throws (1: Nope nope),
}
"""

HANDLER = """\
import logging

import offloop

log = logging.getLogger("echo.handler")
echo_thrift = offloop.load_idl("echo.thrift")


class Handler:
    def echo(self, text):
        log.warning("echo got %s", text)
        if text == "nope":
            raise echo_thrift.Nope(why="said nope")
        return text.upper()
"""

#: Seconds a worker subprocess may take to listen (imports, the fork server, its children).
START_TIMEOUT = 60.0


def _env() -> dict[str, str]:
    """The environment of a user's shell: no PYTHONPATH, no OFFLOOP_ settings."""
    return {
        k: v for k, v in os.environ.items() if not k.startswith("OFFLOOP_") and k != "PYTHONPATH"
    }


def _worker(*flags: str, before: tuple[str, ...] = ()) -> list[str]:
    """``offloop [before] worker --idl echo.thrift --service Echo --workers 1 [flags]``."""
    return [
        sys.executable,
        "-m",
        "offloop.cli",
        *before,
        "worker",
        "--idl",
        "echo.thrift",
        "--service",
        "Echo",
        "--workers",
        "1",
        *flags,
    ]


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A new user's project: ``echo.thrift`` and ``echo_service.py`` side by side."""
    (tmp_path / "echo.thrift").write_text(ECHO_IDL)
    (tmp_path / "echo_service.py").write_text(HANDLER)
    return tmp_path


class Running:
    """A worker subprocess listening on a port it picked, its stderr in a file."""

    def __init__(self, cwd: Path, log: Path, *flags: str, before: tuple[str, ...] = ()) -> None:
        self.log = log
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                _worker(*flags, "--port", "0", before=before),
                cwd=cwd,
                env=_env() | {"PYTHONUNBUFFERED": "1"},
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    @property
    def output(self) -> str:
        return self.log.read_text()

    def port(self) -> int:
        """The port the worker says it serves on (``serving Echo on 127.0.0.1:PORT``)."""
        found: list[int] = []

        def listening() -> bool:
            assert self.proc.poll() is None, self.output
            match = re.search(r"serving Echo on 127\.0\.0\.1:(\d+)", self.output)
            if match:
                found.append(int(match.group(1)))
            return bool(found)

        wait_until(listening, timeout=START_TIMEOUT)
        return found[0]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@pytest.fixture
def run(tmp_path: Path) -> Iterator[list[Running]]:
    started: list[Running] = []
    yield started
    for worker in started:
        worker.stop()


def _echo_client(idl: Path, port: int) -> object:
    module = load_idl(idl)
    return make_client(
        module.Echo,
        "127.0.0.1",
        port,
        trans_factory=TFramedTransportFactory(),
        timeout=20_000,
    )


@pytest.mark.parametrize("pool", ["thread", "process"])
def test_the_handler_is_found_in_the_current_directory(
    project: Path, run: list[Running], pool: str
) -> None:
    worker = Running(
        project, project / "out.log", "--handler", "echo_service:Handler", "--pool", pool
    )
    run.append(worker)
    client = _echo_client(project / "echo.thrift", worker.port())
    try:
        assert client.echo("hi") == "HI"  # type: ignore[attr-defined]
        with pytest.raises(thriftpy2.thrift.TException) as info:
            client.echo("nope")  # type: ignore[attr-defined]
        assert type(info.value).__name__ == "Nope" and info.value.why == "said nope"  # type: ignore[attr-defined]
    finally:
        client.close()  # type: ignore[attr-defined]


@pytest.mark.parametrize("batching", ["--batching", "--no-batching"])
def test_app_dir_says_where_the_handler_is(
    project: Path, run: list[Running], batching: str
) -> None:
    """With ``--no-batching`` the worker's main process never imports the handler: the
    process pool's children find it in the app directory by themselves."""
    elsewhere = project / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "echo.thrift").write_text(ECHO_IDL)
    code = project / "code"
    code.mkdir()
    (project / "echo_service.py").rename(code / "far_service.py")
    worker = Running(
        elsewhere,
        project / "out.log",
        "--handler",
        "far_service:Handler",
        "--app-dir",
        str(code),
        "--pool",
        "process",
        batching,
    )
    run.append(worker)
    client = _echo_client(elsewhere / "echo.thrift", worker.port())
    try:
        assert client.echo("far") == "FAR"  # type: ignore[attr-defined]
    finally:
        client.close()  # type: ignore[attr-defined]


def test_a_process_pool_childs_log_lines_have_the_parents_format(
    project: Path, run: list[Running]
) -> None:
    worker = Running(
        project,
        project / "out.log",
        "--handler",
        "echo_service:Handler",
        "--pool",
        "process",
        before=("--log-format", "json"),
    )
    run.append(worker)
    client = _echo_client(project / "echo.thrift", worker.port())
    try:
        assert client.echo("logged") == "LOGGED"  # type: ignore[attr-defined]
    finally:
        client.close()  # type: ignore[attr-defined]
    wait_until(lambda: "echo got logged" in worker.output, timeout=30)
    worker.stop()
    lines = [line for line in worker.output.splitlines() if line.strip()]
    entries = [json.loads(line) for line in lines]  # every line is JSON, the child's too
    child = next(e for e in entries if e["message"] == "echo got logged")
    assert child["logger"] == "echo.handler" and child["level"] == "WARNING"
    assert child["child"] == "offloop-worker"
    assert child["process"] != worker.proc.pid


BROKEN = {
    "syntax error": (
        "class Handler:\n    def echo(self, text):\n        return (\n",
        "Handler",
        "offloop: cannot load handler 'broken:Handler': SyntaxError at broken.py:3: "
        "'(' was never closed",
    ),
    "import error": (
        "import not_installed_anywhere\n",
        "Handler",
        "offloop: cannot load handler 'broken:Handler': ModuleNotFoundError at broken.py:1: "
        "No module named 'not_installed_anywhere'",
    ),
    "missing attribute": (
        "class Handler:\n    pass\n",
        "Handlr",
        "offloop: cannot load handler 'broken:Handlr': module 'broken' has no attribute 'Handlr'",
    ),
    "init raises": (
        "class Handler:\n    def __init__(self):\n        raise OSError('no model file')\n",
        "Handler",
        "offloop: cannot load handler 'broken:Handler': OSError at broken.py:3 in __init__: "
        "no model file",
    ),
}


@pytest.mark.parametrize("pool", ["thread", "process"])
@pytest.mark.parametrize("case", list(BROKEN))
def test_a_handler_that_cannot_be_loaded_is_one_line_and_status_2(
    project: Path, case: str, pool: str
) -> None:
    source, attr, expected = BROKEN[case]
    (project / "broken.py").write_text(source)
    args = _worker("--handler", f"broken:{attr}", "--pool", pool, "--port", "0")
    result = subprocess.run(
        args, cwd=project, env=_env(), capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [expected], result.stderr
    assert result.stdout == ""


def test_the_traceback_is_there_with_log_level_debug(project: Path) -> None:
    (project / "broken.py").write_text(BROKEN["init raises"][0])
    args = _worker("--handler", "broken:Handler", "--pool", "thread", "--port", "0")
    result = subprocess.run(
        [*args, "--log-level", "debug"],
        cwd=project,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback (most recent call last)" in result.stderr
    assert "raise OSError('no model file')" in result.stderr
    assert result.stderr.splitlines()[-1] == BROKEN["init raises"][2]
