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
from collections.abc import AsyncIterator, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import faulty
import httpx
import pytest
from configs import override
from gates import Gate
from harness import calls_answered
from waiting import wait_until_async

from offloop.app.gateway import build_gateway
from offloop.client.actors import THREAD_PREFIX, ActorCaller, ActorCrashed
from offloop.client.balancer import HealthConfig
from offloop.client.blocking import BlockingClient
from offloop.client.errors import NotSentError
from offloop.errors import (
    Blame,
    BrokenError,
    ClosedError,
    ConnectError,
    DeadlineExceeded,
    OffloopError,
    Overloaded,
    RemoteApplicationError,
)
from offloop.gateway.asgi import ASGIApp
from offloop.gateway.config import GatewayConfig
from offloop.idl import load_idl, service_info
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
#: Seconds a test waits for a state it expects (bounds a hang, not a speed claim).
WAIT = 5.0


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a test coroutine on a fresh loop, failing it after ``TEST_DEADLINE`` seconds."""

    async def main() -> T:
        async with asyncio.timeout(TEST_DEADLINE):
            return await coro

    return asyncio.run(main())


def actor_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(THREAD_PREFIX) and t.is_alive()]


async def start_worker(port: int = 0, workers: int = 4) -> WorkerServer:
    server = WorkerServer(
        override(
            WorkerConfig(idl=IDL, service="TextLab", handler="faulty:Handler", grace=0.0),
            pool="thread",
            workers=workers,
            port=port,
            call_timeout=5.0,
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

    def busy_workers(self) -> int:
        """Calls the worker's pool runs now."""
        return self.worker.pool.stats().busy

    def in_flight(self) -> int:
        """Calls the caller's actors hold (running or queued) for the one backend."""
        (state,) = self.caller.backend_states()
        return state.in_flight

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
            served = [calls_answered(w, "ping") for w in (w1, w2)]
            assert sum(served) == 12 and all(served), f"calls per backend: {served}"
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


def test_loop_is_never_blocked_by_busy_actors(tmp_path: Path) -> None:
    async def main() -> None:
        async with bench(actors=8, workers=8) as b:
            loop = asyncio.get_running_loop()
            ticks = 0

            def tick() -> None:
                nonlocal ticks
                ticks += 1
                handle[0] = loop.call_later(0.01, tick)

            handle = [loop.call_later(0.01, tick)]
            with Gate(tmp_path) as gate:
                # A loop blocked by an actor could not open the gate itself: a timer thread
                # does, so that such a failure fails below instead of hanging.
                unblock = threading.Timer(WAIT, gate.open)
                unblock.start()
                try:
                    calls = [
                        asyncio.ensure_future(b.call("ping", msg=gate.message, timeout=2 * WAIT))
                        for _ in range(8)
                    ]
                    # Eight actors hold one call each, all running at the worker at once...
                    await wait_until_async(lambda: b.busy_workers() == 8, WAIT)
                    # ...and meanwhile the loop keeps turning and running its timers.
                    seen = ticks
                    await wait_until_async(lambda: ticks >= seen + 5, WAIT)
                    assert not any(c.done() for c in calls)
                    assert not gate.is_open, "the calls were held only by the timer's gate"
                finally:
                    unblock.cancel()
                    handle[0].cancel()
                gate.open()
                assert await asyncio.gather(*calls) == ["opened"] * 8

    run(main())


def test_all_actors_busy_is_overloaded_at_once(tmp_path: Path) -> None:
    async def main() -> None:
        async with bench(actors=2, mailbox=1) as b:
            with Gate(tmp_path) as gate:
                calls = [
                    asyncio.ensure_future(b.call("ping", msg=gate.message, timeout=2 * WAIT))
                    for _ in range(4)
                ]
                # 2 running (held at the worker), 2 queued.
                await wait_until_async(lambda: b.in_flight() == 4 and b.busy_workers() == 2, WAIT)
                with pytest.raises(Overloaded) as exc_info:
                    await b.call("ping", msg="one too many")
                # At once: refused while all four were still held (none can end before the gate
                # opens); a call that waited for a slot would have met its deadline instead.
                assert not any(c.done() for c in calls)
                assert isinstance(exc_info.value.__cause__, NotSentError)  # refused, not sent
                gate.open()
                assert await asyncio.gather(*calls) == ["opened"] * 4
                assert await b.call("ping", msg="room again") == "room again"

    run(main())


def test_deadline_cancels_the_call_and_no_stale_reply_is_taken(tmp_path: Path) -> None:
    async def main() -> None:
        async with bench(actors=1) as b:
            # Given up at its deadline while it still ran: it cannot end before its gate opens.
            with Gate(tmp_path) as gate, pytest.raises(DeadlineExceeded):
                await b.call("ping", msg=gate.message, timeout=0.1)
            # The actor's client sent a cancel and kept its connection; the worker counts the
            # call once its handler returns (cancelled, or timed out by its own clock: then
            # its late reply comes, and is dropped, never taken for the next call's).
            await wait_until_async(lambda: calls_answered(b.worker, "ping") == 1, WAIT)
            assert await b.call("ping", msg="first") == "first"
            assert await b.call("ping", msg="second") == "second"

    run(main())


