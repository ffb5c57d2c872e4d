"""``offloop gateway`` drains on SIGTERM without losing a request, on both HTTP fronts.

The same timeline as the worker's (docs/deploy.md): at SIGTERM the gateway's ``/readyz``
fails at once while every request is still served for ``--drain-delay``; then it stops
accepting, finishes the requests in flight within ``--grace`` and exits 0. The gateway runs
as a subprocess; its worker runs here (thread pool, faulty handler), and requests are held
running with gates so that each step is checked while they provably run.
"""

from __future__ import annotations

import concurrent.futures
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from gates import Gate
from harness import IDL, ServerThread, metric, worker_config
from net import free_port
from offloop_process import OffloopProcess, Spawn
from waiting import wait_until

#: Long enough for the few checks made during the delay, on a loaded machine.
DRAIN_DELAY = 6.0


@pytest.fixture
def worker() -> Iterator[ServerThread]:
    server = ServerThread(worker_config("thread", workers=4, grace=10.0, call_timeout=60.0)).start()
    try:
        yield server
    finally:
        server.stop()


def start_gateway(spawn: Spawn, worker: ServerThread, front: str, *flags: str) -> OffloopProcess:
    port = free_port()
    args = [
        "gateway",
        "--idl",
        IDL,
        "--backend",
        f"127.0.0.1:{worker.port}",
        "--port",
        str(port),
        "--server",
        front,
        "--no-watchdog",
        *flags,
    ]
    gateway = spawn(args, port)
    gateway.wait_ready()
    return gateway


def ping(gateway: OffloopProcess, msg: str) -> tuple[int, object]:
    """POST /rpc/TextLab/ping on a connection of its own: (status, JSON body)."""
    url = f"http://127.0.0.1:{gateway.probe_port}/rpc/TextLab/ping"
    response = httpx.post(url, json={"msg": msg}, timeout=60)
    return response.status_code, response.json()


def busy(worker: ServerThread) -> float | None:
    return metric(worker.metrics(), "offloop_worker_busy_workers")


@pytest.mark.parametrize("front", ["uvicorn", "tornado"])
def test_sigterm_fails_readiness_serves_through_the_delay_then_drains(
    spawn: Spawn, worker: ServerThread, front: str, tmp_path: Path
) -> None:
    gateway = start_gateway(
        spawn, worker, front, "--drain-delay", str(DRAIN_DELAY), "--grace", "30"
    )
    assert gateway.get("/readyz")[0] == 200
    first, second = Gate(tmp_path, "first"), Gate(tmp_path, "second")
    with first, second, concurrent.futures.ThreadPoolExecutor(2) as clients:
        before = clients.submit(ping, gateway, first.message)  # in flight from the start
        wait_until(lambda: busy(worker) == 1, timeout=10)

        gateway.signal(signal.SIGTERM)
        wait_until(lambda: gateway.get("/readyz")[0] == 503, timeout=10)
        # During the delay requests are served, on new connections too.
        spanning = clients.submit(ping, gateway, second.message)  # in flight at its end
        assert ping(gateway, "during the delay") == (200, {"result": "during the delay"})
        assert gateway.get("/healthz")[0] == 200  # alive, only not ready
        wait_until(lambda: busy(worker) == 2, timeout=10)

        # After the delay it accepts no more connections; the two in flight finish.
        wait_until(lambda: gateway.refuses(gateway.probe_port), timeout=30)
        assert not before.done() and not spanning.done()
        first.open()
        second.open()
        assert before.result(timeout=30) == (200, {"result": "opened"})
        assert spanning.result(timeout=30) == (200, {"result": "opened"})
    assert gateway.wait_exit() == 0, gateway.output
    out = gateway.output
    assert (
        f"gateway not ready (/readyz fails): still serving for the drain delay of {DRAIN_DELAY:g} s"
        in out
    )
    assert out.index("SIGTERM received") < out.index("drain delay")


@pytest.mark.parametrize("front", ["uvicorn", "tornado"])
def test_sigint_skips_the_drain_delay(spawn: Spawn, worker: ServerThread, front: str) -> None:
    gateway = start_gateway(spawn, worker, front, "--drain-delay", "600")
    assert ping(gateway, "x") == (200, {"result": "x"})
    gateway.signal(signal.SIGINT)
    assert gateway.wait_exit(timeout=60) == 0, gateway.output
    assert "drain delay" not in gateway.output
