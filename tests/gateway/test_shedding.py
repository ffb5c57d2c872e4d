"""The gateway sheds load it cannot pass on (issue 11): in a storm of calls beyond what the
backends admit, it refuses them itself, at once and before parsing them, instead of paying a
round trip to a worker for each refusal (item 10); and a burst on a cold gateway, or right
after a backend restarts, is carried as the connections open instead of being half refused
(item 11).

The in-memory tests drive the gateway core without sockets; the others run every HTTP server
and both gateway modes over real sockets. All of them count (calls the worker refused,
statuses), none of them times anything.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import threading
from collections import Counter
from collections.abc import AsyncIterator, Coroutine
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import faulty
from configs import override
from gates import Gate
from gateway_stack import GatewayFactory, Stack
from harness import calls_answered
from waiting import wait_until, wait_until_async

from offloop import GatewayConfig, WorkerConfig, build_gateway
from offloop.client.network import Network, ProtocolFactory
from offloop.gateway.core import Gateway, Request, Response
from offloop.testing import MemoryNetwork, WorkerFor
from offloop.worker.server import WorkerServer

T = TypeVar("T")

JSON_TYPE = "application/json"
JSON = {"content-type": JSON_TYPE}
#: Seconds within which a stopped backend is seen down, and a restarted one up (the
#: balancer probes every second).
RECOVERY = 3.0
#: A small pool (4 connections of 8 calls), so that a burst larger than one connection
#: takes is quick to make.
SMALL_POOL = {"client.max_in_flight": 8, "client.pool_size": 4, "front.max_inflight": 64}
BURST = 32


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


def refused_by(server: WorkerServer) -> int:
    """Calls the worker answered ``overloaded``, each one a round trip of the gateway's: refused
    by its pool, or past a connection's share of a full pool."""
    return int(calls_answered(server, "ping", "overloaded"))


def admitted_now(server: WorkerServer) -> int:
    admission = server.pool.stats().admission
    assert admission is not None
    return admission.borrowed


def connections_to(server: WorkerServer) -> float:
    """Client connections the worker has open."""
    for family in server.metrics.registry.collect():
        for sample in family.samples:
            if sample.name == "offloop_worker_connections":
                return sample.value
    raise AssertionError("no offloop_worker_connections gauge")


def opened_eagerly(stack: Stack, server: WorkerServer) -> None:
    """In loop mode, wait for the connections the gateway opens with no call made (its pool
    of four): then calls held on two of them leave the others free. Actor mode connects
    each actor on its first call."""
    if stack.mode == "loop":
        wait_until(lambda: connections_to(server) >= 4, 10)


@asynccontextmanager
async def gateway_on(
    network: Network, address: tuple[str, int], **overrides: Any
) -> AsyncIterator[Gateway]:
    config = override(
        GatewayConfig(idl=faulty.IDL, backends={"*": (address,)}),
        watchdog=False,
        **overrides,
    )
    gateway = build_gateway(config, network=network)
    await gateway.startup()
    try:
        yield gateway
    finally:
        await gateway.shutdown(0)


async def post(gateway: Gateway, method: str, body: Any) -> Response:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return await gateway.handle(Request("POST", f"/rpc/TextLab/{method}", JSON, raw))


async def wave(gateway: Gateway, n: int, method: str = "ping") -> Counter[int]:
    replies = await asyncio.gather(*(post(gateway, method, {"msg": str(i)}) for i in range(n)))
    return Counter(r.status for r in replies)


class Switch:
    """A network with one fixed address that reaches whichever in-memory worker it is
    switched to: a backend restarting on the same address."""

    ADDRESS = ("switch", 1)

    def __init__(self, memory: MemoryNetwork) -> None:
        self.memory = memory
        self.to: tuple[str, int] | None = None

    async def connect(self, factory: ProtocolFactory, host: str, port: int) -> None:
        if self.to is None:
            raise ConnectionRefusedError("nothing behind the switch")
        await self.memory.connect(factory, *self.to)


# -- item 10: a storm, in memory -------------------------------------------------------------


def test_a_storm_is_refused_by_the_gateway_without_a_round_trip(tmp_path: Path) -> None:
    async def main() -> None:
        # Two threads, no queue: the worker admits two calls and refuses the rest.
        worker = WorkerFor(worker_config(workers=2, max_queued=0), handler=faulty.Handler())
        async with worker, gateway_on(worker.network, worker.address) as gateway:
            server = worker.server
            with Gate(tmp_path) as gate:
                held = [asyncio.ensure_future(post(gateway, "ping", {"msg": gate.message}))]
                held.append(asyncio.ensure_future(post(gateway, "ping", {"msg": gate.message})))
                await wait_until_async(lambda: admitted_now(server) == 2, 10)
                # The first wave is sent, and refused by the worker: that teaches the gateway.
                assert await wave(gateway, 20) == {503: 20}
                taught = refused_by(server)
                assert taught == 20
                # From then on the gateway refuses by itself while the backend is full.
                for _ in range(3):
                    assert await wave(gateway, 20) == {503: 20}
                assert refused_by(server) == taught
                shed = await post(gateway, "ping", {"msg": "x"})
                assert shed.status == 503
                assert ("retry-after", "1") in shed.headers
                assert json.loads(shed.body)["error"]["message"] == (
                    "overloaded: every backend is at its limit"
                )
                # Refused before its body is even parsed: this one would be a 400.
                assert (await post(gateway, "ping", b"{not json")).status == 503
                gate.open()
                assert [r.status for r in await asyncio.gather(*held)] == [200, 200]
            # Room again: nothing is refused, and nothing more reached the worker refused.
            assert await wave(gateway, 2) == {200: 2}
            assert (await post(gateway, "ping", b"{not json")).status == 400
            assert refused_by(server) == taught

    run(main())


