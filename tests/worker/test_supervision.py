"""Deadlines over both pools, and a process pool that survives its children: a child that
dies (``os._exit``, a segfault, ``kill -9``) fails only the call it was running, queued calls
are not lost, and a new child replaces it within a second."""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable

import pytest
from harness import RawClient, ServerThread, metric, pid_alive, thrift_client
from thriftpy2.thrift import TApplicationException
from waiting import wait_until

StartWorker = Callable[..., ServerThread]

#: The issue asks for a replacement within a second; allow for a loaded test machine, and
#: report the time measured.
REPLACEMENT_BOUND = 3.0


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
        replaced_after = time.monotonic()
        assert died.seqid == 1
        assert died.is_exception
        assert died.body.type == TApplicationException.INTERNAL_ERROR
        assert died.body.message == (
            f"crashed: worker process {before} died ({how}) while running this call"
        )
        # The queued call ran on the replacement: nothing was lost.
        assert (queued.seqid, queued.value()) == (2, "queued behind it")
        after = child_pid(raw)
    assert after != before
    assert not pid_alive(before)
    took = time.monotonic() - replaced_after
    assert took < REPLACEMENT_BOUND, f"replacement took {took:.2f} s"
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
        wait_until(lambda: server.stats().busy == 1, timeout=5)
        killed_at = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        died = raw.recv()
        assert died.seqid == 1
        assert died.body.message == (
            f"crashed: worker process {victim} died (killed by signal 9) while running this call"
        )
        queued = raw.recv_many(2)
        took = time.monotonic() - killed_at
        assert [(r.seqid, r.value()) for r in queued] == [(2, "queued 1"), (3, "queued 2")]
        assert child_pid(raw) != victim
    assert took < REPLACEMENT_BOUND, f"the replacement answered {took:.2f} s after the kill"
    assert metric(server.metrics(), "offloop_worker_child_restarts_total") == 1


@pytest.mark.parametrize("pool", ["process"])
def test_idle_child_killed_is_replaced_within_a_second(start_worker: StartWorker) -> None:
    server = start_worker(workers=2)
    with RawClient(server.port) as raw:
        victim = child_pid(raw)
    killed_at = time.monotonic()
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: server.stats().restarts == 1 and server.stats().alive == 2, timeout=5)
    took = time.monotonic() - killed_at
    assert took < REPLACEMENT_BOUND, f"replacement took {took:.2f} s"
    # Both children serve: two overlapping calls run at once.
    with RawClient(server.port) as raw:
        raw.sock.sendall(raw.call_bytes("sleep", 1, 600) + raw.call_bytes("sleep", 2, 600))
        wait_until(lambda: server.stats().busy == 2, timeout=5)
        assert sorted(r.seqid for r in raw.recv_many(2)) == [1, 2]


def test_call_past_its_deadline_is_answered_with_an_error(
    start_worker: StartWorker, pool: str
) -> None:
    server = start_worker(workers=1, call_timeout=0.5)
    with RawClient(server.port) as raw:
        before = raw.call("ping", "pid", seqid=1)
        started = time.monotonic()
        raw.send("sleep", 2, 2000)
        reply = raw.recv()
        took = time.monotonic() - started
        assert reply.seqid == 2
        assert reply.is_exception
        assert reply.body.type == TApplicationException.INTERNAL_ERROR
        assert reply.body.message == "deadline exceeded: call did not finish within 0.5 s"
        # Answered at the deadline, well before the call itself would have ended.
        assert took < 1.5, f"the deadline error came {took:.2f} s after the call"
        if pool == "process":
            # The child was killed and replaced. Wait for the replacement before calling:
            # a call queued behind a slow start on a loaded machine would meet the 0.5 s
            # deadline itself.
            wait_until(lambda: server.stats().alive == 1, timeout=5)
            after = raw.call("ping", "pid", seqid=3)
            assert after.split(":")[0] != before.split(":")[0]
            assert not pid_alive(int(before.split(":")[0]))
            assert server.stats().restarts == 1
        else:
            # A thread cannot be killed: it runs on, holding its worker, then frees it.
            assert server.stats().busy == 1
            wait_until(lambda: server.stats().busy == 0, timeout=5)
            assert raw.call("ping", "pid", seqid=3).split(":")[0] == str(os.getpid())
    client = thrift_client(server.port)
    try:
        assert client.ping("served after the deadline") == "served after the deadline"
    finally:
        client.close()
    text = server.metrics()
    assert metric(text, "offloop_worker_calls_total", method="sleep", outcome="timeout") == 1
    assert metric(text, "offloop_worker_child_restarts_total") == (1 if pool == "process" else 0)
