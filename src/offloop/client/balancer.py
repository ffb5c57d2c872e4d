"""Backend selection and health: power of two choices, least in flight, across healthy backends.

State machine of a backend:

- ``up``: eligible for calls. A call that fails to connect, or whose connection breaks, marks
  it ``down`` at once; so does a failed health probe.
- ``down``: skipped by :meth:`Balancer.pick`. Probed (a TCP connect) with exponential backoff
  from ``probe_min`` to ``probe_max`` seconds; the first successful probe marks it ``up``.
- ``draining``: no new calls; the calls in flight finish (each ends by its deadline at the
  latest), then its connections close. A backend drains when it leaves the set of its DNS
  target (:meth:`Balancer.remove`: once idle it is closed and forgotten, unless it came back
  first, when it is ``up`` again with its connections as they are) or when it answered
  "shutting down" (:meth:`Balancer.drain`: once idle its connections are dropped and it is
  ``down``, probed until its next incarnation accepts).

A backend added to a running balancer (:meth:`Balancer.add`, a new DNS record) starts
``down`` and is probed at once: it gets calls only after a successful connect. Least in flight
then favours it (with no calls in flight it wins every comparison it is drawn into), but P2C
draws it into only about two picks in ``n``, and each call it takes counts against it at
once, so a cold backend fills up to its peers' level instead of taking a burst. No ramp is
needed: a worker refuses what exceeds its admission at once, and that refusal teaches
:class:`Capacity`.

Up backends are probed every ``probe_max`` seconds too, so one that dies while idle is out
within ``probe_max`` + ``connect_timeout`` seconds, and a recovered one is back within
``probe_max`` seconds (both within 2 s by default). A backend that comes up, and an up
backend whose probe succeeds, is handed to ``on_up`` (loop mode opens its pool's connections
there, so that a burst right after a restart finds them open).

Capacity. A worker refuses calls beyond its admission at once (``Overloaded``), but each
refusal still costs a round trip; in a storm of callers that do not back off, the refusals
alone can use more CPU than the calls. So each backend also learns how many calls it admits
at once (:class:`Capacity`), by additive increase and a decrease to what was in flight at a
refusal (AIMD, as TCP finds its window):

- unknown at first (and again after the backend was down, or after ``FORGET_AFTER`` seconds
  in which it neither refused a call nor had its limit reached): no limit;
- a call refused by the backend that was sent while ``n`` other calls were in flight to it:
  the limit becomes ``max(1, n)`` if that is lower (counted when the call was sent, not when
  its refusal is read: by then calls ahead of it may have ended, and a busy gateway would
  learn too low a limit);
- a call answered while the limit was reached: one more after ``limit`` of them.

:meth:`Balancer.pick` skips an up backend at its limit, and :meth:`Balancer.saturated` says
that every up backend is at its limit, so that the caller can refuse at once. Refusals that
say nothing about the backend's capacity (one of our own limits, a worker shutting down) do
not count. The limit is an estimate the balancer picks by, not a limiter: the bounds are the
targets' own :class:`~offloop.runtime.limiter.Limiter` objects and the worker's admission.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, cast

from offloop.client.network import TCP, Network

__all__ = [
    "DRAIN_POLL",
    "FORGET_AFTER",
    "Backend",
    "Balancer",
    "Capacity",
    "HealthConfig",
    "Target",
]

log = logging.getLogger("offloop.balancer")

#: Seconds in which a backend neither refused a call nor had its learned limit reached, after
#: which the limit is forgotten: a backend restarted or resized unnoticed (between two health
#: probes) gets its full capacity back without waiting for additive increase. While a storm
#: keeps the limit reached it is kept: forgetting it then would only let a flood through.
FORGET_AFTER = 10.0

#: Seconds between two looks at a draining backend's calls in flight. Polling keeps the call
#: path free of any "now idle" notification; draining is rare and may end this much late.
DRAIN_POLL = 0.05


class _Probe(asyncio.Protocol):
    """A connection that only proves the backend accepts; closed at once."""

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


class Target(Protocol):
    """What the balancer needs of a backend's client: its load and a way to drop connections."""

    @property
    def in_flight(self) -> int: ...

    async def drop_connections(self) -> None:
        """Drop open connections (the backend looks dead) but stay usable."""

    async def close(self) -> None:
        """Close for good (shutdown)."""


