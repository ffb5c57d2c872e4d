"""``offloop worker`` as a real subprocess: signals, exit codes, flags, and nothing left behind.

Each worker is started with ``PYTHONPATH`` including ``tests/support`` (its children import
``faulty:Handler``), on free ports, and is always killed at the end of its test.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import (
    IDL,
    SUPPORT_DIR,
    RawClient,
    children_of,
    metric,
    nice_of,
    pid_alive,
    wait_until,
)

from offloop.cli import main, parse

#: Seconds a worker subprocess may take to start listening (imports, fork server, children).
START_TIMEOUT = 30.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class WorkerProcess:
    """An ``offloop worker`` subprocess whose output goes to a file."""

    def __init__(self, log_path: Path, pool: str, *extra: str) -> None:
        self.port = free_port()
        self.admin_port = free_port()
        self.log_path = log_path
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            [str(SUPPORT_DIR), *filter(None, [env.get("PYTHONPATH")])]
        )
        env["PYTHONUNBUFFERED"] = "1"
        cmd = [
            sys.executable,
            "-m",
            "offloop.cli",
            "worker",
            "--idl",
            IDL,
            "--service",
            "TextLab",
            "--handler",
            "faulty:Handler",
            "--pool",
            pool,
            "--workers",
            "2",
            "--port",
            str(self.port),
            "--admin-port",
            str(self.admin_port),
            *extra,
        ]
        with open(log_path, "wb") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)

    @property
    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_listening(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"worker exited with {self.proc.returncode}:\n{self.output}")
            try:
                RawClient(self.port, timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        pytest.fail(f"worker did not listen within {START_TIMEOUT} s:\n{self.output}")

    def descendants(self) -> list[int]:
        """Its children (fork server, resource tracker) and theirs (pool workers)."""
        found: list[int] = []
        todo = [self.proc.pid]
        while todo:
            kids = children_of(todo.pop())
            found += kids
            todo += kids
        return found

    def busy_workers(self) -> float | None:
        url = f"http://127.0.0.1:{self.admin_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as resp:
            return metric(resp.read().decode(), "offloop_worker_busy_workers")

    def wait_busy(self, n: int) -> None:
        """Wait until ``n`` calls are running (so a signal finds them in flight)."""
        wait_until(lambda: self.busy_workers() == n, timeout=10)

    def wait_for_log(self, text: str, timeout: float = 10) -> None:
        wait_until(lambda: text in self.output, timeout=timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[type[WorkerProcess]]:
    """Starts worker subprocesses (``spawn(pool, *flags)``); kills every one at the end, and
    checks that none of their processes outlive them."""
    started: list[WorkerProcess] = []
    family: set[int] = set()

    def start(pool: str, *extra: str) -> WorkerProcess:
        worker = WorkerProcess(tmp_path / f"worker{len(started)}.log", pool, *extra)
        started.append(worker)
        worker.wait_listening()
        family.update(worker.descendants())
        return worker

    yield start  # type: ignore[misc]
    for worker in started:
        if worker.proc.poll() is None:
            family.update(worker.descendants())
        worker.kill()
    wait_until(lambda: not [p for p in family if pid_alive(p)], timeout=10)


def test_sigterm_finishes_the_call_in_flight_and_exits_0(spawn: type[WorkerProcess]) -> None:
    # No drain delay: this is about the drain itself (tests/app/test_worker_drain.py: the delay).
    worker = spawn("process", "--grace", "5", "--nice", "4", "--drain-delay", "0")
    family = worker.descendants()
    assert len(family) >= 3  # fork server and resource tracker, and two workers below
    with RawClient(worker.port) as raw:
        # Along the way: a child's niceness, and a handler error logged with its traceback
        # (by the child, to the stderr it shares with the worker).
        assert int(raw.call("ping", "nice", seqid=1)) == min(19, nice_of(os.getpid()) + 4)
        raw.send("ping", 2, "raise")
        assert raw.recv().body.message == "internal error: ValueError: boom"
        raw.send("sleep", 3, 700)
        worker.wait_busy(1)
        sent_at = time.monotonic()
        worker.proc.send_signal(signal.SIGTERM)
        reply = raw.recv()
        assert (reply.seqid, reply.value()) == (3, 700.0)
        assert raw.closed_by_server()
    code = worker.proc.wait(10)
    took = time.monotonic() - sent_at
    assert code == 0, worker.output
    assert took < 5, f"exit took {took:.2f} s with a grace of 5 s"
    out = worker.output
    assert "SIGTERM received: shutting down" in out
    assert "draining 1 calls in flight" in out
    assert "worker stopped" in out
    assert "Traceback (most recent call last)" in out
    assert 'raise ValueError("boom")' in out
    wait_until(lambda: not [p for p in family if pid_alive(p)], timeout=5)


def test_sigterm_with_thread_pool(spawn: type[WorkerProcess]) -> None:
    worker = spawn("thread", "--grace", "5")
    with RawClient(worker.port) as raw:
        raw.send("ping", 1, "raise")
        assert raw.recv().body.message == "internal error: ValueError: boom"
        raw.send("sleep", 2, 500)
        worker.wait_busy(1)
        worker.proc.send_signal(signal.SIGTERM)
        assert raw.recv().value() == 500.0
    assert worker.proc.wait(10) == 0, worker.output
    assert "Traceback (most recent call last)" in worker.output


@pytest.mark.parametrize("pool", ["process", "thread"])
def test_second_sigint_exits_at_once(spawn: type[WorkerProcess], pool: str) -> None:
    worker = spawn(pool, "--grace", "30")
    family = worker.descendants()
    with RawClient(worker.port) as raw:
        raw.send("sleep", 1, 20_000)
        worker.wait_busy(1)
        worker.proc.send_signal(signal.SIGINT)
        worker.wait_for_log("SIGINT received: shutting down")
        sent_at = time.monotonic()
        worker.proc.send_signal(signal.SIGINT)
        code = worker.proc.wait(10)
        took = time.monotonic() - sent_at
        assert raw.closed_by_server()
    assert code != 0
    assert took < 3, f"exit took {took:.2f} s after the second signal"
    assert "second SIGINT: exiting now" in worker.output
    # The pool's processes go with it, even the one still running the 20 s call.
    wait_until(lambda: not [p for p in family if pid_alive(p)], timeout=5)


def test_kill_9_of_the_worker_leaves_no_process_behind(spawn: type[WorkerProcess]) -> None:
    worker = spawn("process")
    family = worker.descendants()
    with RawClient(worker.port) as raw:
        raw.send("burn", 1, 20_000)  # a child busy with pure-Python work
        raw.send("sleep", 2, 20_000)  # and one waiting
        worker.wait_busy(2)
        worker.proc.kill()
        worker.proc.wait(10)
        assert raw.closed_by_server()
    wait_until(lambda: not [p for p in family if pid_alive(p)], timeout=5)


def test_admin_port_of_the_command(spawn: type[WorkerProcess]) -> None:
    worker = spawn("thread")
    with RawClient(worker.port) as raw:
        raw.send("sleep", 1, 100)
        raw.send("sleep", 2, 100)
        raw.recv_many(2)
        assert raw.call("ping", "pid", seqid=3).split(":")[0] == str(worker.proc.pid)
    base = f"http://127.0.0.1:{worker.admin_port}"
    with urllib.request.urlopen(base + "/healthz", timeout=5) as resp:
        assert resp.read() == b"ok\n"
    with urllib.request.urlopen(base + "/metrics", timeout=5) as resp:
        text = resp.read().decode()
    assert metric(text, "offloop_worker_calls_total", method="sleep", outcome="ok") == 2
    assert metric(text, "offloop_worker_alive_workers") == 2


# -- flags -------------------------------------------------------------------------------------

BASE = ["worker", "--idl", IDL, "--service", "TextLab", "--handler", "faulty:Handler"]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--pool", "fibre"], "--pool: expected one of process, thread, got 'fibre'"),
        (["--workers", "-1"], "--workers: workers must be >= 0 (0: one per core)"),
        (["--workers", "two"], "--workers: expected an integer, got 'two'"),
        (["--nice", "25"], "--nice: nice must be between 0 and 19"),
        (["--call-timeout", "0"], "--call-timeout: call_timeout must be positive"),
        (["--grace", "-1"], "--grace: grace must be >= 0"),
        (["--max-queued", "-2"], "--max-queued: max_queued must be >= 0"),
        (
            ["--max-frame-size", "0"],
            "--max-frame-size: max_frame_size must be between 1 byte and 1 GiB",
        ),
        (["--protocol", "json"], "--protocol: expected one of binary, compact, got 'json'"),
        (["--port", "70000"], "--port: port must be between 0 and 65535, not 70000"),
        (["--admin-port", "70000"], "--admin-port: admin port must be between 0 and 65535"),
        (["--handler", "faulty"], "--handler: expected package.module:Name, got 'faulty'"),
    ],
)
def test_bad_flags_exit_2_with_a_clear_message(
    flags: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main([*BASE, *flags])
    assert info.value.code == 2
    usage, line = capsys.readouterr().err.splitlines()
    assert usage.startswith("usage: offloop worker --idl IDL --service NAME[=MODULE:NAME] ")
    assert line == f"offloop worker: {message}"


def test_missing_required_flag_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["worker", "--service", "TextLab", "--handler", "faulty:Handler"])
    assert info.value.code == 2
    assert "the following arguments are required: --idl" in capsys.readouterr().err


def test_workers_0_means_one_per_core() -> None:
    config = parse([*BASE, "--pool", "thread", "--workers", "0"], environ={}).worker
    assert config is not None
    assert config.workers == (os.cpu_count() or 1)
    assert config.max_queued == 4 * config.workers


def test_defaults_of_the_command() -> None:
    config = parse(BASE, environ={}).worker
    assert config is not None
    assert (config.pool.kind, config.limits.call_timeout, config.grace, config.pool.nice) == (
        "process",
        30.0,
        10.0,
        10,
    )
    assert config.limits.max_frame_size == 16 * 1024 * 1024
    assert config.admin.port is None
    assert (config.listen.host, config.listen.port) == ("127.0.0.1", 9090)


def test_bad_flags_as_a_subprocess() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "offloop.cli", *BASE, "--nice", "99"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "nice must be between 0 and 19" in result.stderr


def _start_env() -> dict[str, str]:
    """The worker's environment for start-up tests: faulty importable, no stray OFFLOOP_."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OFFLOOP_")}
    env["PYTHONPATH"] = str(SUPPORT_DIR)
    return env


