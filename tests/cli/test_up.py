"""``offloop up`` as a real subprocess: it starts, serves, stops everything, and refuses a
worker port that another process holds.

Every process ``offloop up`` starts (its worker, the worker's pool, multiprocessing's helpers)
inherits an environment variable unique to the test, which is how the test finds them all, and
checks that none outlives the command.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

#: Seconds ``offloop up`` may take to start (spawn the worker, start its pool of one).
START_TIMEOUT = 60.0
#: Seconds its processes get to be gone after it exits.
EXIT_TIMEOUT = 10.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def marked(mark: str) -> list[int]:
    """Live processes whose environment holds ``mark``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if mark.encode() in environ:
            found.append(int(entry.name))
    return found


def wait_gone(mark: str) -> None:
    deadline = time.monotonic() + EXIT_TIMEOUT
    while marked(mark) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not marked(mark), "processes of offloop up outlived it"


@pytest.fixture
def up(tmp_path: Path) -> Iterator[tuple[dict[str, str], str]]:
    """The environment for an ``offloop up`` subprocess, and its mark; at the end, every
    process so marked is killed if it is still there (and the test fails in wait_gone)."""
    if not Path("/proc/self/environ").exists():
        pytest.skip("needs /proc")
    mark = f"OFFLOOP_TEST_MARK={uuid.uuid4().hex}"
    name, value = mark.split("=")
    env = {k: v for k, v in os.environ.items() if not k.startswith("OFFLOOP_")}
    env.update({name: value, "PYTHONUNBUFFERED": "1"})
    yield env, mark
    for pid in marked(mark):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def command(worker_port: int, gateway_port: int) -> list[str]:
    return [
        sys.executable, "-m", "offloop.cli", "up",
        "--worker-port", str(worker_port), "--workers", "1",
        "--port", str(gateway_port), "--grace", "2",
    ]  # fmt: skip


def test_a_worker_port_in_use_fails_start_up_with_one_line(up: tuple[dict[str, str], str]) -> None:
    env, mark = up
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            command(port, free_port()),
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT,
            env=env,
        )
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "up failed to start: the demo worker did not start" in lines[0]
    assert f"127.0.0.1:{port}" in lines[0]
    assert "address already in use" in lines[0].lower()
    assert "offloop demo is up" not in result.stdout
    wait_gone(mark)


def test_up_serves_then_ctrl_c_stops_everything(up: tuple[dict[str, str], str]) -> None:
    env, mark = up
    gateway_port = free_port()
    proc = subprocess.Popen(
        command(free_port(), gateway_port),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        request = urllib.request.Request(
            f"http://127.0.0.1:{gateway_port}/rpc/TextLab/ping",
            data=json.dumps({"msg": "hi"}).encode(),
            headers={"content-type": "application/json"},
        )
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            assert proc.poll() is None, proc.communicate()[0]
            try:
                with urllib.request.urlopen(request, timeout=5) as resp:
                    assert json.loads(resp.read()) == {"result": "hi"}
                break
            except OSError:
                assert time.monotonic() < deadline, "offloop up did not serve in time"
                time.sleep(0.2)
        family = marked(mark)
        assert len(family) >= 3  # offloop up, its worker, and the worker's pool
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, out
    assert "offloop demo is up" in out
    assert "worker stopped" in out
    assert "Traceback" not in out
    wait_gone(mark)
