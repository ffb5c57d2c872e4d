"""``offloop worker`` drains on SIGTERM without losing a call, as a real subprocess.

The timeline (docs/deploy.md): at SIGTERM ``/readyz`` fails at once while every call is still
served for ``--drain-delay``; then the worker stops accepting, answers new calls on open
connections "shutting down", finishes the calls in flight within ``--grace`` and exits 0.
Calls are held running with gates, so that each step is checked while they provably run.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from gates import Gate
from harness import IDL, RawClient, metric
from net import free_port
from offloop_process import OffloopProcess, Spawn
from waiting import wait_until

#: Long enough for the few checks made during the delay, on a loaded machine.
DRAIN_DELAY = 6.0


def start_worker(spawn: Spawn, pool: str, *flags: str) -> tuple[OffloopProcess, int]:
    """A faulty-handler worker of ``pool``, started; returns it and its Thrift port."""
    port, admin = free_port(), free_port()
    args = [
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
        "3",  # two held by gates, one for the calls made meanwhile
        "--port",
        str(port),
        "--admin-port",
        str(admin),
        *flags,
    ]
    worker = spawn(args, admin)
    worker.wait_ready()
    return worker, port


def busy(worker: OffloopProcess) -> float | None:
    status, text = worker.get("/metrics")
    return metric(text, "offloop_worker_busy_workers") if status == 200 else None


@pytest.mark.parametrize("pool", ["thread", "process"])
def test_sigterm_fails_readiness_serves_through_the_delay_then_drains(
    spawn: Spawn, pool: str, tmp_path: Path
) -> None:
    worker, port = start_worker(spawn, pool, "--drain-delay", str(DRAIN_DELAY), "--grace", "30")
    assert worker.get("/readyz") == (200, "ok\n")
    assert worker.get("/livez") == (200, "ok\n")
    assert worker.get("/healthz") == (200, "ok\n")
    first, second = Gate(tmp_path, "first"), Gate(tmp_path, "second")
    with first, second, RawClient(port, timeout=30) as raw:
        raw.send("ping", 1, first.message)  # in flight from before the signal to the end
        wait_until(lambda: busy(worker) == 1, timeout=10)

        worker.signal(signal.SIGTERM)
        # Readiness fails at once.
        wait_until(lambda: worker.get("/readyz")[0] == 503, timeout=10)
        # During the delay every call is served: on the open connection and on a new one.
        raw.send("ping", 3, second.message)  # in flight when the delay ends
        assert raw.call("ping", "during the delay", seqid=2) == "during the delay"
        with RawClient(port, timeout=30) as late:
            assert late.call("ping", "a new connection") == "a new connection"
        assert worker.get("/readyz") == (503, "draining\n")
        assert worker.get("/healthz")[0] == 503
        assert worker.get("/livez") == (200, "ok\n")  # alive, finishing its work
        wait_until(lambda: busy(worker) == 2, timeout=10)

        # After the delay: no more connections, new calls refused, the two finish.
        worker.wait_for_log("draining 2 calls in flight")
        assert worker.refuses(port)
        raw.send("ping", 4, "too late")
        refused = raw.recv()
        assert refused.seqid == 4
        assert "shutting down" in refused.body.message
        first.open()
        second.open()
        replies = {r.seqid: r.value() for r in raw.recv_many(2)}
        assert replies == {1: "opened", 3: "opened"}
        assert raw.closed_by_server()
    assert worker.wait_exit() == 0, worker.output
    out = worker.output
    assert f"still serving for the drain delay of {DRAIN_DELAY:g} s" in out
    assert "worker stopped" in out
    # The order of the timeline, as logged.
    assert out.index("SIGTERM received") < out.index("drain delay") < out.index("draining 2")


def test_sigint_skips_the_drain_delay(spawn: Spawn) -> None:
    # A delay far longer than the test waits: it must not apply to Ctrl-C.
    worker, port = start_worker(spawn, "thread", "--drain-delay", "600", "--grace", "30")
    with RawClient(port) as raw:
        assert raw.call("ping", "x") == "x"
    worker.signal(signal.SIGINT)
    assert worker.wait_exit(timeout=60) == 0, worker.output
    assert "drain delay" not in worker.output
    assert "worker stopped" in worker.output


def test_a_second_sigterm_during_the_delay_exits_at_once(spawn: Spawn) -> None:
    worker, _ = start_worker(spawn, "thread", "--drain-delay", "600")
    worker.signal(signal.SIGTERM)
    worker.wait_for_log("still serving for the drain delay")
    worker.signal(signal.SIGTERM)
    assert worker.wait_exit(timeout=60) == 1
    assert "second SIGTERM: exiting now" in worker.output
