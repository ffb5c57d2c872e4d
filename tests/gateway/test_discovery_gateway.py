"""The gateway in front of workers found by DNS: ``/readyz`` and ``/metrics`` list each
backend with its source and state, through a record's coming and going (a real dnsmasq on
127.0.0.1, workers on 127.0.0.2 and 127.0.0.3; see tests/support/dnsmasq.py)."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from dnsmasq import DNSMASQ, MISSING, DnsServer
from gates import Gate
from gateway_stack import GatewayFactory
from harness import ServerThread, worker_config
from net import free_port
from waiting import wait_until

from offloop.gateway.config import parse_backend

pytestmark = pytest.mark.skipif(DNSMASQ is None, reason=MISSING)

#: Bounds a wait for a state (a hang), not a claim about speed.
WAIT = 20.0
HOST_A, HOST_B = "127.0.0.2", "127.0.0.3"


@pytest.fixture
def dns_server(tmp_path: Path) -> Iterator[DnsServer]:
    server = DnsServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def two_hosts() -> Iterator[tuple[ServerThread, ServerThread]]:
    port = free_port()
    started: list[ServerThread] = []
    try:
        for host in (HOST_A, HOST_B):
            config = worker_config("thread", host=host, port=port, workers=4, call_timeout=30.0)
            started.append(ServerThread(config).start())
        yield started[0], started[1]
    finally:
        for worker in started:
            worker.stop(grace=0.0)


def backends(body: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {b["address"]: (b["source"], b["state"]) for b in body["backends"]}


def test_readyz_and_metrics_list_backends_with_source_and_state(
    gateway_factory: GatewayFactory,
    dns_server: DnsServer,
    two_hosts: tuple[ServerThread, ServerThread],
    tmp_path: Path,
) -> None:
    a, _ = two_hosts
    port = a.port
    text = f"dns://127.0.0.1:{dns_server.port}/w.test:{port}"
    _, target = parse_backend(text)
    dns_server.set({"w.test": [HOST_A, HOST_B]})
    stack = gateway_factory(backends=0, addresses=[target], timeout=30.0)
    addr_a, addr_b = f"{HOST_A}:{port}", f"{HOST_B}:{port}"

    def readyz() -> dict[str, tuple[str, str]]:
        return backends(stack.client.get("/readyz").json())

    both_up = {addr_a: (text, "up"), addr_b: (text, "up")}
    wait_until(lambda: readyz() == both_up, WAIT)
    assert stack.client.get("/readyz").status_code == 200
    assert stack.metric("offloop_gateway_backend_state", backend=addr_b, state="up") == 1
    assert stack.metric("offloop_gateway_backend_state", backend=addr_b, source=text) == 1

    gate = Gate(tmp_path)
    with gate, ThreadPoolExecutor(8) as pool:
        held = [
            pool.submit(stack.call, "ping", {"msg": gate.message}, timeout=60) for _ in range(8)
        ]
        wait_until(lambda: two_hosts[1].stats().busy > 0, WAIT)
        dns_server.set({"w.test": [HOST_A]})
        wait_until(lambda: readyz().get(addr_b) == (text, "draining"), WAIT)
        assert stack.metric("offloop_gateway_backend_state", backend=addr_b, state="draining") == 1
        assert stack.metric("offloop_gateway_backend_state", backend=addr_b, state="up") == 0
        assert stack.client.get("/readyz").status_code == 200  # A still serves
        gate.open()
        assert [f.result().status_code for f in held] == [200] * 8  # none failed
    wait_until(lambda: readyz() == {addr_a: (text, "up")}, WAIT)
    assert stack.metric("offloop_gateway_backend_state", backend=addr_b) is None