@dataclass(frozen=True)
class HealthConfig:
    """How backends are probed.

    Attributes:
        probe_min: first retry delay for a down backend, seconds.
        probe_max: longest retry delay, and the probe period of up backends, seconds.
        connect_timeout: a probe that has not connected after this long failed.
    """

    probe_min: float = 0.1
    probe_max: float = 1.0
    connect_timeout: float = 0.5

    def __post_init__(self) -> None:
        if not 0 < self.probe_min <= self.probe_max:
            raise ValueError("need 0 < probe_min <= probe_max")
        if self.connect_timeout <= 0:
            raise ValueError("connect_timeout must be positive")


class Capacity:
    """How many calls a backend admits at once, as learned from its refusals (see the module
    docstring). ``limit`` is None while unknown.

    Attributes:
        limit: calls that may be in flight to the backend; None: not known, no limit.
        pressed_at: ``time.monotonic()`` of the last refusal, or of the last time the limit
            was seen reached (0.0: never).
    """

    __slots__ = ("_credit", "limit", "pressed_at")

    def __init__(self) -> None:
        self.limit: int | None = None
        self.pressed_at = 0.0
        self._credit = 0  # answered calls at the limit since it last moved

    def has_room(self, in_flight: int) -> bool:
        """Whether one more call may go to the backend with ``in_flight`` calls there."""
        return self.limit is None or in_flight < self.limit

    def refused(self, in_flight: int, now: float = 0.0) -> None:
        """The backend refused a call sent while ``in_flight`` other calls were in flight to
        it (``now``: when, by ``time.monotonic()``)."""
        limit = max(1, in_flight)
        if self.limit is None or limit < self.limit:
            self.limit = limit
        self.pressed_at = now
        self._credit = 0

    def succeeded(self, in_flight: int) -> None:
        """The backend answered a call while ``in_flight`` other calls were in flight to it."""
        if self.limit is None or in_flight + 1 < self.limit:
            return  # below the limit: says nothing about room beyond it
        self._credit += 1
        if self._credit >= self.limit:
            self.limit += 1
            self._credit = 0

    def reset(self) -> None:
        """Forget the limit (the backend went away, or has been quiet for long)."""
        self.limit = None
        self._credit = 0

    def __repr__(self) -> str:
        return f"Capacity(limit={self.limit})"


class Backend:
    """One backend address and its client; ``state`` is ``up``, ``down`` or ``draining``;
    ``source`` is where it came from (``static``, or the DNS target that found it)."""

    def __init__(self, host: str, port: int, target: Target, source: str = "static") -> None:
        self.host = host
        self.port = port
        self.target = target
        self.source = source
        self.state = "up"
        self.failures = 0
        self.capacity = Capacity()
        self._delay = 0.0
        # Calls it answered: a backend whose probe fails while calls are in flight is alive
        # only if it answered some while the probe tried.
        self.answers = 0

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def up(self) -> bool:
        return self.state == "up"

    @property
    def has_room(self) -> bool:
        """Whether the backend is up and below its learned limit."""
        if self.state != "up":
            return False
        limit = self.capacity.limit  # read first: without one, in_flight need not be summed
        return limit is None or self.target.in_flight < limit

    def __repr__(self) -> str:
        return (
            f"Backend({self.address}, {self.state}, in_flight={self.target.in_flight}, "
            f"limit={self.capacity.limit})"
        )


