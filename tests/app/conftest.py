"""Fixtures of the assembly suite: ``offloop worker`` and ``offloop gateway`` as real
subprocesses (tests/support/offloop_process.py), to signal them and watch them drain."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import pid_alive
from offloop_process import OffloopProcess, Spawn
from waiting import wait_until


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Spawn]:
    """Starts ``offloop`` subprocesses (``spawn(args, probe_port)``), and kills them at the end."""
    started: list[OffloopProcess] = []

    def start(args: list[str], probe_port: int) -> OffloopProcess:
        process = OffloopProcess(tmp_path / f"offloop{len(started)}.log", args, probe_port)
        started.append(process)
        return process

    yield start
    for process in started:
        process.kill()
    wait_until(lambda: not [p for p in started if pid_alive(p.proc.pid)], timeout=10)
