"""The actor-mode caller against real worker servers on 127.0.0.1.

Each test runs one coroutine with :func:`run` on a fresh asyncio loop, which hosts the worker
server(s) (thread pool, the faulty handler of ``tests/support``) and the caller; the actors'
blocking clients talk to the worker over real sockets. Everything a test starts is stopped
in a ``finally``, and no actor thread may outlive its test.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, TypeVar

import faulty
import httpx
import pytest

from offloop.actors import THREAD_PREFIX, ActorCaller, ActorCrashed, BlockingClient
from offloop.cli import build_gateway
from offloop.errors import (
    BrokenError,
    ClosedError,
    DeadlineExceeded,
    OffloopError,
    Overloaded,
    RemoteApplicationError,
    TransportError,
)
from offloop.gateway.asgi import ASGIApp
from offloop.gateway.config import GatewayConfig
from offloop.idl import load_idl, service_info
from offloop.rpc.balancer import HealthConfig
from offloop.worker.config import WorkerConfig
from offloop.worker.server import WorkerServer

T = TypeVar("T")

IDL: str = faulty.IDL
textlab = load_idl(IDL)
SERVICE = service_info(textlab, "TextLab")

#: Seconds a whole test coroutine may take (the file must stay well under 30 s).
TEST_DEADLINE = 20.0
#: Probing fast enough that a restarted backend is back within a few tenths of a second.
FAST_HEALTH = HealthConfig(probe_min=0.05, probe_max=0.2, connect_timeout=0.2)


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a test coroutine on a fresh loop, failing it after ``TEST_DEADLINE`` seconds."""

    async def main() -> T:
        async with asyncio.timeout(TEST_DEADLINE):
            return await coro

    return asyncio.run(main())


def actor_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(THREAD_PREFIX) and t.is_alive()]


async def wait_for(predicate: Callable[[], Any], timeout: float = 3.0) -> None:
    """Poll ``predicate`` on the loop until it is true; fail after ``timeout`` seconds."""
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, f"condition not met within {timeout} s"
        await asyncio.sleep(0.02)


async def start_worker(port: int = 0, workers: int = 4) -> WorkerServer:
    server = WorkerServer(
        WorkerConfig(
            idl=IDL,
            service="TextLab",
            handler="faulty:Handler",
            pool="thread",
            workers=workers,
            port=port,
            call_timeout=5.0,
            grace=0.0,
            nice=0,
        )
    )
    await server.start()
    return server


class Bench:
    """A worker and an actor caller in front of it, on the running loop."""

    def __init__(self, worker: WorkerServer, caller: ActorCaller) -> None:
        self.worker = worker
        self.caller = caller

    async def call(self, name: str, *, timeout: float = 3.0, **kwargs: Any) -> Any:
        method = SERVICE.methods[name]
        return await self.caller.call(
            "TextLab", method, method.args_cls(**kwargs), timeout=timeout, idempotent=False
        )

    async def restart_worker(self) -> None:
        """Kill the worker (no grace: calls in flight lose their connection), start a new one
        on the same port."""
        port = self.worker.port
        await self.worker.shutdown(0)
        self.worker = await start_worker(port)


@contextlib.asynccontextmanager
async def bench(actors: int = 4, mailbox: int = 4, workers: int = 4) -> AsyncIterator[Bench]:
    worker = await start_worker(workers=workers)
    caller = ActorCaller(
        {"TextLab": [("127.0.0.1", worker.port)]},
        actors=actors,
        mailbox=mailbox,
        health=FAST_HEALTH,
    )
    b = Bench(worker, caller)
    try:
        await caller.start()
        yield b
    finally:
        await caller.close()
        await b.worker.shutdown(0)
    assert not actor_threads(), "actor threads outlived close()"


# -- calls ---------------------------------------------------------------------------------


def test_calls_work() -> None:
    async def main() -> None:
        async with bench(actors=2) as b:
            assert len(actor_threads()) == 2
            assert await b.call("ping", msg="hello") == "hello"
            with pytest.raises(textlab.ParseError) as parse_error:
                await b.call("parse", sentence="colorless green")
            assert parse_error.value.unknown_words == ["x"]
            with pytest.raises(RemoteApplicationError, match="ValueError: boom"):
                await b.call("ping", msg="raise")
            assert await b.call("sleep", millis=1) == 1.0
            assert b.caller.ready()
            (state,) = b.caller.backend_states()
            assert (state.service, state.up, state.in_flight) == ("TextLab", True, 0)

    run(main())


