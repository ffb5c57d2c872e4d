"""A small pool of multiplexed connections to one backend.

Each call goes to the usable connection with the fewest calls in flight, if that one has
room (``config.max_in_flight``). Connections open on demand, one at a time, or all at once
when asked (:meth:`ConnectionPool.warm`), at most ``size`` of them:

- no usable connection: the caller waits for a connect (callers that arrive meanwhile wait
  for the same one);
- every usable connection is busy and the pool is not full: the caller uses the least busy
  one now, and the pool opens another in the background for later calls;
- every usable connection is *full*: the caller waits for a connection being opened, or
  starts one if the pool is not full; only when the pool is full too is the call refused
  (``NotSentOverloaded``). So a burst larger than one connection takes, on a cold pool or
  right after a restart, is carried as the connections open instead of being refused.

Broken connections are dropped when next seen and replaced on demand. Every connect runs as
a task the pool owns; :meth:`ConnectionPool.close` cancels them and closes every connection.
Calls are bounded: each connection refuses calls over ``config.max_in_flight``, and callers
waiting for a connect count against the same total of ``size * max_in_flight``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import Any

from offloop.client.config import REPROBE_FRAMED_AFTER, ClientConfig
from offloop.client.connection import ThriftConnection
from offloop.client.errors import (
    BACKEND_UNAVAILABLE,
    NotSentBrokenError,
    NotSentClosedError,
    NotSentConnectError,
    NotSentDeadline,
    NotSentOverloaded,
)
from offloop.client.network import TCP, Network
from offloop.idl import MethodInfo
from offloop.runtime.limiter import Limiter

__all__ = ["ConnectionPool"]

logger = logging.getLogger(__name__)

#: After a failed connect, seconds before the pool tries to *grow* again while it still has
#: usable connections, so that a backend refusing new connections is not hammered on every
#: call. A pool with no usable connection always tries at once.
_GROW_RETRY_DELAY = 1.0


class ConnectionPool:
    """Up to ``size`` :class:`ThriftConnection` objects to one ``host:port``.

    Args:
        host: the backend's host.
        port: the backend's TCP port.
        config: how each connection behaves.
        size: the most connections the pool opens.
        network: how connections are opened (TCP by default).
    """

    def __init__(
        self,
        host: str,
        port: int,
        config: ClientConfig,
        *,
        size: int = 4,
        network: Network = TCP,
    ) -> None:
        if size < 1:
            raise ValueError(f"size must be at least 1, not {size}")
        self._host = host
        self._port = port
        self._peer = f"{host}:{port}"
        self._config = config
        self._size = size
        self._network = network
        self._conns: list[ThriftConnection] = []
        self._connecting: set[asyncio.Task[None]] = set()
        # Set (and replaced) each time a connect ends, well or not, and on close.
        self._connected = asyncio.Event()
        self._connect_error: NotSentConnectError | None = None  # of the last connect to end
        # Callers waiting for a connect, bounded like the calls the connections may carry.
        self._waiting = Limiter(
            size * config.max_in_flight, name=f"callers waiting to connect to {self._peer}"
        )
        self._grow_after = 0.0  # loop time before which no background connect starts
        self._closed = False
        # Whether a connect ever succeeded: before that, a failed connect is logged at DEBUG
        # only (the gateway logs one line per unreachable backend at start, naming its
        # service; a caller gets the error itself), after it at WARNING.
        self._ever_connected = False
        # THeader or framed, once a connection's probe has told (transport "auto"); then
        # later connections skip the probe.
        self._header: bool | None = None
        # When a framed answer is asked again (items 17, 19).
        self._reprobe_at = math.inf
        # Calls inside call(): in flight on a connection, or waiting for one. Kept as a count
        # because balancers read it several times per call (summing the connections would
        # cost a loop each time).
        self._calls = 0

    # -- what balancers look at ------------------------------------------------------------

    @property
    def peer(self) -> str:
        """The backend's address, ``host:port``."""
        return self._peer

    @property
    def size(self) -> int:
        """The most connections the pool opens."""
        return self._size

    @property
    def in_flight(self) -> int:
        """Calls in flight on the pool's connections, plus callers waiting for a connect."""
        return self._calls

    @property
    def connections(self) -> int:
        """Connections open (usable or not yet pruned)."""
        return len(self._conns)

    @property
    def is_closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def __repr__(self) -> str:
        return (
            f"<ConnectionPool {self._peer} connections={len(self._conns)}/{self._size} "
            f"connecting={len(self._connecting)} in_flight={self.in_flight}"
            f"{' closed' if self._closed else ''}>"
        )

    # -- opening ---------------------------------------------------------------------------

    def warm(self) -> None:
        """Start opening connections, in the background, until ``size`` are open or being
        opened; returns at once. For a backend just started or seen back up, so that a burst
        of calls does not wait for connects one at a time. Does nothing once closed."""
        if self._closed:
            return
        self._prune()
        for _ in range(self._size - len(self._conns) - len(self._connecting)):
            self._start_connect()

    # -- calling ---------------------------------------------------------------------------

    async def call(self, method: MethodInfo, args: Any, *, timeout: float | None) -> Any:
        """Call ``method`` on the least busy connection, opening one if needed.

        Args:
            method: the method to call.
            args: an instance of ``method.args_cls``.
            timeout: seconds for the whole call, waiting for a connect included.

        Returns:
            What :meth:`ThriftConnection.call` returns.

        Raises:
            NotSentClosedError: the pool is closed.
            NotSentConnectError: no connection was usable and a new one could not be opened.
            NotSentOverloaded: every connection holds ``max_in_flight`` calls and no more
                may be opened, or ``size * max_in_flight`` callers wait for a connect.
            NotSentDeadline: the deadline passed while waiting for a connect.
            Exception: anything :meth:`ThriftConnection.call` raises.
        """
        if self._closed:
            raise NotSentClosedError(
                f"pool for {self._peer} is closed", public_message=BACKEND_UNAVAILABLE
            )
        self._calls += 1
        try:
            conn = self._pick()
            if conn is not None:
                return await conn.call(method, args, timeout=timeout)
            return await self._call_after_connect(method, args, timeout)
        finally:
            self._calls -= 1

    def _prune(self) -> None:
        if not all(conn.is_usable for conn in self._conns):
            self._conns = [conn for conn in self._conns if conn.is_usable]

    def _pick(self) -> ThriftConnection | None:
        """The usable connection with the fewest calls in flight, if it has room; else None.

        Drops the connections that are no longer usable, and starts growing the pool in the
        background when even the least busy connection is busy.
        """
        best: ThriftConnection | None = None
        best_n = 0
        stale = False
        for conn in self._conns:
            n = conn.load()
            if n < 0:
                stale = True
            elif best is None or n < best_n:
                best, best_n = conn, n
                if not n:
                    break  # an idle connection: none is better (stale ones go next time)
        if stale:
            self._conns = [conn for conn in self._conns if conn.is_usable]
        if best_n and not self._connecting and self._may_grow():
            self._start_connect()
        if best_n >= self._config.max_in_flight:
            return None
        return best

    def _may_grow(self) -> bool:
        return (
            len(self._conns) + len(self._connecting) < self._size
            and asyncio.get_running_loop().time() >= self._grow_after
        )

    async def _call_after_connect(
        self, method: MethodInfo, args: Any, timeout: float | None
    ) -> Any:
        """Wait for a connection with room, as connects end; then call on it."""
        waiting = self._waiting
        if not waiting.try_acquire():
            raise NotSentOverloaded(
                f"pool for {self._peer}: {waiting.borrowed} callers wait for a connection",
                public_message="backend overloaded",
            )
        loop = asyncio.get_running_loop()
        start = loop.time()
        try:
            async with asyncio.timeout(timeout):
                conn = await self._connection_with_room()
        except TimeoutError as exc:
            raise NotSentDeadline(
                f"call of {method.name} to {self._peer}: no connection within {timeout}s"
            ) from exc
        finally:
            waiting.release()
        remaining = None if timeout is None else timeout - (loop.time() - start)
        return await conn.call(method, args, timeout=remaining)

    async def _connection_with_room(self) -> ThriftConnection:
        woken = False
        while True:
            if self._closed:
                raise NotSentClosedError(
                    f"pool for {self._peer} is closed", public_message=BACKEND_UNAVAILABLE
                )
            conn = self._pick()
            if conn is not None:
                return conn
            if not self._connecting:
                if not self._conns:
                    if woken:  # every connect ended and none left a usable connection
                        raise self._connect_failed()
                    self._start_connect()  # nothing usable: always try at once
                elif self._may_grow():
                    self._start_connect()
                else:
                    limit = self._config.max_in_flight
                    raise NotSentOverloaded(
                        f"pool for {self._peer}: {len(self._conns)} connections with {limit} "
                        "calls in flight each, and no more may be opened",
                        public_message="backend overloaded",
                    )
            await self._connected.wait()
            woken = True

    def _connect_failed(self) -> Exception:
        error = self._connect_error
        if error is None:  # it connected, and the connection went at once
            return NotSentBrokenError(
                f"connection to {self._peer} closed as soon as it opened",
                public_message=BACKEND_UNAVAILABLE,
            )
        failed = NotSentConnectError(str(error), public_message=BACKEND_UNAVAILABLE)
        failed.__cause__ = error
        return failed

    def _start_connect(self) -> None:
        task = asyncio.get_running_loop().create_task(self._connect())
        self._connecting.add(task)
        task.add_done_callback(self._connect_done)

    async def _connect(self) -> None:
        """Open one connection and add it to the pool; a failure is recorded for the callers
        waiting, and logged once."""
        if self._header is False and time.monotonic() >= self._reprobe_at:
            self._header = None  # item 19: a framed answer is asked again, rarely
        try:
            conn = await ThriftConnection.connect(
                self._host, self._port, self._config, network=self._network, header=self._header
            )
        except NotSentConnectError as exc:
            self._connect_error = exc
            if not self._closed:
                self._grow_after = asyncio.get_running_loop().time() + _GROW_RETRY_DELAY
                level = logging.WARNING if self._ever_connected else logging.DEBUG
                logger.log(level, "pool for %s: %s", self._peer, exc)
            return
        if self._closed:
            await conn.close()
            return
        self._ever_connected = True
        self._connect_error = None
        if self._header is None and conn.probe_definite:
            self._header = conn.header
            if not conn.header:
                self._reprobe_at = time.monotonic() + REPROBE_FRAMED_AFTER
        self._conns.append(conn)

    def _connect_done(self, task: asyncio.Task[None]) -> None:
        self._connecting.discard(task)
        exc = None if task.cancelled() else task.exception()
        if exc is not None:
            # A bug, not a refused connect (that one is handled in _connect): log it, and
            # let the callers waiting for this connect fail instead of trying again.
            logger.error("pool for %s: connect failed", self._peer, exc_info=exc)
            error = NotSentConnectError(
                f"cannot connect to {self._peer}: {exc!r}", public_message=BACKEND_UNAVAILABLE
            )
            error.__cause__ = exc
            self._connect_error = error
        self._wake()

    def _wake(self) -> None:
        """Wake every caller waiting for a connect to end; later ones wait for the next."""
        event, self._connected = self._connected, asyncio.Event()
        event.set()

    # -- closing ---------------------------------------------------------------------------

    async def drop_connections(self) -> None:
        """Close every connection but keep the pool usable: the next call reconnects.

        For a backend found dead by a health probe: its connections are of no more use, but
        the backend may come back.
        """
        conns, self._conns = self._conns, []
        await asyncio.gather(*(conn.close() for conn in conns))

    async def close(self) -> None:
        """Close the pool: cancel a pending connect and close every connection.

        Pending calls fail with :class:`~offloop.errors.ClosedError`; later calls raise
        :class:`NotSentClosedError`. Idempotent.
        """
        self._closed = True
        self._wake()
        tasks = list(self._connecting)
        for task in tasks:
            task.cancel()
        if tasks:
            # wait() neither raises the tasks' outcomes (_connect_done reads them) nor
            # cancels them if we are cancelled ourselves.
            await asyncio.wait(tasks)
        conns, self._conns = self._conns, []
        await asyncio.gather(*(conn.close() for conn in conns))
