"""The admin port (``/livez``, ``/readyz``, ``/healthz``, ``/metrics`` in Prometheus text)
and the pools' lower CPU priority, over both pools."""

from __future__ import annotations

import os
import re
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from gates import Gate
from harness import RawClient, ServerThread, metric, nice_of, thrift_client
from thriftpy2.thrift import TApplicationException
from waiting import wait_until

StartWorker = Callable[..., ServerThread]


def metrics_when(server: ServerThread, **expected: float) -> str:
    """The first ``/metrics`` text in which each named sample has its expected value."""

    def scrape() -> str | None:
        text = server.metrics()
        ok = all(metric(text, name) == value for name, value in expected.items())
        return text if ok else None

    return wait_until(scrape, timeout=5)


def test_healthz(worker: ServerThread) -> None:
    assert worker.admin_get("/healthz") == (200, "ok\n")
    assert worker.admin_get("/healthz?verbose=1") == (200, "ok\n")


def test_livez_and_readyz(worker: ServerThread) -> None:
    assert worker.admin_get("/livez") == (200, "ok\n")
    assert worker.admin_get("/readyz") == (200, "ok\n")


def test_readyz_fails_at_once_when_draining_begins_while_calls_are_served(
    worker: ServerThread,
) -> None:
    worker.on_loop(worker.server.begin_drain)
    assert worker.admin_get("/readyz") == (503, "draining\n")
    assert worker.admin_get("/healthz") == (503, "draining\n")
    assert worker.admin_get("/livez") == (200, "ok\n")  # alive: it is finishing its work
    with RawClient(worker.port) as raw:
        assert raw.call("ping", "still served") == "still served"


@pytest.mark.parametrize("pool", ["thread"])
def test_livez_fails_while_every_thread_is_stuck_and_recovers(
    start_worker: StartWorker, tmp_path: Path
) -> None:
    # A thread pool cannot kill a call past its deadline: with its one thread held, no call
    # finishes, and after twice call_timeout the pool counts as wedged (restart me).
    server = start_worker(workers=1, call_timeout=0.5)
    assert server.admin_get("/livez") == (200, "ok\n")
    with RawClient(server.port) as raw, Gate(tmp_path) as gate:
        raw.send("ping", 1, gate.message)
        assert "deadline" in raw.recv().body.message  # answered; its thread runs on
        status, body = wait_until(lambda: _failing(server.admin_get("/livez")), timeout=20)
        assert status == 503
        assert body.startswith("pool wedged: 1 of 1 workers busy and no call finished for")
        assert server.admin_get("/readyz") == (200, "ok\n")  # readiness is another question
        gate.open()
        wait_until(lambda: server.admin_get("/livez") == (200, "ok\n"), timeout=10)


def _failing(answer: tuple[int, str]) -> tuple[int, str] | None:
    return answer if answer[0] != 200 else None


def test_unknown_paths_and_methods(worker: ServerThread) -> None:
    assert worker.admin_get("/nope")[0] == 404
    req = urllib.request.Request(
        f"http://127.0.0.1:{worker.admin_port}/metrics", data=b"x", method="POST"
    )
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(req, timeout=5)
    assert info.value.code == 405
    info.value.close()


def test_metrics_calls_by_method_and_outcome_and_latency(worker: ServerThread) -> None:
    client = thrift_client(worker.port)
    try:
        for _ in range(3):
            client.ping("x")
        client.sleep(30)
        with pytest.raises(TApplicationException):
            client.ping("raise")
    finally:
        client.close()
    status, text = worker.admin_get("/metrics")
    assert status == 200
    assert "# TYPE offloop_worker_calls_total counter" in text
    assert metric(text, "offloop_worker_calls_total", method="ping", outcome="ok") == 3
    assert metric(text, "offloop_worker_calls_total", method="ping", outcome="error") == 1
    assert metric(text, "offloop_worker_calls_total", method="sleep", outcome="ok") == 1
    # Latency histogram per method: the 30 ms sleep is above the 25 ms bucket.
    assert "# TYPE offloop_worker_call_seconds histogram" in text
    assert metric(text, "offloop_worker_call_seconds_count", method="ping") == 4
    assert metric(text, "offloop_worker_call_seconds_bucket", method="sleep", le="0.025") == 0
    assert metric(text, "offloop_worker_call_seconds_bucket", method="sleep", le="+Inf") == 1
    sleep_sum = metric(text, "offloop_worker_call_seconds_sum", method="sleep")
    assert sleep_sum is not None and sleep_sum >= 0.03
    assert re.search(r'^offloop_worker_call_seconds_bucket\{.*le="0\.001".*\} ', text, re.M)


def test_metrics_queue_depth_busy_workers_and_restarts(
    start_worker: StartWorker, pool: str, tmp_path: Path
) -> None:
    # One connection's calls fill the queue: let it hold them all.
    server = start_worker(workers=1, max_queued=4, max_calls_per_connection=5)
    text = server.metrics()
    assert metric(text, "offloop_worker_queue_depth") == 0
    assert metric(text, "offloop_worker_busy_workers") == 0
    assert metric(text, "offloop_worker_alive_workers") == 1
    assert metric(text, "offloop_worker_child_restarts_total") == 0
    with RawClient(server.port) as raw, Gate(tmp_path) as gate:
        # Held until the gate opens: one runs, two queue, for as long as the scrape takes.
        raw.sock.sendall(b"".join(raw.call_bytes("ping", i, gate.message) for i in (1, 2, 3)))
        text = metrics_when(server, offloop_worker_queue_depth=2)
        assert metric(text, "offloop_worker_busy_workers") == 1
        assert metric(text, "offloop_worker_connections") == 1
        gate.open()
        raw.recv_many(3)
        if pool == "process":
            raw.send("ping", 4, "crash")
            raw.recv()
    text = metrics_when(server, offloop_worker_busy_workers=0, offloop_worker_alive_workers=1)
    assert metric(text, "offloop_worker_queue_depth") == 0
    assert metric(text, "offloop_worker_child_restarts_total") == (1 if pool == "process" else 0)


# -- lower CPU priority --------------------------------------------------------------------


@pytest.mark.parametrize("nice", [10, 3])
def test_pool_workers_run_at_lower_priority(
    start_worker: StartWorker, pool: str, nice: int
) -> None:
    server = start_worker(nice=nice)
    ours = nice_of(threading.get_native_id())
    with RawClient(server.port) as raw:
        worker_nice = int(raw.call("ping", "nice"))
        where = raw.call("ping", "pid", seqid=2)
    assert worker_nice == min(19, ours + nice)
    if pool == "process":
        assert where.split(":")[0] != str(os.getpid())
    else:
        assert where.split(":")[0] == str(os.getpid())
        # Only the pool's threads: the event loop keeps its priority.
        loop_tid = server.on_loop(threading.get_native_id)
        assert nice_of(loop_tid) == ours
        assert nice_of(os.getpid()) == ours


def test_nice_zero_leaves_priority_alone(start_worker: StartWorker) -> None:
    server = start_worker(nice=0)
    with RawClient(server.port) as raw:
        assert int(raw.call("ping", "nice")) == nice_of(threading.get_native_id())