class Balancer:
    """Picks backends and tracks their health.

    Args:
        backends: the backends, all assumed up until shown otherwise.
        health: probe timings.
        rng: random source (seedable in tests).
        network: how probes connect (TCP by default).
        on_up: called with each backend when probing starts, when it comes back up, and
            after each successful probe of it (loop mode opens its pool's connections); it
            must not block, and must own any task it starts.
        on_down: called with a backend marked down, or whose probe failed (discovery asks
            DNS again: the backend may have moved); it must not block.
        empty_ok: whether ``backends`` may be empty (backends found later by discovery).
    """

    def __init__(
        self,
        backends: Sequence[Backend],
        health: HealthConfig | None = None,
        *,
        rng: random.Random | None = None,
        network: Network = TCP,
        on_up: Callable[[Backend], None] | None = None,
        on_down: Callable[[Backend], None] | None = None,
        empty_ok: bool = False,
    ) -> None:
        if not backends and not empty_ok:
            raise ValueError("at least one backend is needed")
        #: The backends in rotation or probed back into it: ``up`` and ``down`` ones, and
        #: those draining because they answered "shutting down".
        self.backends = list(backends)
        #: Backends that left their target's set, draining before they are closed.
        self.draining: list[Backend] = []
        self._on_down = on_down
        self._drains: dict[Backend, asyncio.Task[None]] = {}
        self.health = health or HealthConfig()
        self._rng = rng or random.Random()
        self._network = network
        self._on_up = on_up
        self._task: asyncio.Task[None] | None = None

    def pick(self, exclude: Sequence[Backend] = ()) -> Backend | None:
        """Two random healthy backends with room, not in ``exclude``; the one with fewer
        calls in flight.

        Returns None when no healthy backend below its learned limit is left.
        """
        healthy = [b for b in self.backends if b.has_room and b not in exclude]
        if len(healthy) <= 1:
            return healthy[0] if healthy else None
        a, b = self._rng.sample(healthy, 2)
        return a if a.target.in_flight <= b.target.in_flight else b

    def any_up(self) -> bool:
        return any(b.up for b in self.backends)

    def last_resort(self) -> Backend | None:
        """When no backend is up: a ``down`` one to try anyway, else None.

        A worker restarted on its address answers before the next probe can say so (a probe
        made while it was away marked it down); failing every call until that probe would
        turn a restart into an outage for a service with one backend. Trying costs a
        refused connect when the backend really is away, and the call fails as it would
        have, with the connect error.
        """
        down = [b for b in self.backends if b.state == "down"]
        return self._rng.choice(down) if down else None

    def saturated(self, exclude: Sequence[Backend] = ()) -> bool:
        """Whether some backend not in ``exclude`` is up and every such one is at its learned
        limit: a call now would be refused, so refuse it here. (Asked before every call:
        no list is built.)"""
        any_up = False
        for b in self.backends:
            if b.state != "up" or b in exclude:
                continue
            if b.has_room:
                return False
            any_up = True
        return any_up

    # -- what calls teach ------------------------------------------------------------------

    def refused(self, backend: Backend, in_flight: int) -> None:
        """The backend refused a call for want of capacity (its admission was full); the call
        was sent while ``in_flight`` others were in flight to the backend."""
        cap = backend.capacity
        before = cap.limit
        cap.refused(in_flight, time.monotonic())
        if cap.limit != before:
            log.log(
                logging.INFO if before is None else logging.DEBUG,
                "backend %s refused a call: at most %d calls in flight to it from now on",
                backend.address,
                cap.limit,
            )

    def answered(self, backend: Backend) -> None:
        """The backend ran a call (answered it, whatever the outcome); the call is no longer
        counted in its target's ``in_flight``. A ``down`` backend that answered (tried as
        :meth:`last_resort`) is up."""
        backend.answers += 1
        if backend.state == "down":
            self.mark_up(backend)
        backend.capacity.succeeded(backend.target.in_flight)

    def forget_quiet_limits(self, now: float, quiet: float = FORGET_AFTER) -> None:
        """Note the backends at their limit now; forget the limits of those that have been
        neither at it nor refusing for ``quiet`` seconds (``now`` by ``time.monotonic()``).
        Called by the probe loop, often enough to see a storm hold a limit reached."""
        for b in self.backends:
            cap = b.capacity
            if cap.limit is None:
                continue
            if b.target.in_flight >= cap.limit:
                cap.pressed_at = now
            elif now - cap.pressed_at >= quiet:
                log.info(
                    "backend %s: neither refusing nor at its limit of %d for %.0f s, the limit "
                    "is forgotten",
                    b.address,
                    cap.limit,
                    quiet,
                )
                cap.reset()

    # -- health ----------------------------------------------------------------------------

    def mark_down(self, backend: Backend, reason: str) -> None:
        """Take a backend out of rotation until a probe succeeds; forget its limit (it may
        come back another size)."""
        backend.failures += 1
        backend.capacity.reset()
        if self._on_down is not None:
            self._on_down(backend)
        if backend.up:
            log.warning("backend %s is down: %s", backend.address, reason)
            backend.state = "down"
            backend._delay = self.health.probe_min

    def mark_up(self, backend: Backend) -> None:
        if not backend.up:
            log.info("backend %s is %s", backend.address, "back up" if backend.failures else "up")
            backend.capacity.reset()
        backend.state = "up"
        backend._delay = 0.0
        if self._on_up is not None:
            self._on_up(backend)

    async def probe(self, backend: Backend) -> bool:
        """Try to connect to the backend; True if it accepted (the connection is closed)."""
        probe = _Probe()
        try:
            async with asyncio.timeout(self.health.connect_timeout):
                await self._network.connect(lambda: probe, backend.host, backend.port)
        except OSError:  # TimeoutError included
            probe.close()
            return False
        probe.close()
        return True

    def start(self) -> None:
        """Start probing in the background (call on the loop that serves calls), and hand
        every backend to ``on_up``."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._probe_loop())
            if self._on_up is not None:
                for backend in self.backends:
                    if backend.up:
                        self._on_up(backend)

    async def _probe_backend(self, backend: Backend, now: float, due: dict[Backend, float]) -> None:
        answers_before = backend.answers
        ok = await self.probe(backend)
        loop = asyncio.get_running_loop()
        # Whether it answered calls while the probe tried to connect (at most
        # connect_timeout): a backend that is alive but slow to accept still answers.
        progressed = backend.answers != answers_before
        if backend.state == "draining" or backend not in self.backends:
            return  # drained or removed meanwhile: a probe does not bring it back
        if not ok and self._on_down is not None:
            self._on_down(backend)
        if ok:
            self.mark_up(backend)
            due[backend] = loop.time() + self.health.probe_max
        else:
            if backend.up and backend.target.in_flight and progressed:
                # A connect that times out under load (a busy loop here or a slow accept
                # there) is not a dead backend while its open connections still carry calls
                # and it answered some while the probe tried: dropping them would fail every
                # call. One that answered nothing meanwhile is gone (a cut link holds its
                # calls until their deadlines): it goes down, and its connections with it.
                due[backend] = loop.time() + self.health.probe_max
                return
            if backend.up:
                self.mark_down(backend, "health probe could not connect")
                await backend.target.drop_connections()  # the peer may come back
            else:
                backend._delay = min(
                    max(backend._delay * 2, self.health.probe_min), self.health.probe_max
                )
            due[backend] = loop.time() + backend._delay

    async def _probe_loop(self) -> None:
        loop = asyncio.get_running_loop()
        due = {b: loop.time() + self.health.probe_max for b in self.backends}
        while True:
            now = loop.time()
            if len(due) != len(self.backends) or any(b not in due for b in self.backends):
                # Backends added (probed at once, on their zero backoff) or removed.
                due = {b: due.get(b, now) for b in self.backends}
            # A backend marked down by a failed call is probed right away on its backoff.
            for b in self.backends:
                if b.state == "down" and due[b] > now + b._delay:
                    due[b] = now + b._delay
            self.forget_quiet_limits(time.monotonic())
            ready = [b for b in self.backends if due[b] <= now and b.state != "draining"]
            if ready:
                results = await asyncio.gather(
                    *(self._probe_backend(b, now, due) for b in ready), return_exceptions=True
                )
                for backend, outcome in zip(ready, results, strict=True):
                    if isinstance(outcome, Exception):
                        # A bug here must not end probing for good: log it, retry later.
                        log.error("health probe of %s failed", backend.address, exc_info=outcome)
                        due[backend] = loop.time() + self.health.probe_max
            next_due = min(due.values(), default=now + self.health.probe_max)
            await asyncio.sleep(max(0.01, min(next_due - loop.time(), self.health.probe_min)))

    # -- the set: discovery and draining ------------------------------------------------

    def find(self, host: str, port: int, source: str) -> Backend | None:
        """The backend of ``source`` at ``host:port``, in rotation or draining."""
        for b in (*self.backends, *self.draining):
            if b.host == host and b.port == port and b.source == source:
                return b
        return None

    def add(self, host: str, port: int, source: str, target: Callable[[], Target]) -> Backend:
        """Add a backend found by ``source``; returns it.

        One that is draining after it left the set is ``up`` again at once, with the
        connections it has. A new one (its client made by ``target()``) starts ``down`` and
        is probed at once: it gets calls only after a successful connect.
        """
        backend = self.find(host, port, source)
        if backend is not None:
            if backend in self.draining:
                self.draining.remove(backend)
                self.backends.append(backend)
                backend.state = "up"
                log.info("backend %s (%s) is back in the set: up again", backend.address, source)
            return backend
        backend = Backend(host, port, target(), source)
        backend.state = "down"
        backend._delay = 0.0  # probed on the probe loop's next turn
        self.backends.append(backend)
        log.info("backend %s (%s) added; up after its first connect", backend.address, source)
        return backend

    def remove(self, host: str, port: int, source: str) -> None:
        """The backend of ``source`` at ``host:port`` left the set: drain it, then close it
        (unless it is added back first)."""
        backend = self.find(host, port, source)
        if backend is None or backend in self.draining:
            return
        self.backends.remove(backend)
        self.draining.append(backend)
        log.info("backend %s (%s) left the set: draining", backend.address, source)
        self._start_drain(backend)

    def drain(self, backend: Backend, reason: str) -> None:
        """Take ``backend`` out of rotation while its calls in flight finish (it answered
        "shutting down"); then drop its connections and mark it down, to be probed."""
        if backend.state == "draining" or backend not in self.backends:
            return
        log.info("backend %s is draining: %s", backend.address, reason)
        self._start_drain(backend)

    def _start_drain(self, backend: Backend) -> None:
        backend.state = "draining"
        backend.capacity.reset()
        if backend not in self._drains:
            task = asyncio.get_running_loop().create_task(self._drain(backend))
            self._drains[backend] = task
            task.add_done_callback(lambda _: self._drains.pop(backend, None))

    async def _drain(self, backend: Backend) -> None:
        # Every call in flight has a deadline, so this ends at the latest deadline of them.
        while backend.state == "draining" and backend.target.in_flight:
            await asyncio.sleep(DRAIN_POLL)
        if backend.state != "draining":
            return  # back in the set meanwhile: nothing to close
        if backend in self.draining:
            self.draining.remove(backend)
            log.info("backend %s (%s) drained: closed", backend.address, backend.source)
            await backend.target.close()
        else:
            backend.state = "down"
            backend._delay = self.health.probe_min
            log.info("backend %s drained: down until it accepts again", backend.address)
            await backend.target.drop_connections()

    async def close(self) -> None:
        """Stop probing and draining, and close every backend's client."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        drains = list(self._drains.values())
        for task in drains:
            task.cancel()
        await asyncio.gather(*drains, return_exceptions=True)
        await asyncio.gather(*(b.target.close() for b in (*self.backends, *self.draining)))
