"""The bound on frames not yet whole: what slow senders may make the worker hold.

Each connection's decoder holds at most one partial frame. :class:`PartialFrames` counts their
bytes across all connections, times each from its first byte (``frame_timeout``), and past
``max_partial_bytes`` closes the connections whose partial frame began longest ago: a slow
sender, not one at network speed. While the worker holds a connection back at its call bound,
its frame clock stops: the wait is the worker's doing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from prometheus_client import Counter

if TYPE_CHECKING:
    from offloop.worker.connection import Connection

__all__ = ["PartialFrames"]

log = logging.getLogger("offloop.worker")


class PartialFrames:
    """Partial frames of all connections: counted, timed and shed.

    Args:
        max_bytes: bytes all connections' partial frames may hold together.
        frame_timeout: seconds a frame may take to arrive whole from its first byte.
        shed: counter of connections closed for the byte bound (labelled by reason).
        overdue: called with a connection whose frame is overdue and the message to log
            (the server closes it as a protocol error).
    """

    def __init__(
        self,
        max_bytes: int,
        frame_timeout: float,
        shed: Counter,
        overdue: Callable[[Connection, str], None],
    ) -> None:
        self.max_bytes = max_bytes
        self.frame_timeout = frame_timeout
        #: Bytes all connections' partial frames hold now.
        self.total = 0
        self._shed_counter = shed
        self._overdue = overdue
        # Connections holding a timed partial frame, the one that began longest ago first
        # (dicts keep insertion order; a connection re-enters at the end for a new frame).
        self._timed: dict[Connection, None] = {}

    def account(self, conn: Connection, partial: int, completed: bool) -> None:
        """Account for the ``partial`` bytes of a frame not yet whole that ``conn`` holds
        now, after a read that ``completed`` a frame or not; time that frame; shed partial
        frames over the bound.

        A partial frame is timed from the read that brought its first byte (the one that
        completed the frame before it, or the first after none was held), except while the
        worker throttles the connection: then the clock stops, and starts afresh when the
        connection is read again.
        """
        grew = partial > conn.partial
        self.total += partial - conn.partial
        conn.partial = partial
        if conn.closing:
            conn.partial_since = None
            self._timed.pop(conn, None)
            if conn.timer is not None:
                conn.timer.cancel()
                conn.timer = None
        elif partial == 0 or conn.throttled:
            conn.partial_since = None  # its timer, if any, finds nothing to do when it fires
            self._timed.pop(conn, None)
        elif completed or conn.partial_since is None:
            loop = asyncio.get_running_loop()
            conn.partial_since = loop.time()
            self._timed.pop(conn, None)
            self._timed[conn] = None
            if conn.timer is None:
                conn.timer = loop.call_later(self.frame_timeout, self._clock, conn)
        if grew and self.total > self.max_bytes:
            self._shed()

    def _clock(self, conn: Connection) -> None:
        """``conn``'s frame timer fired: close it if its partial frame is overdue, else
        wait for what is left of the frame's time (one timer per connection, re-armed at
        most once per frame_timeout, whatever the read rate)."""
        conn.timer = None
        if conn.partial_since is None or conn.closing:
            return
        timeout = self.frame_timeout
        loop = asyncio.get_running_loop()
        left = conn.partial_since + timeout - loop.time()
        if left > 0:
            conn.timer = loop.call_later(left, self._clock, conn)
            return
        self._overdue(
            conn,
            f"a frame did not arrive whole within {timeout:g} s of its first byte "
            f"(frame_timeout; {conn.partial} bytes of it received"
            f"{', while the client did not read its replies' if conn.writes_paused else ''})",
        )

    def _shed(self) -> None:
        """Close the connections whose partial frame began longest ago until partial frames
        are within ``max_bytes``. A throttled connection is not a candidate: the worker
        holds it back, and its partial frame came in the read that throttled it."""
        loop = asyncio.get_running_loop()
        while self.total > self.max_bytes and self._timed:
            conn = next(iter(self._timed))
            age = loop.time() - (conn.partial_since or loop.time())
            log.warning(
                "closing connection from %s: partial frames of all connections hold %d bytes, "
                "over max_partial_bytes (%d); its frame began longest ago (%.3g s, %d bytes)",
                conn.peer,
                self.total,
                self.max_bytes,
                age,
                conn.partial,
            )
            self._shed_counter.labels("partial_bytes").inc()
            conn.close()