# -- item 11: a burst, in memory -------------------------------------------------------------


def test_a_burst_on_a_cold_gateway_is_answered_whole() -> None:
    async def main() -> None:
        config = worker_config(workers=4, max_queued=4 * BURST)
        worker = WorkerFor(config, handler=faulty.Handler())
        async with worker, gateway_on(worker.network, worker.address, **SMALL_POOL) as gateway:
            assert await wave(gateway, BURST) == {200: BURST}
            assert refused_by(worker.server) == 0

    run(main())


def test_a_burst_right_after_a_backend_restart_is_answered_whole() -> None:
    async def main() -> None:
        memory = MemoryNetwork()
        switch = Switch(memory)
        config = worker_config(workers=4, max_queued=4 * BURST)
        workers = [WorkerFor(config, handler=faulty.Handler(), network=memory)]
        await workers[0].__aenter__()
        switch.to = workers[0].address
        try:
            async with gateway_on(switch, Switch.ADDRESS, **SMALL_POOL) as gateway:
                assert await wave(gateway, BURST) == {200: BURST}
                # The worker goes (its connections are aborted), a new one takes its address,
                # and the burst comes as soon as it listens.
                switch.to = None
                await workers[0].__aexit__(None, None, None)
                workers.append(WorkerFor(config, handler=faulty.Handler(), network=memory))
                await workers[1].__aenter__()
                switch.to = workers[1].address
                assert await wave(gateway, BURST) == {200: BURST}
        finally:
            for worker in workers:
                await worker.__aexit__(None, None, None)

    run(main())


# -- over real sockets: every HTTP server, both modes ----------------------------------------


def concurrently(stack: Stack, n: int) -> Counter[int]:
    """``n`` calls of ``ping`` at once, each from its own thread and connection (plain
    ``http.client``: no TLS context to build, which would hold the GIL, and the gateway's
    loop with it, for a long while)."""
    port = int(stack.url.rsplit(":", 1)[1])
    conns = [http.client.HTTPConnection("127.0.0.1", port, timeout=10.0) for _ in range(n)]
    start = threading.Barrier(n)

    def one(i: int) -> int:
        conn = conns[i]
        body = json.dumps({"msg": str(i)})
        start.wait(10)
        conn.request("POST", "/rpc/TextLab/ping", body, {"content-type": "application/json"})
        return conn.getresponse().status

    try:
        with ThreadPoolExecutor(n) as pool:
            return Counter(pool.map(one, range(n)))
    finally:
        for conn in conns:
            conn.close()


def hold(stack: Stack, gate: Gate, n: int) -> tuple[ThreadPoolExecutor, list[Any]]:
    """``n`` calls held running behind ``gate``."""
    pool = ThreadPoolExecutor(n)
    return pool, [pool.submit(stack.call, "ping", {"msg": gate.message}) for _ in range(n)]


def test_storm_is_shed_at_the_gateway_in_every_mode(
    gateway_factory: GatewayFactory, tmp_path: Path
) -> None:
    stack = gateway_factory(worker={"workers": 2, "max_queued": 0})
    (server,) = stack.workers
    opened_eagerly(stack, server)
    with Gate(tmp_path) as gate:
        pool, held = hold(stack, gate, 2)
        with pool:
            wait_until(lambda: admitted_now(server) == 2, 10)
            first = concurrently(stack, 10)
            assert first == {503: 10}
            taught = refused_by(server)
            assert 1 <= taught <= 10
            for _ in range(3):
                assert concurrently(stack, 10) == {503: 10}
            # Refused before its body is parsed (this one would be a 400), in both modes.
            shed = stack.client.post(
                "/rpc/TextLab/ping", content=b"{not json", headers={"content-type": JSON_TYPE}
            )
            assert shed.status_code == 503 and shed.headers["retry-after"] == "1"
            # No refusal cost the worker anything once it had refused one.
            assert refused_by(server) == taught
            gate.open()
            assert [f.result().status_code for f in held] == [200, 200]
    assert concurrently(stack, 2) == {200: 2}
    assert refused_by(server) == taught


def test_a_backend_restarted_bigger_gets_its_new_capacity(
    gateway_factory: GatewayFactory, tmp_path: Path
) -> None:
    stack = gateway_factory(worker={"workers": 2, "max_queued": 0})
    (server,) = stack.workers
    opened_eagerly(stack, server)
    with Gate(tmp_path, "small") as gate:
        pool, held = hold(stack, gate, 2)
        with pool:
            wait_until(lambda: admitted_now(server) == 2, 10)
            assert concurrently(stack, 4) == {503: 4}  # the gateway learns: two at a time
            gate.open()
            assert [f.result().status_code for f in held] == [200, 200]
    port = server.port
    stack.stop_worker(server)
    wait_until(lambda: stack.backend_up(server) == 0, RECOVERY)
    bigger = stack.start_worker(override(server.config, port=port, workers=6))
    wait_until(lambda: stack.backend_up(bigger) == 1, RECOVERY)
    opened_eagerly(stack, bigger)  # the pool reopened its connections once it was back
    with Gate(tmp_path, "big") as gate:
        pool, held = hold(stack, gate, 6)
        with pool:
            # All six are taken by the new worker: the old limit of two was forgotten.
            wait_until(lambda: admitted_now(bigger) == 6, 10)
            assert refused_by(bigger) == 0
            gate.open()
            assert [f.result().status_code for f in held] == [200] * 6
