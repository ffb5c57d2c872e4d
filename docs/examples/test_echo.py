"""The Echo handler and a gateway in front of it, tested in memory: pytest docs/examples."""

import asyncio

import httpx
from handlers import IDL, Echo

from offloop import ASGIApp, AsyncClient, GatewayConfig, PoolConfig, WorkerConfig, build_gateway
from offloop.testing import WorkerFor

WORKER = WorkerConfig(idl=IDL, service="Echo", pool=PoolConfig(kind="thread", workers=2))


def test_handler_over_thrift() -> None:
    async def main() -> None:
        async with (
            WorkerFor(WORKER, handler=Echo()) as worker,
            AsyncClient(IDL, "Echo", worker.address, network=worker.network) as client,
        ):
            assert await client.call("add", a=2, b=3) == 5

    asyncio.run(main())


def test_gateway() -> None:
    async def main() -> None:
        async with WorkerFor(WORKER, handler=Echo()) as worker:
            config = GatewayConfig(idl=IDL, backends={"Echo": (worker.address,)})
            gateway = build_gateway(config, network=worker.network)
            app = httpx.ASGITransport(app=ASGIApp(gateway))  # starts it on the first request
            async with httpx.AsyncClient(transport=app, base_url="http://gateway") as http:
                r = await http.post("/rpc/Echo/add", json={"a": 2, "b": 3})
                assert (r.status_code, r.json()) == (200, {"result": 5})
                r = await http.post("/rpc/Echo/add", json={"a": "two", "b": 3})
                assert r.status_code == 400 and r.json()["error"]["path"] == "argument.a"
                r = await http.post("/rpc/Echo/fail", json={"why": "boom"})
                assert r.status_code == 502
                assert r.json()["error"]["message"] == "Echo.fail: backend error"
            await gateway.shutdown()

    asyncio.run(main())
