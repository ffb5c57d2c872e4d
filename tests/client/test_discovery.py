"""The resolution policy (clock and answers injected), and a Discovery fed by a fake
resolver: no DNS server here (tests/client/test_discovery_dns.py has a real one)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from offloop.client.balancer import Balancer, HealthConfig
from offloop.client.discovery import (
    MAX_TTL,
    MIN_TTL,
    REFRESH_GAP,
    Diff,
    Discoveries,
    Discovery,
    DiscoveryError,
    DnsResolver,
    ResolutionPolicy,
)
from offloop.client.targets import Address, DnsTarget
from tests.support.waiting import wait_until_async

A = ("10.0.0.1", 9090)
B = ("10.0.0.2", 9090)
C = ("10.0.0.3", 9090)


# -- the policy ------------------------------------------------------------------------------


def test_an_answer_is_diffed_against_the_set_never_rebuilt() -> None:
    policy = ResolutionPolicy()
    assert policy.answered([A, B], 5, now=0) == Diff(frozenset({A, B}), frozenset())
    assert policy.answered([A, B], 5, now=5) == Diff()
    assert not policy.answered([B, A], 5, now=10)
    assert policy.answered([B, C], 5, now=15) == Diff(frozenset({C}), frozenset({A}))
    assert policy.current == {B, C}


@pytest.mark.parametrize(
    ("ttl", "wait"),
    [(0, MIN_TTL), (0.2, MIN_TTL), (5, 5), (30, 30), (300, MAX_TTL), (86400, MAX_TTL)],
)
def test_the_next_resolution_is_at_the_ttl_clamped(ttl: float, wait: float) -> None:
    policy = ResolutionPolicy()
    policy.answered([A], ttl, now=100)
    assert policy.next_due == 100 + wait
    assert not policy.due(100 + wait - 0.01)
    assert policy.due(100 + wait)


def test_a_failure_keeps_the_set_and_retries_backing_off() -> None:
    policy = ResolutionPolicy()
    policy.answered([A, B], 30, now=0)
    waits = []
    now = 30.0
    for _ in range(7):
        policy.failed(now)
        waits.append(policy.next_due - now)
        now = policy.next_due
    assert waits == [1, 2, 4, 8, 16, 30, 30]
    assert policy.current == {A, B}
    # The first answer after failures resets the backoff.
    policy.answered([A, B], 10, now=now)
    policy.failed(now + 10)
    assert policy.next_due == now + 10 + MIN_TTL


def test_an_empty_answer_is_accepted_only_when_it_repeats() -> None:
    policy = ResolutionPolicy()
    policy.answered([A, B], 30, now=0)
    assert policy.answered([], 30, now=30) == Diff()  # not believed yet
    assert policy.current == {A, B}
    assert policy.next_due == 30 + MIN_TTL  # asked again soon
    assert policy.answered([], 30, now=31) == Diff(frozenset(), frozenset({A, B}))
    assert policy.current == frozenset()


def test_an_empty_answer_between_good_ones_changes_nothing() -> None:
    policy = ResolutionPolicy()
    policy.answered([A], 30, now=0)
    assert not policy.answered([], 30, now=30)
    assert not policy.answered([A], 30, now=31)
    # The count starts again: one more empty answer is not believed either.
    assert not policy.answered([], 30, now=61)
    assert policy.current == {A}


def test_a_failure_between_two_empty_answers_starts_the_count_again() -> None:
    # Item 18: empty, failure (the server restarting), empty are not two empties in a row.
    policy = ResolutionPolicy()
    policy.answered([A], 30, now=0)
    policy.answered([], 30, now=30)
    policy.failed(31)
    assert policy.answered([], 30, now=32) == Diff()
    assert policy.current == {A}
    assert policy.answered([], 30, now=33) == Diff(frozenset(), frozenset({A}))


def test_one_address_family_failing_counts_as_empty(monkeypatch: pytest.MonkeyPatch) -> None:
    # Item 9: a server that answers A but fails AAAA (or the reverse) must not fail it all.
    failing: set[str] = {"AAAA"}

    async def query(self: DnsResolver, name: str, rdtype: str) -> tuple[list[str], float]:
        if rdtype in failing:
            raise DiscoveryError(f"{rdtype} query for {name} failed: SERVFAIL")
        return (["10.0.0.1"], 5.0) if rdtype == "A" else (["fd00::1"], 7.0)

    monkeypatch.setattr(DnsResolver, "_query", query)
    resolver = DnsResolver(TARGET)
    assert asyncio.run(resolver.resolve()) == ({("10.0.0.1", 9090)}, 5.0)
    failing.clear()
    failing.add("A")
    assert asyncio.run(resolver.resolve()) == ({("fd00::1", 9090)}, 7.0)
    failing.add("AAAA")
    with pytest.raises(DiscoveryError, match=r"query for w\.test failed"):
        asyncio.run(resolver.resolve())


def test_a_failed_connect_asks_for_a_resolution_at_once_rate_limited() -> None:
    policy = ResolutionPolicy()
    policy.started(0)
    policy.answered([A], 30, now=0)
    assert policy.connect_failed(now=5)  # long after the last one started: at once
    assert policy.next_due == 5
    assert policy.due(5)
    policy.started(5)
    policy.answered([A], 30, now=5)
    # Right after a resolution started: not before REFRESH_GAP has passed since.
    assert policy.connect_failed(now=5.1)
    assert policy.next_due == 5 + REFRESH_GAP
    assert not policy.connect_failed(now=5.2)  # already as early as allowed
    assert policy.next_due == 5 + REFRESH_GAP


def test_a_failed_connect_never_delays_a_due_resolution() -> None:
    policy = ResolutionPolicy()
    policy.started(0)
    policy.failed(0)  # due at 1
    assert not policy.connect_failed(now=0.5)
    assert policy.next_due == MIN_TTL


# -- Discovery, with a scripted resolver -------------------------------------------------------


class ScriptedResolver:
    """Answers what the test set last; raises DiscoveryError while ``failing``."""

    def __init__(self, answer: set[Address], ttl: float = 1.0) -> None:
        self.answer = set(answer)
        self.ttl = ttl
        self.failing = False
        self.calls = 0

    async def resolve(self) -> tuple[frozenset[Address], float]:
        self.calls += 1
        if self.failing:
            raise DiscoveryError("scripted failure")
        return frozenset(self.answer), self.ttl


TARGET = DnsTarget("w.test", 9090, ("127.0.0.1", 53))


def test_discovery_hands_each_change_to_its_subscribers() -> None:
    async def main() -> None:
        resolver = ScriptedResolver({A})
        policy = ResolutionPolicy(min_ttl=0.01, max_ttl=0.05, refresh_gap=0.01)
        discovery = Discovery(TARGET, resolver, policy)
        diffs: list[Diff] = []
        discovery.subscribe(diffs.append)
        await discovery.start()
        assert diffs == [Diff(frozenset({A}))]  # the first resolution is awaited by start
        resolver.answer = {A, B}
        await wait_until_async(lambda: len(diffs) == 2, timeout=10)
        assert diffs[1] == Diff(frozenset({B}))
        resolver.failing = True
        calls = resolver.calls
        await wait_until_async(lambda: resolver.calls >= calls + 2, timeout=10)
        assert discovery.addresses == {A, B}  # kept through failures
        resolver.failing = False
        resolver.answer = set()
        await wait_until_async(lambda: len(diffs) == 3, timeout=10)
        assert diffs[2] == Diff(frozenset(), frozenset({A, B}))
        await discovery.close()

    asyncio.run(main())


def test_a_failed_connect_wakes_discovery_before_the_ttl() -> None:
    async def main() -> None:
        resolver = ScriptedResolver({A}, ttl=3600)  # clamped to max_ttl: far away
        policy = ResolutionPolicy(min_ttl=0.01, max_ttl=3600, refresh_gap=0.01)
        discovery = Discovery(TARGET, resolver, policy)
        await discovery.start()
        assert resolver.calls == 1
        discovery.connect_failed()
        await wait_until_async(lambda: resolver.calls == 2, timeout=10)
        await discovery.close()

    asyncio.run(main())


# -- the balancer's set, driven by discovery --------------------------------------------------


class FakeTarget:
    """A backend's client whose calls in flight the test sets."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.closed = False
        self.dropped = 0

    async def drop_connections(self) -> None:
        self.dropped += 1

    async def close(self) -> None:
        self.closed = True