def test_a_call_queued_past_its_deadline_is_not_run(tmp_path: Path) -> None:
    async def main() -> None:
        async with bench(actors=1, mailbox=2) as b:
            with Gate(tmp_path) as gate:
                held = asyncio.ensure_future(b.call("ping", msg=gate.message))
                await wait_until_async(lambda: b.busy_workers() == 1, WAIT)  # the actor is busy
                with pytest.raises(DeadlineExceeded):
                    await b.call("ping", msg="waits too long", timeout=0.05)
                gate.open()
                assert await held == "opened"
            # The actor has reported on both calls (it had sent the expired one, the count
            # would drop only once its reply came back)...
            await wait_until_async(lambda: b.in_flight() == 0, WAIT)
            # ...and the backend answered only the held call: the expired one never reached it.
            assert calls_answered(b.worker, "ping") == 1
            assert await b.call("ping", msg="next") == "next"
            assert calls_answered(b.worker, "ping") == 2

    run(main())


def test_cancelled_call_is_ignored_when_its_actor_finishes(tmp_path: Path) -> None:
    async def main() -> None:
        async with bench(actors=1) as b:
            with Gate(tmp_path) as gate:
                task = asyncio.ensure_future(b.call("ping", msg=gate.message))
                await wait_until_async(lambda: b.busy_workers() == 1, WAIT)  # in its actor
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
                assert b.in_flight() == 1  # the actor still holds it
            # The gate opens: the actor finishes the call, and nobody is there to take it.
            await wait_until_async(lambda: b.in_flight() == 0, WAIT)
            assert calls_answered(b.worker, "ping") == 1
            assert await b.call("ping", msg="after cancel") == "after cancel"

    run(main())


# -- failures ------------------------------------------------------------------------------


def test_backend_killed_mid_call_then_back(tmp_path: Path) -> None:
    async def main() -> None:
        async with bench(actors=2) as b:
            with Gate(tmp_path) as gate:
                assert await b.call("ping", msg="warm") == "warm"
                in_flight = asyncio.ensure_future(b.call("ping", msg=gate.message, timeout=WAIT))
                await wait_until_async(lambda: b.busy_workers() == 1, WAIT)
                port = b.worker.port
                await b.worker.shutdown(0)
                with pytest.raises(BrokenError) as exc_info:
                    await in_flight
                assert exc_info.value.blame is Blame.BACKEND
                (state,) = b.caller.backend_states()
                assert not state.up
                assert not b.caller.ready()
                # No backend is up: the down one is tried anyway, and refuses the connect.
                with pytest.raises(ConnectError) as refused:
                    await b.call("ping", msg="nobody home")
                assert refused.value.blame is Blame.BACKEND
                b.worker = await start_worker(port)
                await wait_until_async(b.caller.ready, WAIT)
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
            await wait_until_async(lambda: not b.caller.ready(), WAIT)  # the probe, not a call
            await wait_until_async(lambda: not any(c.connected for c in clients), WAIT)
            b.worker = await start_worker(port)
            await wait_until_async(b.caller.ready, WAIT)
            assert await b.call("ping", msg="back") == "back"

    run(main())


def test_close_interrupts_calls_in_flight(tmp_path: Path) -> None:
    async def main() -> None:
        worker = await start_worker()
        caller = ActorCaller({"TextLab": [("127.0.0.1", worker.port)]}, actors=1, mailbox=2)
        gate = Gate(tmp_path)
        try:
            await caller.start()
            method = SERVICE.methods["ping"]
            calls = [
                asyncio.ensure_future(
                    caller.call(
                        "TextLab",
                        method,
                        method.args_cls(msg=gate.message),
                        timeout=2 * WAIT,
                        idempotent=False,
                    )
                )
                for _ in range(2)
            ]
            # One call runs (held at the worker), the other is queued behind it.
            await wait_until_async(lambda: worker.pool.stats().busy == 1, WAIT)
            # close() returns with the call still held (it cannot end before the gate opens):
            # it interrupts calls in flight instead of waiting for them.
            await caller.close()
            outcomes = await asyncio.gather(*calls, return_exceptions=True)
            assert all(isinstance(o, ClosedError) for o in outcomes), outcomes
            assert not actor_threads()
            with pytest.raises(ClosedError):
                await caller.call(
                    "TextLab", method, method.args_cls(msg="late"), timeout=1, idempotent=False
                )
        finally:
            gate.open()
            await caller.close()
            await worker.shutdown(0)

    run(main())


