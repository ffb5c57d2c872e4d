"""Shedding load in the client tier, in memory (no sockets): a backend's capacity learned from
its refusals so that a storm costs it no round trip per refused call (issue 11, item 10), and
a burst on a cold or restarted pool that waits for the connections being opened instead of
being refused (item 11).

Everything here is counted, never timed: calls refused by the worker (its admission
limiter's ``refused``), calls shed before anything was sent, calls answered.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from pathlib import Path
from typing import Any

import faulty
import pytest
from configs import override
from gates import Gate
from harness import calls_answered
from waiting import wait_until_async

from offloop.client.balancer import Backend, Balancer, Capacity, HealthConfig
from offloop.client.caller import AsyncCaller, BackendState, call_with_retries, shedding
from offloop.client.config import ClientConfig
from offloop.client.errors import NotSentOverloaded
from offloop.client.network import ProtocolFactory
from offloop.client.pool import ConnectionPool
from offloop.errors import Overloaded, ShuttingDown
from offloop.idl import ServiceInfo
from offloop.testing import MemoryNetwork, WorkerFor
from offloop.worker.config import WorkerConfig
from offloop.worker.server import WorkerServer

#: Seconds a test waits for a state it expects (bounds a hang, not a speed claim).
WAIT = 5.0
#: Probes often, so that a backend is seen down and back within the test's bounds.
FAST_HEALTH = HealthConfig(probe_min=0.01, probe_max=0.05, connect_timeout=0.5)
#: A small pool, so that a burst larger than one connection's limit is quick to make.
SMALL_POOL = ClientConfig(max_in_flight=8, pool_size=4)
BURST = SMALL_POOL.max_in_flight * SMALL_POOL.pool_size


def worker_config(**overrides: Any) -> WorkerConfig:
    settings: dict[str, Any] = {"pool": "thread", "workers": 2, "nice": 0, "call_timeout": 5.0}
    return override(
        WorkerConfig(idl=faulty.IDL, service="TextLab", grace=0.0), **{**settings, **overrides}
    )


def refused_by(worker: WorkerFor | WorkerServer) -> int:
    """Calls the worker answered ``overloaded`` (each one cost a round trip): refused by its
    pool, or past a connection's share of a full pool."""
    server = worker.server if isinstance(worker, WorkerFor) else worker
    return int(calls_answered(server, "ping", "overloaded"))


def admitted_now(worker: WorkerFor) -> int:
    admission = worker.server.pool.stats().admission
    assert admission is not None
    return admission.borrowed


async def ping(caller: AsyncCaller, service: ServiceInfo, msg: str) -> Any:
    method = service.methods["ping"]
    return await caller.call(
        "TextLab", method, method.args_cls(msg=msg), timeout=WAIT, idempotent=False
    )


async def burst(n: int, make: Any) -> list[Any]:
    return await asyncio.gather(*(make(i) for i in range(n)), return_exceptions=True)


def tally(outcomes: list[Any]) -> Counter[str]:
    """How many were answered, and how many failed with each error class."""
    return Counter(
        type(r).__name__ if isinstance(r, BaseException) else "answered" for r in outcomes
    )


class Switch:
    """A :class:`~offloop.client.network.Network` with one fixed address that reaches whichever
    in-memory worker it is switched to: a backend restarting on the same address."""

    ADDRESS = ("switch", 1)

    def __init__(self, memory: MemoryNetwork) -> None:
        self.memory = memory
        self.to: tuple[str, int] | None = None

    async def connect(self, factory: ProtocolFactory, host: str, port: int) -> None:
        if self.to is None:
            raise ConnectionRefusedError("nothing behind the switch")
        await self.memory.connect(factory, *self.to)


# -- item 10: a storm of calls beyond a backend's admission ---------------------------------