def test_actors_spread_over_backends_and_unknown_service() -> None:
    async def main() -> None:
        w1, w2 = await start_worker(), await start_worker()
        caller = ActorCaller(
            {"TextLab": [("127.0.0.1", w1.port), ("127.0.0.1", w2.port)]}, actors=3
        )
        try:
            await caller.start()
            assert len(actor_threads()) == 3
            method = SERVICE.methods["ping"]
            results = await asyncio.gather(
                *(
                    caller.call(
                        "TextLab", method, method.args_cls(msg="pid"), timeout=3, idempotent=False
                    )
                    for _ in range(12)
                )
            )
            assert len(results) == 12
            with pytest.raises(OffloopError, match="no backend is configured"):
                await caller.call(
                    "Nope", method, method.args_cls(msg="x"), timeout=1, idempotent=False
                )
        finally:
            await caller.close()
            await w1.shutdown(0)
            await w2.shutdown(0)
        assert not actor_threads()

    run(main())


def test_loop_is_never_blocked_by_busy_actors() -> None:
    async def main() -> None:
        async with bench(actors=8, workers=8) as b:
            loop = asyncio.get_running_loop()
            ticks = 0

            def tick() -> None:
                nonlocal ticks
                ticks += 1
                handle[0] = loop.call_later(0.01, tick)

            handle = [loop.call_later(0.01, tick)]
            started = time.monotonic()
            try:
                results = await asyncio.gather(*(b.call("sleep", millis=300) for _ in range(8)))
            finally:
                handle[0].cancel()
            elapsed = time.monotonic() - started
            assert results == [300.0] * 8
            assert elapsed < 1.0, f"8 actors ran 8 calls of 0.3 s in {elapsed:.2f} s"
            # 30 ticks fit in 0.3 s; a loop blocked on an actor would turn once or twice.
            assert ticks >= 15, f"the loop ticked {ticks} times in {elapsed:.2f} s"

    run(main())


def test_all_actors_busy_is_overloaded_at_once() -> None:
    async def main() -> None:
        async with bench(actors=2, mailbox=1) as b:
            calls = [asyncio.ensure_future(b.call("sleep", millis=250)) for _ in range(4)]
            await asyncio.sleep(0.05)
            (state,) = b.caller.backend_states()
            assert state.in_flight == 4  # 2 running, 2 queued
            started = time.monotonic()
            with pytest.raises(Overloaded) as exc_info:
                await b.call("ping", msg="one too many")
            assert time.monotonic() - started < 0.05
            assert exc_info.value.status_hint == 503
            assert await asyncio.gather(*calls) == [250.0] * 4
            assert await b.call("ping", msg="room again") == "room again"

    run(main())


def test_deadline_resets_the_client_and_no_stale_reply_arrives() -> None:
    async def main() -> None:
        async with bench(actors=1) as b:
            started = time.monotonic()
            with pytest.raises(DeadlineExceeded):
                await b.call("sleep", millis=300, timeout=0.1)
            assert time.monotonic() - started < 0.3
            # The late sleep reply lands on the old socket, which the actor has closed.
            await asyncio.sleep(0.35)
            assert await b.call("ping", msg="first") == "first"
            assert await b.call("ping", msg="second") == "second"

    run(main())


def test_a_call_queued_past_its_deadline_is_not_run() -> None:
    async def main() -> None:
        async with bench(actors=1, mailbox=2) as b:
            slow = asyncio.ensure_future(b.call("sleep", millis=300))
            await asyncio.sleep(0.02)
            with pytest.raises(DeadlineExceeded):
                await b.call("ping", msg="waits too long", timeout=0.05)
            assert await slow == 300.0
            await wait_for(lambda: b.caller.backend_states()[0].in_flight == 0, timeout=0.2)
            assert await b.call("ping", msg="next") == "next"

    run(main())


def test_cancelled_call_is_ignored_when_its_actor_finishes() -> None:
    async def main() -> None:
        async with bench(actors=1) as b:
            task = asyncio.ensure_future(b.call("sleep", millis=100))
            await asyncio.sleep(0.02)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await wait_for(lambda: b.caller.backend_states()[0].in_flight == 0)
            assert await b.call("ping", msg="after cancel") == "after cancel"

    run(main())


