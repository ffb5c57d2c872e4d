"""Deadlines over both pools, and a process pool that survives its children: a child that
dies (``os._exit``, a segfault, ``kill -9``) fails only the call it was running, queued calls
are not lost, and a new child replaces it on its own, with no call needed to set it off.

How fast a replacement comes is a benchmark's question, not these tests': they bound each
wait only to fail instead of hanging."""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest
from gates import Gate
from harness import RawClient, ServerThread, metric, pid_alive, thrift_client
from thriftpy2.thrift import TApplicationException
from waiting import wait_until

StartWorker = Callable[..., ServerThread]

#: Seconds a test waits for a state it expects (bounds a hang, not a speed claim).
WAIT = 10.0

#: The call deadline of the deadline test: the gated call is answered when it passes.
DEADLINE = 3.0


def child_pid(raw: RawClient, seqid: int = 900) -> int:
    """The pid of the child process that runs the next call."""
    return int(raw.call("ping", "pid", seqid=seqid).split(":")[0])


@pytest.mark.parametrize("pool", ["process"])
@pytest.mark.parametrize(
    ("command", "how"),
    [("crash", "exit 3"), ("segfault", f"killed by signal {int(signal.SIGSEGV)}")],
    ids=["os._exit", "segfault"],
)
def test_child_death_fails_only_its_call(
    start_worker: StartWorker, command: str, how: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="offloop")
    server = start_worker(workers=1, max_queued=4, call_timeout=5.0)
    with RawClient(server.port) as raw:
        before = child_pid(raw)
        raw.send("ping", 1, command)
        raw.send("ping", 2, "queued behind it")
        died, queued = raw.recv_many(2)
        assert died.seqid == 1
        assert died.is_exception
        assert died.body.type == TApplicationException.INTERNAL_ERROR
        assert died.body.message == (
            f"crashed: worker process {before} died ({how}) while running this call"
        )
        # The queued call ran on the replacement: nothing was lost, and the death alone
        # brought the replacement up.
        assert (queued.seqid, queued.value()) == (2, "queued behind it")
        after = child_pid(raw)
    assert after != before
    assert not pid_alive(before)
    text = server.metrics()
    assert metric(text, "offloop_worker_child_restarts_total") == 1
    assert metric(text, "offloop_worker_calls_total", method="ping", outcome="crashed") == 1
    deaths = [r.getMessage() for r in caplog.records if r.name == "offloop.runtime"]
    assert deaths == [f"worker process {before} died ({how}) while running a call"]


@pytest.mark.parametrize("pool", ["process"])
def test_kill_9_fails_only_the_running_call(start_worker: StartWorker) -> None:
    server = start_worker(workers=1, max_queued=4, call_timeout=10.0)
    with RawClient(server.port) as raw:
        victim = child_pid(raw)
        raw.send("sleep", 1, 5000)
        raw.send("ping", 2, "queued 1")
        raw.send("ping", 3, "queued 2")
        wait_until(lambda: server.stats().busy == 1, timeout=WAIT)
        os.kill(victim, signal.SIGKILL)
        died = raw.recv()
        assert died.seqid == 1
        assert died.body.message == (
            f"crashed: worker process {victim} died (killed by signal 9) while running this call"
        )
        # The replacement, started by the kill alone, answers the queued calls.
        queued = raw.recv_many(2)
        assert [(r.seqid, r.value()) for r in queued] == [(2, "queued 1"), (3, "queued 2")]
        assert child_pid(raw) != victim
    assert metric(server.metrics(), "offloop_worker_child_restarts_total") == 1


@pytest.mark.parametrize("pool", ["process"])
def test_idle_child_killed_is_replaced_with_no_call_to_set_it_off(
    start_worker: StartWorker, tmp_path: Path
) -> None:
    server = start_worker(workers=2)
    with RawClient(server.port) as raw:
        victim = child_pid(raw)
    os.kill(victim, signal.SIGKILL)
    # No call is made until the pool is whole again: the death alone brings the replacement.
    wait_until(lambda: server.stats().restarts == 1 and server.stats().alive == 2, timeout=WAIT)
    # Both children serve: two calls held at once, one in each.
    with RawClient(server.port) as raw, Gate(tmp_path) as gate:
        raw.sock.sendall(
            raw.call_bytes("ping", 1, gate.message) + raw.call_bytes("ping", 2, gate.message)
        )
        wait_until(lambda: server.stats().busy == 2, timeout=WAIT)
        gate.open()
        assert sorted(r.seqid for r in raw.recv_many(2)) == [1, 2]


def test_call_past_its_deadline_is_answered_with_an_error(
    start_worker: StartWorker, pool: str, tmp_path: Path
) -> None:
    # The deadline also bounds the ping sent to the replacement child below: long enough for
    # a new child's first call on a loaded machine (0.5 s was not, under two CPU hogs).
    server = start_worker(workers=1, call_timeout=DEADLINE)
    with RawClient(server.port) as raw, Gate(tmp_path) as gate:
        before = raw.call("ping", "pid", seqid=1)
        # Held until its gate opens: the answer comes at the deadline, while the call still
        # runs, whatever the machine's speed.
        raw.send("ping", 2, gate.message)
        reply = raw.recv()
        assert reply.seqid == 2
        assert reply.is_exception
        assert reply.body.type == TApplicationException.INTERNAL_ERROR
        assert reply.body.message == (
            f"deadline exceeded: call did not finish within {DEADLINE:.3g} s"
        )
        if pool == "process":
            # The child was killed and replaced. Wait for the replacement before calling:
            # a call queued behind a slow start on a loaded machine would meet the 0.5 s
            # deadline itself.
            wait_until(lambda: server.stats().alive == 1, timeout=WAIT)
            after = raw.call("ping", "pid", seqid=3)
            assert after.split(":")[0] != before.split(":")[0]
            assert not pid_alive(int(before.split(":")[0]))
            assert server.stats().restarts == 1
        else:
            # A thread cannot be killed: it runs on, holding its worker, then frees it.
            assert server.stats().busy == 1
            gate.open()
            wait_until(lambda: server.stats().busy == 0, timeout=WAIT)
            assert raw.call("ping", "pid", seqid=3).split(":")[0] == str(os.getpid())
    client = thrift_client(server.port)
    try:
        assert client.ping("served after the deadline") == "served after the deadline"
    finally:
        client.close()
    text = server.metrics()
    assert metric(text, "offloop_worker_calls_total", method="ping", outcome="timeout") == 1
    assert metric(text, "offloop_worker_child_restarts_total") == (1 if pool == "process" else 0)