FAST = HealthConfig(probe_min=0.01, probe_max=0.05, connect_timeout=0.5)


class AcceptAll:
    """A network whose every connect succeeds (the probes' view of healthy backends)."""

    async def connect(self, factory: Any, host: str, port: int) -> None:
        factory()


def wired(resolver: ScriptedResolver) -> tuple[Balancer, Discoveries, dict[Address, FakeTarget]]:
    made: dict[Address, FakeTarget] = {}

    def make(host: str, port: int) -> FakeTarget:
        made[(host, port)] = FakeTarget()
        return made[(host, port)]

    discoveries = Discoveries(lambda target: resolver)
    balancer = Balancer([], FAST, network=AcceptAll(), on_down=discoveries.on_down, empty_ok=True)
    discoveries.follow(TARGET, balancer, make)
    for d in discoveries.by_target.values():
        d.policy = ResolutionPolicy(min_ttl=0.01, max_ttl=0.05, refresh_gap=0.01)
    return balancer, discoveries, made


def states(balancer: Balancer) -> dict[Address, str]:
    return {(b.host, b.port): b.state for b in (*balancer.backends, *balancer.draining)}


def test_a_new_backend_is_up_only_after_a_connect() -> None:
    async def main() -> None:
        resolver = ScriptedResolver({A})
        balancer, discoveries, made = wired(resolver)
        await discoveries.start()
        assert states(balancer) == {A: "down"}  # found, not yet connected
        assert balancer.pick() is None
        assert balancer.backends[0].source == str(TARGET)
        balancer.start()
        await wait_until_async(lambda: states(balancer) == {A: "up"}, timeout=10)
        assert balancer.pick() is balancer.backends[0]
        await discoveries.close()
        await balancer.close()
        assert made[A].closed

    asyncio.run(main())