# -- failures ------------------------------------------------------------------------------


def test_backend_killed_mid_call_then_back() -> None:
    async def main() -> None:
        async with bench(actors=2) as b:
            assert await b.call("ping", msg="warm") == "warm"
            in_flight = asyncio.ensure_future(b.call("sleep", millis=1000, timeout=5.0))
            await asyncio.sleep(0.1)
            port = b.worker.port
            await b.worker.shutdown(0)
            with pytest.raises(BrokenError) as exc_info:
                await in_flight
            assert exc_info.value.status_hint == 502
            (state,) = b.caller.backend_states()
            assert not state.up
            assert not b.caller.ready()
            with pytest.raises(TransportError) as down:  # NoBackendError: 503
                await b.call("ping", msg="nobody home")
            assert down.value.status_hint == 503
            b.worker = await start_worker(port)
            await wait_for(b.caller.ready)
            assert await b.call("ping", msg="back") == "back"
            assert len(actor_threads()) == 2

    run(main())


def test_backend_dying_while_idle_is_probed_down_and_its_sockets_dropped() -> None:
    async def main() -> None:
        async with bench(actors=2) as b:
            await asyncio.gather(*(b.call("sleep", millis=20) for _ in range(2)))
            clients = [slot.link.client for slot in b.caller._slots if slot.link is not None]
            assert all(c.connected for c in clients)
            port = b.worker.port
            await b.worker.shutdown(0)
            await wait_for(lambda: not b.caller.ready())  # the probe, not a call
            await wait_for(lambda: not any(c.connected for c in clients))
            b.worker = await start_worker(port)
            await wait_for(b.caller.ready)
            assert await b.call("ping", msg="back") == "back"

    run(main())


def test_close_interrupts_calls_in_flight() -> None:
    async def main() -> None:
        worker = await start_worker()
        caller = ActorCaller({"TextLab": [("127.0.0.1", worker.port)]}, actors=1, mailbox=2)
        try:
            await caller.start()
            method = SERVICE.methods["sleep"]
            calls = [
                asyncio.ensure_future(
                    caller.call(
                        "TextLab",
                        method,
                        method.args_cls(millis=3000),
                        timeout=5,
                        idempotent=False,
                    )
                )
                for _ in range(2)
            ]
            await asyncio.sleep(0.1)
            started = time.monotonic()
            await caller.close()
            assert time.monotonic() - started < 1.0
            outcomes = await asyncio.gather(*calls, return_exceptions=True)
            assert all(isinstance(o, ClosedError) for o in outcomes), outcomes
            assert not actor_threads()
            with pytest.raises(ClosedError):
                await caller.call(
                    "TextLab", method, method.args_cls(millis=1), timeout=1, idempotent=False
                )
        finally:
            await caller.close()
            await worker.shutdown(0)

    run(main())