def test_a_storm_costs_the_backend_no_round_trip_once_its_limit_is_known(
    run: Any, service: ServiceInfo, tmp_path: Path
) -> None:
    async def main() -> None:
        # Two threads, no queue: the worker admits two calls and refuses the rest (with no
        # queue, each connection may also carry the whole admission: nothing is held unread).
        async with WorkerFor(worker_config(workers=2, max_queued=0), handler=faulty.Handler()) as w:
            caller = AsyncCaller({"TextLab": [w.address]}, network=w.network)
            await caller.start()
            held: list[asyncio.Future[Any]] = []
            try:
                with Gate(tmp_path) as gate:
                    held = [
                        asyncio.ensure_future(ping(caller, service, gate.message)) for _ in range(2)
                    ]
                    await wait_until_async(lambda: admitted_now(w) == 2, WAIT)
                    # The first wave teaches the caller the backend's limit: each of its
                    # calls was sent before any refusal came back, and is refused by the worker.
                    wave = await burst(20, lambda i: ping(caller, service, f"w0-{i}"))
                    assert tally(wave) == {"Overloaded": 20}
                    assert refused_by(w) == 20
                    # The next waves are refused here, before anything is sent, while the
                    # backend is full: the worker sees none of them.
                    for n in range(1, 4):
                        wave = await burst(20, lambda i, n=n: ping(caller, service, f"w{n}-{i}"))
                        assert tally(wave) == {"NotSentOverloaded": 20}
                    assert refused_by(w) == 20
                    gate.open()
                    assert await asyncio.gather(*held) == ["opened", "opened"]
                # Capacity is free again: nothing is refused.
                again = await burst(2, lambda i: ping(caller, service, f"after-{i}"))
                assert again == ["after-0", "after-1"]
                assert refused_by(w) == 20
            finally:
                await caller.close()
                await asyncio.gather(*held, return_exceptions=True)

    run(main())


# -- item 11: a burst on a cold or restarted pool -------------------------------------------


def test_a_burst_on_a_cold_pool_waits_for_the_connections_being_opened(
    run: Any, service: ServiceInfo
) -> None:
    async def main() -> None:
        config = worker_config(workers=4, max_queued=4 * BURST)
        async with WorkerFor(config, handler=faulty.Handler()) as w:
            pool = ConnectionPool(*w.address, SMALL_POOL, size=4, network=w.network)
            ping = service.methods["ping"]
            sleep = service.methods["sleep"]
            held: list[asyncio.Future[Any]] = []
            try:
                # More calls at once than one connection takes, on a pool with none open.
                replies = await burst(
                    BURST, lambda i: pool.call(ping, ping.args_cls(msg=str(i)), timeout=WAIT)
                )
                assert tally(replies) == {"answered": BURST}
                assert pool.connections == 4
                # Full still means full: every connection at its limit, none left to open.
                held = [
                    asyncio.ensure_future(
                        pool.call(sleep, sleep.args_cls(millis=200), timeout=WAIT)
                    )
                    for _ in range(BURST)
                ]
                await wait_until_async(lambda: pool.in_flight == BURST, WAIT)
                with pytest.raises(NotSentOverloaded):
                    await pool.call(ping, ping.args_cls(msg="one too many"), timeout=WAIT)
                assert tally(await asyncio.gather(*held)) == {"answered": BURST}
            finally:
                await pool.close()
                await asyncio.gather(*held, return_exceptions=True)

    run(main())


@pytest.mark.parametrize("when", ["cold", "warm", "restarted"])
def test_a_burst_is_answered_cold_warm_and_right_after_a_restart(
    run: Any, service: ServiceInfo, when: str
) -> None:
    async def main() -> None:
        memory = MemoryNetwork()
        switch = Switch(memory)
        config = worker_config(workers=4, max_queued=4 * BURST)
        workers = [WorkerFor(config, handler=faulty.Handler(), network=memory)]
        await workers[0].__aenter__()
        switch.to = workers[0].address
        caller = AsyncCaller(
            {"TextLab": [Switch.ADDRESS]}, SMALL_POOL, health=FAST_HEALTH, network=switch
        )
        try:
            await caller.start()
            if when in ("warm", "restarted"):
                first = await burst(BURST, lambda i: ping(caller, service, str(i)))
                assert tally(first) == {"answered": BURST}
            if when == "restarted":
                # The worker goes (its connections are aborted) and a new one takes its
                # address; the burst comes as soon as the new one listens.
                switch.to = None
                await workers[0].__aexit__(None, None, None)
                workers.append(WorkerFor(config, handler=faulty.Handler(), network=memory))
                await workers[1].__aenter__()
                switch.to = workers[1].address
            replies = await burst(BURST, lambda i: ping(caller, service, str(i)))
            assert tally(replies) == {"answered": BURST}
            assert replies == [str(i) for i in range(BURST)]
        finally:
            await caller.close()
            for worker in workers:
                await worker.__aexit__(None, None, None)

    run(main())


