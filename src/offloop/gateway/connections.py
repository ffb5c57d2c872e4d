"""The client connections of an HTTP front: how many, in which phase, and when each must go.

Both fronts (:mod:`offloop.gateway.uvicorn_protocol`, :mod:`offloop.gateway.tornado`) report
what each connection is doing; this module decides what to close, and what to answer first.

A connection's phases (:class:`Phase`), and the limit of each (``FrontConfig``)::

    accepted -> IDLE --first byte--> HEAD --head read--> BODY --body read--> BUSY
                  ^   idle_timeout        header_timeout      body_timeout     |
                  +------------------------ response sent ---------------------+

``BUSY`` is not timed here: the call has its own deadline. A connection over its phase's limit
is closed, IDLE ones silently (as a keep-alive timeout does), HEAD and BODY ones after a 408.

:class:`ConnectionTable` (sans-I/O) holds one insertion-ordered dict per phase: a connection
goes to the end of its new phase's dict when it changes phase, so the oldest of a phase is the
first of its dict, and both the sweep of expired connections and the eviction of the oldest
idle one cost O(1) per connection closed. :class:`FrontGuard` runs the table on a loop: admits
connections up to the cap, sweeps, and builds the raw responses a front writes itself.

The cap (:func:`connection_capacity`) is ``max_connections``, held below the open-files limit
by ``fd_reserve`` descriptors, so that clients can never take the descriptors the gateway's
own backend connections and health probes need.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from http import HTTPStatus
from typing import Final, Generic, Protocol, TypeVar

from offloop.context import new_request_id
from offloop.gateway.config import FrontConfig
from offloop.gateway.core import Gateway, Response, error_response, with_request_id

__all__ = [
    "FRONT_ROUTE",
    "Connection",
    "ConnectionTable",
    "FrontGuard",
    "Phase",
    "connection_capacity",
    "raw_response",
]

#: The route label of the responses a front writes itself (before routing) in the metrics.
FRONT_ROUTE: Final = "front"
# Connections closed per sweep before the loop gets a turn: closing thousands of idle
# connections at once must not stall the loop.
_CLOSES_PER_TURN: Final = 256


class Phase(enum.Enum):
    """What a client connection is doing (see the module docstring)."""

    IDLE = "idle"
    HEAD = "head"
    BODY = "body"
    BUSY = "busy"

    # Members are singletons compared by identity: hash them by identity too, in C (Enum's
    # own __hash__ is Python code, and phases are dict keys moved twice per request).
    __hash__ = object.__hash__


K = TypeVar("K")


class ConnectionTable(Generic[K]):
    """Connections by phase, oldest first; sans-I/O (times are given).

    Args:
        capacity: connections held at once (:meth:`full` from then on).
        timeouts: seconds each timed phase may last.
    """

    def __init__(self, capacity: int, timeouts: Mapping[Phase, float]) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self.timeouts = dict(timeouts)
        self._by_phase: dict[Phase, OrderedDict[K, float]] = {p: OrderedDict() for p in Phase}
        self._phase: dict[K, Phase] = {}

    def __len__(self) -> int:
        return len(self._phase)

    def phase(self, conn: K) -> Phase | None:
        """The phase of ``conn``; None if it is not in the table."""
        return self._phase.get(conn)

    def counts(self) -> dict[Phase, int]:
        """Connections per phase."""
        return {phase: len(conns) for phase, conns in self._by_phase.items()}

    def full(self) -> bool:
        """Whether the table holds ``capacity`` connections."""
        return len(self._phase) >= self.capacity

    def add(self, conn: K, now: float) -> None:
        """A new connection, idle since ``now``."""
        self.remove(conn)
        self._phase[conn] = Phase.IDLE
        self._by_phase[Phase.IDLE][conn] = now

    def move(self, conn: K, phase: Phase, now: float) -> None:
        """``conn`` is in ``phase`` since ``now`` (nothing if it is in it already, or gone)."""
        old = self._phase.get(conn)
        if old is None or old is phase:
            return
        del self._by_phase[old][conn]
        self._by_phase[phase][conn] = now
        self._phase[conn] = phase

    def remove(self, conn: K) -> None:
        """``conn`` is closed (nothing if it is gone already)."""
        old = self._phase.pop(conn, None)
        if old is not None:
            del self._by_phase[old][conn]

    def evict(self) -> tuple[K, Phase] | None:
        """Remove and return the connection to close to make room: the oldest idle one, else
        the oldest still sending its head; None when every one is further on."""
        for phase in (Phase.IDLE, Phase.HEAD):
            conns = self._by_phase[phase]
            if conns:
                conn = next(iter(conns))
                self.remove(conn)
                return conn, phase
        return None

    def expired(self, now: float) -> list[tuple[K, Phase]]:
        """Remove and return the connections whose phase has lasted past its timeout."""
        out: list[tuple[K, Phase]] = []
        for phase, timeout in self.timeouts.items():
            conns = self._by_phase[phase]
            deadline = now - timeout
            while conns:
                conn, since = next(iter(conns.items()))
                if since > deadline:
                    break
                self.remove(conn)
                out.append((conn, phase))
        return out


class Connection(Protocol):
    """A client connection as a front exposes it to the guard."""

    def abort(self, response: bytes | None) -> None:
        """Close now: write ``response`` first if given and no response is being written."""


def connection_capacity(front: FrontConfig, open_files: int) -> int:
    """The cap on client connections: ``max_connections``, and at most the open-files limit
    less ``fd_reserve``.

    Args:
        front: the front's configuration.
        open_files: the soft ``RLIMIT_NOFILE`` the process runs with.

    Raises:
        ValueError: the limit leaves no descriptor for a client connection.
    """
    room = open_files - front.fd_reserve
    if room < 1:
        raise ValueError(
            f"the open-files limit ({open_files}) leaves no descriptors for client "
            f"connections once fd_reserve ({front.fd_reserve}) are kept: raise the limit "
            "(ulimit -n) or lower fd_reserve"
        )
    return min(front.max_connections, room)


def raw_response(response: Response) -> bytes:
    """``response`` as HTTP/1.1 bytes that close the connection (for a front to write when no
    request cycle can answer: a refused head, a timeout)."""
    lines = [f"HTTP/1.1 {response.status} {HTTPStatus(response.status).phrase}"]
    lines += [f"{name}: {value}" for name, value in response.headers]
    lines += [f"content-length: {len(response.body)}", "connection: close", "", ""]
    return "\r\n".join(lines).encode("latin-1") + response.body


class FrontGuard:
    """The limits of a front over its client connections, shared by all of them.

    The front calls :meth:`opened`, :meth:`move` and :meth:`closed` as connections come, change
    phase and go; :meth:`start` runs a sweep on the loop that aborts expired connections, and
    :meth:`stop` ends it. Responses the front writes itself come from :meth:`refusal`, which
    counts them in the gateway's request metrics under the route ``front``.

    Args:
        gateway: the gateway served (its config's ``front`` and its metrics).
        capacity: client connections held at once (:func:`connection_capacity`).
    """

    def __init__(self, gateway: Gateway, capacity: int) -> None:
        front = gateway.config.front
        self.front = front
        self.capacity = capacity
        timeouts = {
            Phase.IDLE: front.idle_timeout,
            Phase.HEAD: front.header_timeout,
            Phase.BODY: front.body_timeout,
        }
        self.table: ConnectionTable[Connection] = ConnectionTable(capacity, timeouts)
        # A phase ends at most a quarter of its timeout late (and at most a second).
        self.tick = min(1.0, max(0.01, min(timeouts.values()) / 4))
        self._metrics = gateway.metrics
        self._retry = [("retry-after", str(front.retry_after))]
        self._sweeper: asyncio.Task[None] | None = None

    # -- what the fronts call ------------------------------------------------------------

    def opened(self, conn: Connection) -> bool:
        """Admit a new connection; at the cap, close one to make room for it, or refuse it
        (``conn`` is aborted with a 503 then, and False returned)."""
        if self.table.full():
            victim = self.table.evict()
            if victim is None:
                conn.abort(
                    self.refusal(
                        503,
                        f"too many connections: the gateway holds {self.capacity} at most "
                        "(max_connections, or the open-files limit less fd_reserve)",
                        self._retry,
                    )
                )
                return False
            other, phase = victim
            if phase is Phase.IDLE:
                other.abort(None)
            else:
                message = "connection closed for a newer one: the gateway is at max_connections"
                other.abort(self.refusal(503, message, self._retry))
        self.table.add(conn, time.monotonic())
        return True

    def move(self, conn: Connection, phase: Phase) -> None:
        """``conn`` is now in ``phase``."""
        self.table.move(conn, phase, time.monotonic())

    def closed(self, conn: Connection) -> None:
        """``conn`` is closed (by either side)."""
        self.table.remove(conn)

    def refusal(self, status: int, message: str, headers: Iterable[tuple[str, str]] = ()) -> bytes:
        """The raw response of a refusal by the front (JSON error body, connection closed),
        counted in the metrics. It carries a new request id, as every error does (the
        request's own ``X-Request-Id``, if any, was not read)."""
        self._metrics.observe(FRONT_ROUTE, status, 0.0)
        response = error_response(status, message, list(headers))
        return raw_response(with_request_id(response, new_request_id()))

    # -- the sweep -----------------------------------------------------------------------

    def start(self) -> None:
        """Start sweeping expired connections on the running loop."""
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep())

    async def stop(self) -> None:
        """Stop sweeping (connections are left to the server's own shutdown)."""
        sweeper, self._sweeper = self._sweeper, None
        if sweeper is not None:
            sweeper.cancel()
            try:
                await sweeper
            except asyncio.CancelledError:
                if not sweeper.cancelled():
                    raise  # our own caller was cancelled, not just the sweep

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(self.tick)
            for done, (conn, phase) in enumerate(self.table.expired(time.monotonic()), 1):
                conn.abort(self._expiry(phase))
                if done % _CLOSES_PER_TURN == 0:
                    await asyncio.sleep(0)

    def _expiry(self, phase: Phase) -> bytes | None:
        front = self.front
        if phase is Phase.HEAD:
            return self.refusal(
                408,
                f"the client sent its request head too slowly: not all of it within "
                f"{front.header_timeout:g} s (header_timeout)",
            )
        if phase is Phase.BODY:
            return self.refusal(
                408,
                f"the client sent its request body too slowly: not all of it within "
                f"{front.body_timeout:g} s (body_timeout)",
            )
        return None  # an idle connection closes as a keep-alive one does: no answer