def _inject_bug(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``ping("bug")`` raise an unexpected exception inside the actor, and
    ``ping("exit")`` a ``SystemExit``."""
    real = BlockingClient.call

    def buggy(self: BlockingClient, method: Any, args: Any, deadline: float, timeout: float) -> Any:
        if method.name == "ping" and args.msg == "bug":
            raise RuntimeError("injected bug")
        if method.name == "ping" and args.msg == "exit":
            raise SystemExit(3)
        return real(self, method, args, deadline, timeout)

    monkeypatch.setattr(BlockingClient, "call", buggy)


def test_crashed_actor_is_replaced(monkeypatch: pytest.MonkeyPatch) -> None:
    _inject_bug(monkeypatch)

    async def main() -> None:
        async with bench(actors=2) as b:
            before = {t.name for t in actor_threads()}
            with pytest.raises(ActorCrashed, match="injected bug") as exc_info:
                await b.call("ping", msg="bug")
            assert exc_info.value.status_hint == 500
            assert b.caller.ready(), "a bug of ours must not take the backend out of rotation"
            await wait_for(lambda: b.caller.actor_count == 2 and len(actor_threads()) == 2)
            assert {t.name for t in actor_threads()} == before
            assert await b.call("ping", msg="fine") == "fine"
            # A BaseException too kills only its own actor (Pykka would stop them all).
            with pytest.raises(ActorCrashed, match="SystemExit"):
                await b.call("ping", msg="exit")
            await wait_for(lambda: b.caller.actor_count == 2 and len(actor_threads()) == 2)
            results = await asyncio.gather(*(b.call("ping", msg=str(i)) for i in range(8)))
            assert results == [str(i) for i in range(8)]

    run(main())


def test_calls_queued_behind_a_crash_are_not_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    _inject_bug(monkeypatch)

    async def main() -> None:
        async with bench(actors=1, mailbox=2) as b:
            crash = asyncio.ensure_future(b.call("ping", msg="bug"))
            queued = asyncio.ensure_future(b.call("ping", msg="behind the bug"))
            outcomes = await asyncio.gather(crash, queued, return_exceptions=True)
            assert isinstance(outcomes[0], ActorCrashed)
            # Never sent: refused like a full mailbox (503), whether it was queued or found
            # the actor dead.
            assert isinstance(outcomes[1], Overloaded), outcomes[1]
            await wait_for(lambda: b.caller.actor_count == 1 and len(actor_threads()) == 1)
            assert await b.call("ping", msg="replaced") == "replaced"

    run(main())


def test_thousand_calls_with_failures_keep_exactly_the_actor_threads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _inject_bug(monkeypatch)
    actors = 4

    async def one(b: Bench, i: int) -> tuple[str, Any]:
        kind = i % 10
        try:
            if i % 97 == 0:
                return "bug", await b.call("ping", msg="bug")
            if kind == 0:
                return "raise", await b.call("ping", msg="raise")
            if kind == 1:
                return "timeout", await b.call("sleep", millis=40, timeout=0.01)
            if kind == 2:
                return "parse", await b.call("parse", sentence="xyzzy")
            return f"ok:{i}", await b.call("ping", msg=str(i))
        except (OffloopError, textlab.ParseError) as exc:
            return "error", exc

    async def main() -> None:
        async with bench(actors=actors, mailbox=4) as b:
            outcomes: list[tuple[str, Any]] = []
            for batch in range(50):
                calls = [asyncio.ensure_future(one(b, batch * 20 + j)) for j in range(20)]
                if batch in (20, 35):  # kill the backend under the calls of this batch
                    await asyncio.sleep(0.005)
                    await b.restart_worker()
                outcomes += await asyncio.gather(*calls)
                assert len(actor_threads()) <= actors
                await wait_for(b.caller.ready)  # else the next batches all fail in a blink
            assert len(outcomes) == 1000
            oks = [(k, v) for k, v in outcomes if k.startswith("ok:")]
            assert all(v == k[3:] for k, v in oks), "a reply reached the wrong call"
            assert len(oks) >= 300, f"only {len(oks)} calls succeeded"
            await wait_for(lambda: b.caller.actor_count == actors)
            await wait_for(lambda: len(actor_threads()) == actors)
            await wait_for(b.caller.ready)
            assert await b.call("ping", msg="still here") == "still here"
            await wait_for(lambda: b.caller.backend_states()[0].in_flight == 0)
            assert len(actor_threads()) == actors
        assert not actor_threads()

    run(main())


# -- the gateway in actor mode -------------------------------------------------------------


def test_gateway_in_actor_mode_end_to_end() -> None:
    async def main() -> None:
        worker = await start_worker()
        gateway = build_gateway(
            GatewayConfig(
                idl=IDL,
                backends={"*": (("127.0.0.1", worker.port),)},
                mode="actor",
                actors=4,
                watchdog=False,
            )
        )
        assert isinstance(gateway.caller, ActorCaller)
        try:
            transport = httpx.ASGITransport(app=ASGIApp(gateway))
            async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
                r = await client.post("/rpc/TextLab/ping", json={"msg": "hi"})
                assert (r.status_code, r.json()) == (200, {"result": "hi"})
                r = await client.post("/rpc/TextLab/parse", json={"sentence": "zzz"})
                assert r.status_code == 422
                assert r.json()["error"]["type"] == "ParseError"
                r = await client.post("/rpc/TextLab/ping", json={"msg": "raise"})
                assert r.status_code == 502
                r = await client.post(
                    "/rpc/TextLab/sleep",
                    json={"millis": 500},
                    headers={"x-request-timeout": "0.1"},
                )
                assert r.status_code == 504
                r = await client.get("/readyz")
                assert r.status_code == 200 and r.json()["ready"] is True
                assert len(actor_threads()) == 4
        finally:
            await gateway.shutdown(grace=0)
            await worker.shutdown(0)
        assert not actor_threads()

    run(main())
