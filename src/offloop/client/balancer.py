"""Backend selection and health: power of two choices, least in flight, across healthy backends.

State machine of a backend:

- ``up``: eligible for calls. A call that fails to connect, or whose connection breaks, marks
  it ``down`` at once; so does a failed health probe.
- ``down``: skipped by :meth:`Balancer.pick`. Probed (a TCP connect) with exponential backoff
  from ``probe_min`` to ``probe_max`` seconds; the first successful probe marks it ``up``.

Up backends are probed every ``probe_max`` seconds too, so one that dies while idle is out
within ``probe_max`` + ``connect_timeout`` seconds, and a recovered one is back within
``probe_max`` seconds (both within 2 s by default).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, cast

from offloop.client.network import TCP, Network

__all__ = ["Backend", "Balancer", "HealthConfig", "Target"]

log = logging.getLogger("offloop.balancer")


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


class Backend:
    """One backend address and its client; ``state`` is ``up`` or ``down``."""

    def __init__(self, host: str, port: int, target: Target) -> None:
        self.host = host
        self.port = port
        self.target = target
        self.state = "up"
        self.failures = 0
        self._delay = 0.0

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def up(self) -> bool:
        return self.state == "up"

    def __repr__(self) -> str:
        return f"Backend({self.address}, {self.state}, in_flight={self.target.in_flight})"


class Balancer:
    """Picks backends and tracks their health.

    Args:
        backends: the backends, all assumed up until shown otherwise.
        health: probe timings.
        rng: random source (seedable in tests).
        network: how probes connect (TCP by default).
    """

    def __init__(
        self,
        backends: Sequence[Backend],
        health: HealthConfig | None = None,
        *,
        rng: random.Random | None = None,
        network: Network = TCP,
    ) -> None:
        if not backends:
            raise ValueError("at least one backend is needed")
        self.backends = list(backends)
        self.health = health or HealthConfig()
        self._rng = rng or random.Random()
        self._network = network
        self._task: asyncio.Task[None] | None = None

    def pick(self, exclude: Sequence[Backend] = ()) -> Backend | None:
        """Two random healthy backends not in ``exclude``; the one with fewer calls in flight.

        Returns None when no healthy backend is left.
        """
        healthy = [b for b in self.backends if b.up and b not in exclude]
        if len(healthy) <= 1:
            return healthy[0] if healthy else None
        a, b = self._rng.sample(healthy, 2)
        return a if a.target.in_flight <= b.target.in_flight else b

    def any_up(self) -> bool:
        return any(b.up for b in self.backends)

    def mark_down(self, backend: Backend, reason: str) -> None:
        """Take a backend out of rotation until a probe succeeds."""
        backend.failures += 1
        if backend.up:
            log.warning("backend %s is down: %s", backend.address, reason)
            backend.state = "down"
            backend._delay = self.health.probe_min

    def mark_up(self, backend: Backend) -> None:
        if not backend.up:
            log.info("backend %s is back up", backend.address)
        backend.state = "up"
        backend._delay = 0.0

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
        """Start probing in the background (call on the loop that serves calls)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._probe_loop())

    async def _probe_backend(self, backend: Backend, now: float, due: dict[Backend, float]) -> None:
        ok = await self.probe(backend)
        loop = asyncio.get_running_loop()
        if ok:
            self.mark_up(backend)
            due[backend] = loop.time() + self.health.probe_max
        else:
            if backend.up and backend.target.in_flight:
                # A connect that times out under load (a busy loop here or a slow accept
                # there) is not a dead backend: its open connections still carry calls, and
                # a broken one marks it down by itself. Dropping them would fail every call.
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
            # A backend marked down by a failed call is probed right away on its backoff.
            for b in self.backends:
                if not b.up and due[b] > now + b._delay:
                    due[b] = now + b._delay
            ready = [b for b in self.backends if due[b] <= now]
            if ready:
                results = await asyncio.gather(
                    *(self._probe_backend(b, now, due) for b in ready), return_exceptions=True
                )
                for backend, outcome in zip(ready, results, strict=True):
                    if isinstance(outcome, Exception):
                        # A bug here must not end probing for good: log it, retry later.
                        log.error("health probe of %s failed", backend.address, exc_info=outcome)
                        due[backend] = loop.time() + self.health.probe_max
            next_due = min(due.values())
            await asyncio.sleep(max(0.01, min(next_due - loop.time(), self.health.probe_min)))

    async def close(self) -> None:
        """Stop probing and close every backend's client."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await asyncio.gather(*(b.target.close() for b in self.backends))
