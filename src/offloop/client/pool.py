"""A small pool of multiplexed connections to one backend.

Each call goes to the usable connection with the fewest calls in flight. Connections open
lazily, at most ``size`` of them, one at a time:

- no usable connection: the caller waits for a connect (callers that arrive meanwhile wait
  for the same one);
- every usable connection is busy and the pool is not full: the caller uses the least busy
  one now, and the pool opens another in the background for later calls.

Broken connections are dropped when next seen and replaced on demand. Every connect runs as
a task the pool owns; :meth:`ConnectionPool.close` cancels it and closes every connection.
Calls are bounded: each connection refuses calls over ``config.max_in_flight``, and callers
waiting for a connect count against the same total of ``size * max_in_flight``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from offloop.client.config import ClientConfig
from offloop.client.connection import ThriftConnection
from offloop.client.errors import (
    BACKEND_UNAVAILABLE,
    NotSentClosedError,
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
        self._connecting: asyncio.Task[ThriftConnection] | None = None
        # Callers waiting for a connect, bounded like the calls the connections may carry.
        self._waiting = Limiter(
            size * config.max_in_flight, name=f"callers waiting to connect to {self._peer}"
        )
        self._grow_after = 0.0  # loop time before which no background connect starts
        self._closed = False

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
        """Calls in flight on every connection, plus callers waiting for a connect."""
        return sum(conn.in_flight for conn in self._conns) + self._waiting.borrowed

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
            f"in_flight={self.in_flight}{' closed' if self._closed else ''}>"
        )

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
            NotSentOverloaded: the pool holds ``size * max_in_flight`` calls.
            NotSentDeadline: the deadline passed while waiting for a connect.
            Exception: anything :meth:`ThriftConnection.call` raises.
        """
        if self._closed:
            raise NotSentClosedError(
                f"pool for {self._peer} is closed", public_message=BACKEND_UNAVAILABLE
            )
        conn = self._pick()
        if conn is not None:
            return await conn.call(method, args, timeout=timeout)
        return await self._call_after_connect(method, args, timeout)

    def _pick(self) -> ThriftConnection | None:
        """The usable connection with the fewest calls in flight, or None.

        Drops the connections that are no longer usable, and starts growing the pool in the
        background when even the least busy connection is busy.
        """
        best: ThriftConnection | None = None
        best_n = 0
        stale = False
        for conn in self._conns:
            if conn.is_usable:
                n = conn.in_flight
                if best is None or n < best_n:
                    best, best_n = conn, n
            else:
                stale = True
        if stale:
            self._conns = [conn for conn in self._conns if conn.is_usable]
        if (
            best_n
            and self._connecting is None
            and len(self._conns) < self._size
            and asyncio.get_running_loop().time() >= self._grow_after
        ):
            self._start_connect()
        return best

    async def _call_after_connect(
        self, method: MethodInfo, args: Any, timeout: float | None
    ) -> Any:
        waiting = self._waiting
        if not waiting.try_acquire():
            raise NotSentOverloaded(
                f"pool for {self._peer}: {waiting.borrowed} callers wait for a connection",
                public_message="backend overloaded",
            )
        loop = asyncio.get_running_loop()
        start = loop.time()
        task = self._connecting or self._start_connect()
        try:
            async with asyncio.timeout(timeout):
                conn = await asyncio.shield(task)
        except TimeoutError as exc:
            raise NotSentDeadline(
                f"call of {method.name} to {self._peer}: no connection within {timeout}s"
            ) from exc
        except asyncio.CancelledError:
            # The shield passes on the connect's own cancellation (by close()); only ours
            # should propagate as a cancellation.
            current = asyncio.current_task()
            if task.cancelled() and (current is None or not current.cancelling()):
                raise NotSentClosedError(
                    f"pool for {self._peer} closed while connecting",
                    public_message=BACKEND_UNAVAILABLE,
                ) from None
            raise
        finally:
            waiting.release()
        if self._closed:
            raise NotSentClosedError(
                f"pool for {self._peer} is closed", public_message=BACKEND_UNAVAILABLE
            )
        remaining = None if timeout is None else timeout - (loop.time() - start)
        # Many callers may have waited for this connect: spread them, and let the pool grow.
        return await (self._pick() or conn).call(method, args, timeout=remaining)

    def _start_connect(self) -> asyncio.Task[ThriftConnection]:
        task = asyncio.get_running_loop().create_task(self._connect())
        self._connecting = task
        task.add_done_callback(self._connect_done)
        return task

    async def _connect(self) -> ThriftConnection:
        try:
            conn = await ThriftConnection.connect(
                self._host, self._port, self._config, network=self._network
            )
        finally:
            self._connecting = None
        if self._closed:
            await conn.close()
            raise NotSentClosedError(
                f"pool for {self._peer} is closed", public_message=BACKEND_UNAVAILABLE
            )
        self._conns.append(conn)
        return conn

    def _connect_done(self, task: asyncio.Task[ThriftConnection]) -> None:
        # Retrieve the outcome so that a failed background connect is logged once, here;
        # callers waiting on it get the same error through their shield.
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None and not self._closed:
            self._grow_after = asyncio.get_running_loop().time() + _GROW_RETRY_DELAY
            logger.warning("pool for %s: %s", self._peer, exc)

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
        task = self._connecting
        if task is not None:
            task.cancel()
            # wait() neither raises the task's outcome (_connect_done reads it) nor cancels
            # the task if we are cancelled ourselves.
            await asyncio.wait([task])
        conns, self._conns = self._conns, []
        await asyncio.gather(*(conn.close() for conn in conns))