def _inject_bug(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``ping("bug")`` raise an unexpected exception inside the actor, and
    ``ping("exit")`` a ``SystemExit``."""
    real = BlockingClient.call

    def buggy(
        self: BlockingClient, method: Any, args: Any, deadline: float, timeout: float, **kw: Any
    ) -> Any:
        if method.name == "ping" and args.msg == "bug":
            raise RuntimeError("injected bug")
        if method.name == "ping" and args.msg == "exit":
            raise SystemExit(3)
        return real(self, method, args, deadline, timeout, **kw)

    monkeypatch.setattr(BlockingClient, "call", buggy)


def test_crashed_actor_is_replaced(monkeypatch: pytest.MonkeyPatch) -> None:
    _inject_bug(monkeypatch)

    async def main() -> None:
        async with bench(actors=2) as b:
            before = {t.name for t in actor_threads()}
            with pytest.raises(ActorCrashed, match="injected bug") as exc_info:
                await b.call("ping", msg="bug")
            assert exc_info.value.blame is Blame.OFFLOOP  # a bug of ours
            assert b.caller.ready(), "a bug of ours must not take the backend out of rotation"
            await wait_until_async(
                lambda: b.caller.actor_count == 2 and len(actor_threads()) == 2, WAIT
            )
            assert {t.name for t in actor_threads()} == before
            assert await b.call("ping", msg="fine") == "fine"
            # A BaseException too kills only its own actor (Pykka would stop them all).
            with pytest.raises(ActorCrashed, match="SystemExit"):
                await b.call("ping", msg="exit")
            await wait_until_async(
                lambda: b.caller.actor_count == 2 and len(actor_threads()) == 2, WAIT
            )
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
            await wait_until_async(
                lambda: b.caller.actor_count == 1 and len(actor_threads()) == 1, WAIT
            )
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
                    # Once the batch's calls are with their actors.
                    await wait_until_async(lambda: b.in_flight() > 0, WAIT, interval=0)
                    await b.restart_worker()
                outcomes += await asyncio.gather(*calls)
                assert len(actor_threads()) <= actors
                await wait_until_async(
                    b.caller.ready, WAIT
                )  # else the next batches all fail in a blink
            assert len(outcomes) == 1000
            oks = [(k, v) for k, v in outcomes if k.startswith("ok:")]
            assert all(v == k[3:] for k, v in oks), "a reply reached the wrong call"
            assert len(oks) >= 300, f"only {len(oks)} calls succeeded"
            await wait_until_async(lambda: b.caller.actor_count == actors, WAIT)
            await wait_until_async(lambda: len(actor_threads()) == actors, WAIT)
            await wait_until_async(b.caller.ready, WAIT)
            assert await b.call("ping", msg="still here") == "still here"
            await wait_until_async(lambda: b.in_flight() == 0, WAIT)
            assert len(actor_threads()) == actors
        assert not actor_threads()

    run(main())


# -- the gateway in actor mode -------------------------------------------------------------


def test_gateway_in_actor_mode_end_to_end() -> None:
    async def main() -> None:
        worker = await start_worker()
        gateway = build_gateway(
            override(
                GatewayConfig(idl=IDL, backends={"*": (("127.0.0.1", worker.port),)}, mode="actor"),
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


class _Answers:
    """A resolver that answers the addresses the test set last (no DNS server needed)."""

    def __init__(self, answer: set[tuple[str, int]]) -> None:
        self.answer = answer

    async def resolve(self) -> tuple[frozenset[tuple[str, int]], float]:
        return frozenset(self.answer), 60.0


@pytest.mark.parametrize(("actors", "found", "each"), [(4, 10, None), (6, 2, 3)])
def test_actors_found_by_dns_never_exceed_the_count(
    actors: int, found: int, each: int | None
) -> None:
    # Item 7: a DNS answer of many backends must not multiply the threads.
    from offloop.client.targets import DnsTarget

    target = DnsTarget("workers.test", 9, ("127.0.0.1", 53))
    # Port 9 (discard) on loopback addresses: nothing listens; the actors connect lazily.
    answers = _Answers({(f"127.0.0.{n + 1}", 9) for n in range(found)})

    async def main() -> None:
        caller = ActorCaller(
            {"TextLab": [target]}, actors=actors, health=FAST_HEALTH, resolver=lambda t: answers
        )
        await caller.start()
        try:
            # Both cases fill the cap: 4 of 10 backends get one; 2 backends get 3 each.
            await wait_until_async(
                lambda: caller.actor_count == actors and len(actor_threads()) == actors,
                WAIT,
            )
            groups = caller._found
            assert len(groups) == found
            if each is not None:
                assert [len(g.slots) for g in groups] == [each] * found
            else:
                assert sorted(len(g.slots) for g in groups) == [0] * (found - actors) + [1] * actors
        finally:
            await caller.close()
        assert actor_threads() == []

    run(main())