# -- the parts: capacity maths, the balancer, the retry loop --------------------------------


def test_capacity_is_learned_from_refusals_and_grows_back_by_one() -> None:
    cap = Capacity()
    assert cap.limit is None and cap.has_room(10_000)
    cap.refused(in_flight=7)  # sent with seven others in flight, and refused
    assert cap.limit == 7
    assert cap.has_room(6) and not cap.has_room(7)
    cap.refused(in_flight=9)  # a late refusal of a call sent before the limit was known
    assert cap.limit == 7
    cap.refused(in_flight=5)
    assert cap.limit == 5
    cap.refused(in_flight=0)  # refused with nothing in flight: one call may still go
    assert cap.limit == 1
    # Additive increase: one more after as many successes at the limit as the limit.
    cap.succeeded(in_flight=0)
    assert cap.limit == 2
    cap.succeeded(in_flight=0)  # below the limit: says nothing about more capacity
    assert cap.limit == 2
    cap.succeeded(in_flight=1)
    assert cap.limit == 2
    cap.succeeded(in_flight=1)
    assert cap.limit == 3
    cap.reset()
    assert cap.limit is None


class FakeTarget:
    def __init__(self) -> None:
        self.in_flight = 0
        self.warmed = 0

    async def drop_connections(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def warm(self) -> None:
        self.warmed += 1


def backends(n: int) -> list[Backend]:
    return [Backend("h", i, FakeTarget()) for i in range(n)]


def load(backend: Backend, n: int) -> None:
    target = backend.target
    assert isinstance(target, FakeTarget)
    target.in_flight = n


def test_the_balancer_never_picks_a_backend_at_its_learned_limit() -> None:
    a, b = backends(2)
    balancer = Balancer([a, b], rng=random.Random(1))
    load(a, 3)
    balancer.refused(a, 3)
    assert a.capacity.limit == 3
    load(b, 50)  # b is busier but has no known limit
    assert {balancer.pick() for _ in range(20)} == {b}
    assert not balancer.saturated()
    balancer.refused(b, 50)
    assert balancer.pick() is None and balancer.saturated()
    load(a, 2)  # a call ended: room again
    assert balancer.pick() is a and not balancer.saturated()
    # A backend that goes down forgets its limit (it may come back another size).
    balancer.mark_down(b, "test")
    assert b.capacity.limit is None
    load(a, 3)
    assert balancer.saturated()  # every backend that is up is at its limit
    balancer.mark_down(a, "test")
    assert not balancer.saturated()  # none is up: that is not being full


def test_refusals_that_are_not_about_capacity_teach_nothing() -> None:
    async def main() -> None:
        for exc in (ShuttingDown("draining"), NotSentOverloaded("our own connection is full")):
            (a,) = backends(1)  # a backend shutting down drains: one each
            balancer = Balancer([a])

            async def attempt(backend: Backend, remaining: float, exc: Exception = exc) -> Any:
                raise exc

            with pytest.raises(Overloaded):
                await call_with_retries(
                    balancer, attempt, service="S", timeout=1.0, idempotent=False
                )
        assert a.capacity.limit is None

    asyncio.run(main())


def test_call_with_retries_sheds_at_once_when_every_backend_is_at_its_limit() -> None:
    a, b = backends(2)
    balancer = Balancer([a, b], rng=random.Random(2))
    attempts: list[Backend] = []

    async def refused(backend: Backend, remaining: float) -> Any:
        attempts.append(backend)
        raise Overloaded("worker full")

    async def answered(backend: Backend, remaining: float) -> Any:
        attempts.append(backend)
        return "ok"

    async def main() -> None:
        load(a, 4)
        load(b, 4)
        with pytest.raises(Overloaded):
            await call_with_retries(balancer, refused, service="S", timeout=1.0, idempotent=False)
        assert sorted(x.port for x in attempts) == [0, 1]  # each tried once, both learned
        attempts.clear()
        with pytest.raises(NotSentOverloaded, match="at its limit") as info:
            await call_with_retries(balancer, answered, service="S", timeout=1.0, idempotent=False)
        assert attempts == []  # no round trip
        assert info.value.public_message == "overloaded: every backend is at its limit"
        load(b, 3)
        assert (
            await call_with_retries(balancer, answered, service="S", timeout=1.0, idempotent=False)
            == "ok"
        )
        assert attempts == [b]

    asyncio.run(main())


def test_a_learned_limit_is_forgotten_after_a_quiet_period_only() -> None:
    (a,) = backends(1)
    balancer = Balancer([a])
    balancer.refused(a, 4)
    assert a.capacity.limit == 4
    learned = a.capacity.pressed_at
    load(a, 4)  # a storm holds the limit reached: it is kept however long it lasts
    for t in range(1, 60):
        balancer.forget_quiet_limits(now=learned + t, quiet=5.0)
    assert a.capacity.limit == 4
    load(a, 1)  # the storm is over
    balancer.forget_quiet_limits(now=learned + 61.0, quiet=5.0)
    assert a.capacity.limit == 4
    balancer.forget_quiet_limits(now=learned + 64.0, quiet=5.0)
    assert a.capacity.limit is None


def test_a_backend_back_up_is_warmed(run: Any) -> None:
    async def main() -> None:
        memory = MemoryNetwork()
        switch = Switch(memory)
        a = Backend(*Switch.ADDRESS, FakeTarget())
        balancer = Balancer([a], FAST_HEALTH, network=switch, on_up=warm_target)
        balancer.start()
        try:
            target = a.target
            assert isinstance(target, FakeTarget)
            assert target.warmed == 1  # at start
            balancer.mark_down(a, "test")
            async with WorkerFor(worker_config(), handler=faulty.Handler(), network=memory) as w:
                switch.to = w.address
                await wait_until_async(lambda: a.up, WAIT)
                assert target.warmed >= 2
                switch.to = None
        finally:
            await balancer.close()

    run(main())


def warm_target(backend: Backend) -> None:
    target = backend.target
    assert isinstance(target, FakeTarget)
    target.warm()


class StatesOnly:
    """A caller that offers no ``saturated`` of its own (as the actor caller may not)."""

    def __init__(self, states: list[BackendState]) -> None:
        self.states = states

    def backend_states(self) -> list[BackendState]:
        return self.states


def test_shedding_asks_the_caller_or_reads_its_backend_states() -> None:
    caller = AsyncCaller({"S": [("h", 1)]})
    assert shedding(caller) == caller.saturated  # offered: used as is
    states = [
        BackendState("S", "h:1", up=True, in_flight=2, limit=2),
        BackendState("S", "h:2", up=False, in_flight=0, limit=None),
        BackendState("T", "h:3", up=True, in_flight=0, limit=None),
    ]
    saturated = shedding(StatesOnly(states))  # type: ignore[arg-type]
    assert saturated("S")  # the only backend up is at its limit
    assert not saturated("T")  # no limit known
    assert not saturated("U")  # no backend at all: the call fails on its own
    states[0] = BackendState("S", "h:1", up=True, in_flight=1, limit=2)
    assert not saturated("S")
    states[0] = BackendState("S", "h:1", up=False, in_flight=2, limit=2)
    assert not saturated("S")  # none up: not full, unreachable