@pytest.mark.parametrize(
    ("flags", "message", "status"),
    [
        (["--handler", "nosuchmodule:Handler"], "No module named 'nosuchmodule'", 2),
        (["--idl", "/nonexistent.thrift"], "IDL file not found: /nonexistent.thrift", 1),
        (
            ["--handler", "faulty:Missing", "--no-batching"],
            "module 'faulty' has no attribute 'Missing'",
            2,
        ),
        (["--handler", "faulty:Missing"], "module 'faulty' has no attribute 'Missing'", 2),
    ],
    ids=["handler", "idl", "missing attribute", "missing attribute, batching"],
)
def test_start_up_failure_says_why_in_one_line(flags: list[str], message: str, status: int) -> None:
    """A handler that cannot be loaded is the user's to fix: ``offloop: cannot load
    handler ...``, status 2 (tests/cli/test_handler_errors.py has the rest); anything else
    that stops start-up is status 1."""
    args = ["--idl", IDL, "--service", "TextLab", "--handler", "faulty:Handler", *flags]
    result = subprocess.run(
        [sys.executable, "-m", "offloop.cli", "worker", "--pool", "thread", "--port", "0", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=_start_env(),
    )
    assert result.returncode == status, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    if status == 2:
        assert lines[0].startswith("offloop: cannot load handler ")
    else:
        assert "worker failed to start" in lines[0]
    assert message in lines[0]


def test_a_port_in_use_fails_start_up_in_one_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "offloop.cli", *BASE, "--pool", "thread", "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=60,
            env=_start_env(),
        )
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "worker failed to start" in lines[0] and str(port) in lines[0]


def test_settings_from_the_environment_and_a_file(tmp_path: Path) -> None:
    """The same settings as flags, given as a worker's deployment would: a file and the
    environment (the file names the handler, the environment the pool)."""
    config = tmp_path / "offloop.toml"
    config.write_text(
        f'[worker]\nidl = "{IDL}"\nservice = "TextLab"\nhandler = "faulty:Handler"\n'
        "[worker.pool]\nkind = 'process'\nworkers = 3\n"
    )
    env = {"OFFLOOP_CONFIG": str(config), "OFFLOOP_POOL": "thread", "OFFLOOP_ADMIN_PORT": "0"}
    worker = parse(["worker"], environ=env).worker
    assert worker is not None
    assert (worker.pool.kind, worker.pool.workers, worker.admin.port) == ("thread", 3, 0)
