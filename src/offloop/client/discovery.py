"""Discovery: following a DNS target's set of backends as its records change.

Three parts, so that the decisions can be tested without a network:

- :class:`ResolutionPolicy` (sans-I/O) decides *when* to resolve and what an answer
  changes. It is fed answers, failures and the time, and returns diffs:

  * a good answer is diffed against the current set (``added``, ``removed``): backends are
    added and drained one by one, never rebuilt; the next resolution is due at the records'
    TTL clamped to [``MIN_TTL``, ``MAX_TTL``] seconds;
  * a failure (timeout, server failure, no server reachable) keeps the last good set and
    tries again after ``MIN_TTL`` seconds, doubling up to ``MAX_TTL``;
  * an empty answer (no record, or the name gone) while backends are known is accepted only
    when the next resolution, ``MIN_TTL`` seconds later, is empty too (a failure between the
    two starts the count again): one empty answer
    (a DNS server restarted with an empty zone, a registry flapping) would otherwise drain
    every backend at once;
  * a connect to a discovered backend that failed asks for a resolution at once, at most
    one per ``REFRESH_GAP`` seconds (the backend may have moved).

- :class:`DnsResolver` (I/O) asks DNS with dnspython's async resolver: A and AAAA records
  (one backend per address, at the target's port) or SRV records (host and port per
  record, the hosts resolved to addresses by the same server).

- :class:`Discovery` runs the two for one target in a task it owns, and hands each diff to
  its subscribers (the balancers of the services the target serves).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

import dns.asyncresolver
import dns.exception
import dns.rdatatype
import dns.resolver

from offloop.client.balancer import Backend, Balancer
from offloop.client.balancer import Target as BalancerTarget
from offloop.client.targets import Address, DnsTarget

__all__ = [
    "MAX_TTL",
    "MIN_TTL",
    "REFRESH_GAP",
    "RESOLVE_TIMEOUT",
    "Diff",
    "Discoveries",
    "Discovery",
    "DiscoveryError",
    "DnsResolver",
    "ResolutionPolicy",
    "Resolver",
]

log = logging.getLogger("offloop.discovery")

#: Shortest wait between two resolutions, seconds: a TTL of 0 must not turn into a busy loop
#: of queries.
MIN_TTL = 1.0
#: Longest wait between two resolutions, seconds: a long TTL must not hide a new backend
#: (or a gone one) for longer than this.
MAX_TTL = 30.0
#: Shortest wait, seconds, between the start of a resolution and one asked for by a failed
#: connect: a dead backend probed every 100 ms must not flood the DNS server.
REFRESH_GAP = 1.0
#: Seconds one resolution (all its queries) may take before it counts as failed.
RESOLVE_TIMEOUT = 2.0


@dataclass(frozen=True)
class Diff:
    """What a resolution changed: addresses that joined and addresses that left the set."""

    added: frozenset[Address] = frozenset()
    removed: frozenset[Address] = frozenset()

    def __bool__(self) -> bool:
        return bool(self.added or self.removed)


class ResolutionPolicy:
    """When to resolve a target, and what each answer changes (see the module docstring).

    Times are in seconds on any monotonic clock the caller chooses (the loop's, in
    :class:`Discovery`; a number in tests).

    Attributes:
        current: the addresses in the set now.
        next_due: when the next resolution is due.
    """

    def __init__(
        self,
        *,
        min_ttl: float = MIN_TTL,
        max_ttl: float = MAX_TTL,
        refresh_gap: float = REFRESH_GAP,
    ) -> None:
        if not 0 < min_ttl <= max_ttl:
            raise ValueError("need 0 < min_ttl <= max_ttl")
        self.min_ttl = min_ttl
        self.max_ttl = max_ttl
        self.refresh_gap = refresh_gap
        self.current: frozenset[Address] = frozenset()
        self.next_due = 0.0
        self._started = -math.inf  # when the last resolution started
        self._empty = 0  # empty answers in a row, while the set was not empty
        self._failures = 0  # failures in a row

    def due(self, now: float) -> bool:
        """Whether a resolution is due at ``now``."""
        return now >= self.next_due

    def started(self, now: float) -> None:
        """A resolution starts at ``now``."""
        self._started = now

    def answered(self, addresses: Iterable[Address], ttl: float, now: float) -> Diff:
        """The resolution answered ``addresses`` with records of ``ttl`` seconds; returns
        what changed in :attr:`current` (nothing while an empty answer is unconfirmed)."""
        found = frozenset(addresses)
        self._failures = 0
        if not found and self.current:
            self._empty += 1
            if self._empty < 2:
                self.next_due = now + self.min_ttl  # ask again before believing it
                return Diff()
        self._empty = 0
        diff = Diff(found - self.current, self.current - found)
        self.current = found
        self.next_due = now + min(max(ttl, self.min_ttl), self.max_ttl)
        return diff

    def failed(self, now: float) -> None:
        """The resolution failed at ``now``: keep the set, try again later (backing off)."""
        self._failures += 1
        # Item 18: "in a row" means with no failure between: an empty answer, a failure
        # (the server restarting) and another empty answer are not two in a row.
        self._empty = 0
        delay = self.min_ttl * 2 ** min(self._failures - 1, 16)
        self.next_due = now + min(delay, self.max_ttl)

    def connect_failed(self, now: float) -> bool:
        """A connect to a backend of the set failed at ``now``: make a resolution due as soon
        as the rate limit allows. Returns whether :attr:`next_due` moved earlier."""
        due = max(now, self._started + self.refresh_gap)
        if due < self.next_due:
            self.next_due = due
            return True
        return False


class DiscoveryError(Exception):
    """A resolution failed (timeout, server failure, no server reachable): the set is kept."""


class Resolver(Protocol):
    """Resolves one target to its backends' addresses."""

    async def resolve(self) -> tuple[frozenset[Address], float]:
        """The addresses and the TTL of the records that gave them (any TTL if none).

        Raises:
            DiscoveryError: no trustworthy answer (an empty one is an answer).
        """


