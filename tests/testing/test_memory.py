"""The in-memory transport pair (offloop.testing): gateway core, client and worker in one
process without sockets; the gateway core's behaviour, unit-tested through it."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import faulty
import pytest
from configs import override
from gates import Gate
from waiting import wait_until_async

from offloop import AsyncClient, GatewayConfig, WorkerConfig, build_gateway
from offloop.errors import ConnectError
from offloop.gateway.core import Gateway, Request, Response
from offloop.testing import MemoryNetwork, WorkerFor

T = TypeVar("T")

JSON = {"content-type": "application/json"}


def run(coro: Coroutine[Any, Any, T]) -> T:
    async def main() -> T:
        async with asyncio.timeout(30):
            return await coro

    return asyncio.run(main())


def worker_config(**overrides: Any) -> WorkerConfig:
    settings: dict[str, Any] = {"pool": "thread", "workers": 2, "nice": 0, "call_timeout": 5.0}
    return override(
        WorkerConfig(idl=faulty.IDL, service="TextLab", grace=0.0), **{**settings, **overrides}
    )


@asynccontextmanager
async def gateway_for(worker: WorkerFor, **overrides: Any) -> AsyncIterator[Gateway]:
    config = override(
        GatewayConfig(idl=faulty.IDL, backends={"*": (worker.address,)}),
        watchdog=False,
        **overrides,
    )
    gateway = build_gateway(config, network=worker.network)
    await gateway.startup()
    try:
        yield gateway
    finally:
        await gateway.shutdown(0)


async def post(gateway: Gateway, method: str, body: Any) -> Response:
    return await gateway.handle(
        Request("POST", f"/rpc/TextLab/{method}", JSON, json.dumps(body).encode())
    )


def no_sockets(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any socket creation fail the test: in memory means no network at all."""

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a socket was opened")

    monkeypatch.setattr(socket, "socket", refuse)


def test_gateway_client_and_worker_without_sockets(monkeypatch: pytest.MonkeyPatch) -> None:
    async def main() -> None:
        async with WorkerFor(worker_config(), handler=faulty.Handler()) as worker:
            no_sockets(monkeypatch)
            async with gateway_for(worker) as gateway:
                r = await post(gateway, "ping", {"msg": "hi"})
                assert (r.status, json.loads(r.body)) == (200, {"result": "hi"})
                r = await post(gateway, "parse", {"sentence": "zzz"})
                assert r.status == 422
                assert json.loads(r.body)["error"]["type"] == "ParseError"
                r = await post(gateway, "ping", {"msg": "raise"})
                assert r.status == 502
                r = await post(gateway, "ping", {"msg": 5})
                assert r.status == 400
                ready = await gateway.handle(Request("GET", "/readyz", {}))
                assert ready.status == 200
            async with AsyncClient(
                faulty.IDL, "TextLab", worker.address, network=worker.network
            ) as client:
                assert await client.call("ping", msg="direct") == "direct"
                results = await asyncio.gather(*(client.call("ping", msg=str(i)) for i in range(8)))
                assert results == [str(i) for i in range(8)]

    run(main())


def test_worker_overload_is_503_with_retry_after(tmp_path: Path) -> None:
    async def main() -> None:
        config = worker_config(workers=1, max_queued=0)
        worker = WorkerFor(config, handler=faulty.Handler())
        async with worker, gateway_for(worker) as gateway:
            with Gate(tmp_path) as gate:
                held = asyncio.ensure_future(post(gateway, "ping", {"msg": gate.message}))
                await wait_until_async(lambda: worker.server.pool.stats().busy == 1, 10)
                refused = await post(gateway, "ping", {"msg": "x"})
                assert refused.status == 503
                assert ("retry-after", "1") in refused.headers
            assert (await held).status == 200

    run(main())


def test_a_worker_gone_from_the_network_is_refused_then_back() -> None:
    async def main() -> None:
        network = MemoryNetwork()
        async with WorkerFor(worker_config(), handler=faulty.Handler(), network=network) as w:
            address = w.address
            client = AsyncClient(faulty.IDL, "TextLab", address, network=network, timeout=2)
            assert await client.call("ping", msg="up") == "up"
        # The worker stopped: its address refuses, as a closed TCP port would.
        with pytest.raises(ConnectError):
            await client.call("ping", msg="down")
        await client.close()

    run(main())
