"""The gateway over TLS: to mutual-TLS workers in both modes, HTTPS on both fronts (mutual
TLS too), refusals answered with the gateway still serving, and the front's certificate
rotated without a restart."""

from __future__ import annotations

import ssl
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from gateway_stack import MODES, SERVERS, LoopThread, Stack, worker_config
from pki import PKI, Pair, peer_certificate
from waiting import wait_until

#: Seconds for something the test waits for; only bounds a hang.
WAIT = 10.0


@pytest.fixture
def stacks() -> Iterator[Callable[[str, str], Stack]]:
    """Makes stacks on one loop thread; all closed, and the loop stopped, at the end."""
    loop = LoopThread()
    made: list[Stack] = []

    def make(server: str, mode: str) -> Stack:
        stack = Stack(loop, server, mode)
        made.append(stack)
        return stack

    try:
        yield make
    finally:
        try:
            for stack in made:
                stack.close()
        finally:
            loop.stop()


def backend_tls(pki: PKI, pair: Pair | None = None) -> dict[str, Any]:
    """The gateway's settings for TLS to the workers (whole, as the flags give them)."""
    return {"backend_tls": pki.client_tls(pair)}


def front_tls(pki: PKI, **more: Any) -> dict[str, Any]:
    """The gateway's settings for HTTPS on its front."""
    return {"tls": pki.front_tls(**more)}


def https(stack: Stack, ctx: ssl.SSLContext) -> httpx.Client:
    port = int(stack.url.rsplit(":", 1)[1])
    return httpx.Client(base_url=f"https://localhost:{port}", verify=ctx, trust_env=False)


def front_port(stack: Stack) -> int:
    return int(stack.url.rsplit(":", 1)[1])


@pytest.mark.parametrize("mode", MODES)
def test_gateway_calls_mutual_tls_workers(
    pki: PKI, stacks: Callable[[str, str], Stack], mode: str
) -> None:
    stack = stacks("uvicorn", mode)
    worker = stack.start_worker(worker_config(tls=pki.server_tls()))
    stack.start_gateway([("127.0.0.1", worker.port)], **backend_tls(pki))
    for _ in range(3):
        response = stack.call("ping", {"msg": "over tls"})
        assert response.status_code == 200, response.text
        assert response.json() == {"result": "over tls"}


@pytest.mark.parametrize("mode", MODES)
def test_refused_gateway_answers_and_keeps_serving(
    pki: PKI, stacks: Callable[[str, str], Stack], mode: str
) -> None:
    """A gateway whose certificate the worker refuses, or that speaks plaintext to it,
    answers with a 5xx at once (no hang); a good one next to it is served."""
    stack = stacks("uvicorn", mode)
    worker = stack.start_worker(worker_config(tls=pki.server_tls()))
    backends = [("127.0.0.1", worker.port)]
    for settings in (backend_tls(pki, pki.foreign_client), {}):
        bad = stacks("uvicorn", mode)
        bad.start_gateway(backends, **settings)
        response = bad.call("ping", {"msg": "x"})
        assert 500 <= response.status_code < 600, response.text
    stack.start_gateway(backends, **backend_tls(pki))
    assert stack.call("ping", {"msg": "still"}).json() == {"result": "still"}


@pytest.mark.parametrize("server", SERVERS)
def test_https_front(pki: PKI, stacks: Callable[[str, str], Stack], server: str) -> None:
    stack = stacks(server, "loop")
    worker = stack.start_worker(worker_config())
    stack.start_gateway([("127.0.0.1", worker.port)], **front_tls(pki))
    with https(stack, pki.ssl_client()) as client:
        for _ in range(2):  # a kept-alive connection serves a second request
            response = client.post("/rpc/TextLab/ping", json={"msg": "https"})
            assert response.status_code == 200, response.text
            assert response.json() == {"result": "https"}
    # Plaintext HTTP to the HTTPS port is no HTTP exchange; the front goes on serving.
    with pytest.raises(httpx.TransportError):
        httpx.post(f"http://127.0.0.1:{front_port(stack)}/rpc/TextLab/ping", json={}, timeout=WAIT)
    with https(stack, pki.ssl_client()) as client:
        assert client.post("/rpc/TextLab/ping", json={"msg": "on"}).json() == {"result": "on"}


@pytest.mark.parametrize("server", SERVERS)
def test_mutual_tls_front(pki: PKI, stacks: Callable[[str, str], Stack], server: str) -> None:
    stack = stacks(server, "loop")
    worker = stack.start_worker(worker_config())
    stack.start_gateway([("127.0.0.1", worker.port)], **{"tls": pki.front_tls(mutual=True)})
    for pair in (None, pki.foreign_client, pki.expired_client):
        with https(stack, pki.ssl_client(pair)) as client, pytest.raises(httpx.TransportError):
            client.post("/rpc/TextLab/ping", json={"msg": "refused"})
    with https(stack, pki.ssl_client(pki.client)) as client:
        assert client.post("/rpc/TextLab/ping", json={"msg": "mtls"}).json() == {"result": "mtls"}


@pytest.mark.parametrize("server", SERVERS)
def test_front_certificate_rotation(
    pki: PKI, stacks: Callable[[str, str], Stack], server: str
) -> None:
    stack = stacks(server, "loop")
    worker = stack.start_worker(worker_config())
    stack.start_gateway([("127.0.0.1", worker.port)], **front_tls(pki, reload_interval=0.05))
    ctx = pki.ssl_client()
    old = https(stack, ctx)
    try:
        assert old.post("/rpc/TextLab/ping", json={"msg": "a"}).json() == {"result": "a"}
        before = peer_certificate(front_port(stack), ctx)
        pki.rotate_server("localhost", "rotated.example")
        wait_until(lambda: peer_certificate(front_port(stack), ctx) != before, WAIT)
        # The kept-alive connection made before the rotation still serves.
        assert old.post("/rpc/TextLab/ping", json={"msg": "b"}).json() == {"result": "b"}
    finally:
        old.close()


def test_the_backends_tls_watcher_ends_with_the_gateway(pki: PKI) -> None:
    # Item 20: build_gateway's ClientTLS thread must not outlive the gateway's shutdown.
    import asyncio
    import threading

    from configs import override

    from offloop.app.gateway import build_gateway
    from offloop.demo.textlab import IDL_PATH
    from offloop.gateway.config import GatewayConfig

    def watchers() -> list[str]:
        return [t.name for t in threading.enumerate() if t.name.startswith("offloop-tls-")]

    before = set(watchers())
    config = override(
        GatewayConfig(idl=str(IDL_PATH), backends={"*": (("127.0.0.1", 9),)}),
        **backend_tls(pki),
    )

    gateway = build_gateway(config)  # held throughout: the thread must end by shutdown
    assert set(watchers()) - before, "a watcher thread while the gateway runs"
    asyncio.run(gateway.shutdown(0))
    wait_until(lambda: set(watchers()) <= before, timeout=10)
    assert gateway.caller is not None