def test_a_backend_that_leaves_the_set_drains_then_closes() -> None:
    async def main() -> None:
        resolver = ScriptedResolver({A, B})
        balancer, discoveries, made = wired(resolver)
        await discoveries.start()
        balancer.start()
        await wait_until_async(lambda: set(states(balancer).values()) == {"up"}, timeout=10)
        made[B].in_flight = 2  # calls in flight to B
        resolver.answer = {A}
        await wait_until_async(lambda: states(balancer).get(B) == "draining", timeout=10)
        for _ in range(20):
            assert balancer.pick() is not None
            assert balancer.pick() is balancer.find(*A, str(TARGET))  # no new call to B
        assert not made[B].closed  # its calls are still in flight
        made[B].in_flight = 0  # they finished
        await wait_until_async(lambda: made[B].closed, timeout=10)
        assert states(balancer) == {A: "up"}
        await discoveries.close()
        await balancer.close()

    asyncio.run(main())


def test_a_backend_back_in_the_set_while_draining_is_up_with_its_client() -> None:
    async def main() -> None:
        resolver = ScriptedResolver({A, B})
        balancer, discoveries, made = wired(resolver)
        await discoveries.start()
        balancer.start()
        await wait_until_async(lambda: set(states(balancer).values()) == {"up"}, timeout=10)
        b_client = made[B]
        b_client.in_flight = 1
        resolver.answer = {A}
        await wait_until_async(lambda: states(balancer).get(B) == "draining", timeout=10)
        resolver.answer = {A, B}
        await wait_until_async(lambda: states(balancer).get(B) == "up", timeout=10)
        assert made[B] is b_client  # not reconnected: the same client
        b_client.in_flight = 0
        # It stays: the drain that was under way does not close it.
        await wait_until_async(lambda: resolver.calls > 6, timeout=10)
        assert not b_client.closed and b_client.dropped == 0
        assert states(balancer) == {A: "up", B: "up"}
        await discoveries.close()
        await balancer.close()

    asyncio.run(main())


def test_a_backend_shutting_down_drains_then_is_down_and_probed_back() -> None:
    async def main() -> None:
        target = FakeTarget()
        balancer = Balancer([], FAST, network=AcceptAll(), empty_ok=True)
        backend = balancer.add("h", 1, "static", lambda: target)
        balancer.start()
        await wait_until_async(lambda: backend.state == "up", timeout=10)
        target.in_flight = 1
        balancer.drain(backend, "shutting down")
        assert backend.state == "draining"
        assert balancer.pick() is None
        assert not balancer.any_up()
        target.in_flight = 0
        # Drained: its connections dropped, then probed (AcceptAll: at once) back up.
        await wait_until_async(lambda: target.dropped == 1, timeout=10)
        await wait_until_async(lambda: backend.state == "up", timeout=10)
        assert not target.closed  # still a member of the set
        await balancer.close()

    asyncio.run(main())