class DnsResolver:
    """A :class:`Resolver` asking DNS with dnspython's async resolver.

    Args:
        target: what to resolve, and which DNS server to ask (the system's configuration,
            ``/etc/resolv.conf`` with its search domains, when it names none).
        timeout: seconds all the queries of one resolution may take.
    """

    def __init__(self, target: DnsTarget, timeout: float = RESOLVE_TIMEOUT) -> None:
        self.target = target
        self.timeout = timeout
        if target.nameserver is None:
            self._resolver = dns.asyncresolver.Resolver()
        else:
            self._resolver = dns.asyncresolver.Resolver(configure=False)
            self._resolver.nameservers = [target.nameserver[0]]
            self._resolver.port = target.nameserver[1]
        self._resolver.cache = None  # TTLs are ours to follow
        self._resolver.lifetime = timeout

    async def resolve(self) -> tuple[frozenset[Address], float]:
        try:
            async with asyncio.timeout(self.timeout):
                if self.target.srv:
                    return await self._resolve_srv(self.target.name)
                assert self.target.port is not None
                return await self._resolve_host(self.target.name, self.target.port)
        except TimeoutError as exc:
            raise DiscoveryError(f"{self.target}: no answer within {self.timeout} s") from exc

    async def _query(self, name: str, rdtype: str) -> tuple[list[str], float]:
        """Records of one type as text, and their TTL; an empty list for none."""
        try:
            answer = await self._resolver.resolve(
                name, rdtype, raise_on_no_answer=False, search=True
            )
        except dns.resolver.NXDOMAIN:
            return [], MIN_TTL
        except dns.exception.DNSException as exc:  # timeout, SERVFAIL, no server reachable
            raise DiscoveryError(f"{self.target}: {rdtype} query for {name} failed: {exc}") from exc
        rrset = answer.rrset
        if rrset is None:
            return [], MIN_TTL
        return [r.to_text() for r in rrset], float(rrset.ttl)

    async def _resolve_host(self, name: str, port: int) -> tuple[frozenset[Address], float]:
        answers = await asyncio.gather(
            self._query(name, "A"), self._query(name, "AAAA"), return_exceptions=True
        )
        # Item 9: one family answered: the other's failure counts as empty (many servers
        # answer A and fail AAAA); both failed: the resolution failed.
        failed = [a for a in answers if isinstance(a, BaseException)]
        if len(failed) == len(answers):
            raise failed[0]
        for exc in failed:
            if not isinstance(exc, DiscoveryError):
                raise exc  # a bug or a cancellation, not a DNS failure
            log.debug("%s (the other family answered: taken as empty)", exc)
        ips: list[str] = []
        ttls: list[float] = []
        for answer in answers:
            if not isinstance(answer, BaseException) and answer[0]:
                ips += answer[0]
                ttls.append(answer[1])
        return frozenset((ip, port) for ip in ips), min(ttls, default=MIN_TTL)

    async def _resolve_srv(self, name: str) -> tuple[frozenset[Address], float]:
        try:
            answer = await self._resolver.resolve(
                name, dns.rdatatype.SRV, raise_on_no_answer=False, search=True
            )
        except dns.resolver.NXDOMAIN:
            return frozenset(), MIN_TTL
        except dns.exception.DNSException as exc:
            raise DiscoveryError(f"{self.target}: SRV query for {name} failed: {exc}") from exc
        rrset = answer.rrset
        if rrset is None or not len(rrset):
            return frozenset(), MIN_TTL
        # The lowest priority value is preferred; the others are backups (RFC 2782), left
        # out while it has records.
        best = min(r.priority for r in rrset)
        records = [(r.target.to_text(), r.port) for r in rrset if r.priority == best]
        hosts = await asyncio.gather(*(self._resolve_host(host, port) for host, port in records))
        addresses = frozenset().union(*(found for found, _ in hosts))
        ttl = min([float(rrset.ttl)] + [t for found, t in hosts if found])
        return addresses, ttl


