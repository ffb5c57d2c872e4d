"""The connection table of the HTTP fronts, without sockets (times are given), and the cap it
gets from the open-files limit."""

from __future__ import annotations

import resource
import subprocess
import sys

import pytest

from offloop.gateway.config import FrontConfig
from offloop.gateway.connections import ConnectionTable, Phase, connection_capacity

TIMEOUTS = {Phase.IDLE: 10.0, Phase.HEAD: 2.0, Phase.BODY: 5.0}


def test_the_oldest_idle_connection_goes_first() -> None:
    table: ConnectionTable[str] = ConnectionTable(3, TIMEOUTS)
    for now, conn in enumerate("abc"):
        table.add(conn, float(now))
    assert table.full()
    # "a" sends a request, and is idle again after "b" and "c": "b" is now the oldest.
    table.move("a", Phase.HEAD, 3.0)
    table.move("a", Phase.BODY, 3.0)
    table.move("a", Phase.BUSY, 3.0)
    table.move("a", Phase.IDLE, 4.0)
    assert table.evict() == ("b", Phase.IDLE)
    assert table.evict() == ("c", Phase.IDLE)
    assert table.evict() == ("a", Phase.IDLE)
    assert table.evict() is None and len(table) == 0


def test_heads_are_evicted_after_idle_ones_and_bodies_never() -> None:
    table: ConnectionTable[str] = ConnectionTable(3, TIMEOUTS)
    for conn in "abc":
        table.add(conn, 0.0)
    table.move("a", Phase.HEAD, 1.0)
    table.move("b", Phase.BODY, 1.0)
    table.move("c", Phase.BUSY, 1.0)
    assert table.evict() == ("a", Phase.HEAD)
    assert table.evict() is None  # a body on its way, and a call: neither is dropped
    assert table.counts() == {Phase.IDLE: 0, Phase.HEAD: 0, Phase.BODY: 1, Phase.BUSY: 1}


def test_each_phase_expires_after_its_own_timeout() -> None:
    table: ConnectionTable[str] = ConnectionTable(10, TIMEOUTS)
    for conn in ("idle", "head", "body", "busy"):
        table.add(conn, 0.0)
    table.move("head", Phase.HEAD, 0.0)
    table.move("body", Phase.BODY, 0.0)
    table.move("busy", Phase.BUSY, 0.0)
    assert table.expired(1.9) == []
    assert table.expired(2.0) == [("head", Phase.HEAD)]
    assert table.expired(5.0) == [("body", Phase.BODY)]
    assert table.expired(10.0) == [("idle", Phase.IDLE)]
    assert table.expired(1e9) == []  # a call in flight is timed by its own deadline
    assert table.phase("busy") is Phase.BUSY and table.phase("idle") is None


def test_a_phase_counts_from_when_it_began() -> None:
    table: ConnectionTable[str] = ConnectionTable(10, TIMEOUTS)
    table.add("a", 0.0)
    table.add("b", 5.0)
    table.move("a", Phase.IDLE, 8.0)  # already idle: its idle time still counts from 0
    assert table.expired(10.0) == [("a", Phase.IDLE)]
    table.remove("b")
    table.remove("b")  # closed twice (by both sides): no harm
    assert table.expired(100.0) == [] and len(table) == 0


def test_capacity_keeps_descriptors_for_the_gateway() -> None:
    front = FrontConfig(max_connections=10_000, fd_reserve=256)
    assert connection_capacity(front, 1024) == 768
    assert connection_capacity(front, 1 << 20) == 10_000
    with pytest.raises(ValueError, match="fd_reserve"):
        connection_capacity(front, 256)


def test_the_soft_open_files_limit_is_raised_to_the_hard_one() -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard == resource.RLIM_INFINITY or hard <= 256:
        pytest.skip(f"needs a finite hard open-files limit above 256, not {hard}")
    # In a child, so that this process keeps its limits.
    code = (
        "import resource\n"
        "from offloop.app.gateway import raise_open_files_limit\n"
        f"resource.setrlimit(resource.RLIMIT_NOFILE, (256, {hard}))\n"
        "print(raise_open_files_limit(), resource.getrlimit(resource.RLIMIT_NOFILE)[0])\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.split() == [str(hard), str(hard)]