#: Called with each non-empty diff of a target's set.
Subscriber = Callable[[Diff], None]


class Discovery:
    """Follows one target's set of backends in a task it owns, and hands each change to
    its subscribers.

    Args:
        target: the DNS target.
        resolver: how it is resolved (a :class:`DnsResolver` by default).
        policy: when it is resolved (the defaults of :class:`ResolutionPolicy` by default).
    """

    def __init__(
        self,
        target: DnsTarget,
        resolver: Resolver | None = None,
        policy: ResolutionPolicy | None = None,
    ) -> None:
        self.target = target
        self.resolver = resolver if resolver is not None else DnsResolver(target)
        self.policy = policy if policy is not None else ResolutionPolicy()
        self._subscribers: list[Subscriber] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.resolutions = 0  # resolutions tried, for tests and logs

    @property
    def addresses(self) -> frozenset[Address]:
        """The addresses in the set now."""
        return self.policy.current

    def subscribe(self, subscriber: Subscriber) -> None:
        """Hand every later change of the set to ``subscriber`` (it must not block)."""
        self._subscribers.append(subscriber)

    async def start(self) -> None:
        """Resolve once (so that the first calls find backends), then follow the target in
        the background. A first resolution that fails is logged and retried there."""
        if self._task is not None:
            return
        await self.refresh()
        self._task = asyncio.get_running_loop().create_task(self._run())

    def connect_failed(self) -> None:
        """A connect to one of the target's backends failed: resolve again soon."""
        loop = asyncio.get_running_loop()
        if self.policy.connect_failed(loop.time()):
            self._wake.set()

    async def refresh(self) -> Diff:
        """Resolve now, and hand what changed to the subscribers."""
        loop = asyncio.get_running_loop()
        self.policy.started(loop.time())
        self.resolutions += 1
        try:
            addresses, ttl = await self.resolver.resolve()
        except DiscoveryError as exc:
            self.policy.failed(loop.time())
            log.warning(
                "%s: %s; keeping the %d backends known", self.target, exc, len(self.addresses)
            )
            return Diff()
        diff = self.policy.answered(addresses, ttl, loop.time())
        if not addresses and not diff and self.policy.current:
            log.warning("%s: empty answer; the set is kept until it repeats", self.target)
        if diff:
            log.info(
                "%s: %d backends (added %s, removed %s)",
                self.target,
                len(self.addresses),
                _show(diff.added),
                _show(diff.removed),
            )
            for subscriber in self._subscribers:
                subscriber(diff)
        return diff

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            wait = self.policy.next_due - loop.time()
            if wait > 0:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await self._wake.wait()
                continue
            try:
                await self.refresh()
            except Exception:  # a bug: log it, and keep following the target
                log.exception("%s: resolution failed", self.target)
                self.policy.failed(loop.time())

    async def close(self) -> None:
        """Stop following the target."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def _show(addresses: frozenset[Address]) -> str:
    return ", ".join(f"{h}:{p}" for h, p in sorted(addresses)) or "none"


class Discoveries:
    """The :class:`Discovery` of each DNS target of a caller's services, each shared by the
    services that name it, and the wiring of their diffs into the services' balancers.

    Args:
        resolver: makes the resolver of a target (a :class:`DnsResolver` by default).
    """

    def __init__(self, resolver: Callable[[DnsTarget], Resolver] | None = None) -> None:
        self._resolver = resolver if resolver is not None else DnsResolver
        self.by_target: dict[DnsTarget, Discovery] = {}
        self._by_source: dict[str, Discovery] = {}

    def follow(
        self, target: DnsTarget, balancer: Balancer, make: Callable[[str, int], BalancerTarget]
    ) -> None:
        """Add to ``balancer`` the backends ``target`` finds, each with the client
        ``make(host, port)``, and drain those that leave its set."""
        discovery = self.by_target.get(target)
        if discovery is None:
            discovery = Discovery(target, self._resolver(target))
            self.by_target[target] = discovery
            self._by_source[target.source] = discovery
        source = target.source

        def apply(diff: Diff) -> None:
            for host, port in sorted(diff.added):
                balancer.add(host, port, source, functools.partial(make, host, port))
            for host, port in sorted(diff.removed):
                balancer.remove(host, port, source)

        discovery.subscribe(apply)

    def on_down(self, backend: Backend) -> None:
        """A balancer's ``on_down``: a discovered backend failed a connect, so its target is
        resolved again soon (rate-limited)."""
        discovery = self._by_source.get(backend.source)
        if discovery is not None:
            discovery.connect_failed()

    async def start(self) -> None:
        """Resolve every target once, at once, then follow them in the background."""
        await asyncio.gather(*(d.start() for d in self.by_target.values()))

    async def close(self) -> None:
        await asyncio.gather(*(d.close() for d in self.by_target.values()))
