"""One bounded place, one object: a capacity limit that admits or refuses at once.

Every place in offloop that holds work (calls in flight in the gateway, on a connection, in a
connection pool, in an actor's mailbox, jobs admitted by a pool) is bounded by a
:class:`Limiter`. It never queues: :meth:`Limiter.try_acquire` either takes a slot or says no,
and the caller turns the no into its own error (``Overloaded`` and its kin), so that refusing
costs nothing and nothing grows without bound. Shaped after trio's ``CapacityLimiter``, minus
the waiting.

A limiter is thread-safe: pools release slots from their worker threads. The lock is held
for a few instructions only, never across a call.

:meth:`Limiter.stats` gives a snapshot for metrics (:class:`LimiterStats`): the limit, the
slots in use, the peak since start, and how many acquisitions were refused.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from types import TracebackType

__all__ = ["Limiter", "LimiterStats"]


@dataclass(frozen=True, slots=True)
class LimiterStats:
    """A snapshot of a :class:`Limiter`.

    Attributes:
        name: what the limiter bounds, for logs and metrics.
        limit: slots in all.
        borrowed: slots in use now.
        peak: the most slots ever in use at once.
        admitted: acquisitions granted since start.
        refused: acquisitions refused since start.
    """

    name: str
    limit: int
    borrowed: int
    peak: int
    admitted: int
    refused: int

    @property
    def available(self) -> int:
        """Slots free now."""
        return max(0, self.limit - self.borrowed)


class Limiter:
    """A fail-fast capacity limit with statistics.

    Args:
        limit: slots in all; at least 1.
        name: what is bounded (``"gateway calls in flight"``), for logs and metrics.

    Attributes:
        borrowed: slots in use now (read it; only :meth:`try_acquire` and :meth:`release`
            change it). A plain attribute, not a property: hot paths read it per call.

    Raises:
        ValueError: ``limit`` < 1.
    """

    __slots__ = ("_admitted", "_limit", "_lock", "_peak", "_refused", "borrowed", "name")

    def __init__(self, limit: int, *, name: str) -> None:
        if limit < 1:
            raise ValueError(f"{name}: limit must be at least 1, not {limit}")
        self.name = name
        self._limit = limit
        self.borrowed = 0
        self._peak = 0
        self._admitted = 0
        self._refused = 0
        self._lock = threading.Lock()

    @property
    def limit(self) -> int:
        """Slots in all."""
        return self._limit

    @property
    def available(self) -> int:
        """Slots free now."""
        return self._limit - self.borrowed

    @property
    def full(self) -> bool:
        """Whether the next :meth:`try_acquire` would be refused."""
        return self.borrowed >= self._limit

    def try_acquire(self) -> bool:
        """Take a slot if one is free.

        Returns:
            True if a slot was taken (give it back with :meth:`release`), False if every
            slot is in use (nothing was taken; the refusal is counted).
        """
        with self._lock:
            if self.borrowed >= self._limit:
                self._refused += 1
                return False
            self.borrowed += 1
            self._admitted += 1
            if self.borrowed > self._peak:
                self._peak = self.borrowed
            return True

    def release(self) -> None:
        """Give back a slot taken by :meth:`try_acquire`.

        Raises:
            RuntimeError: no slot is in use (a release without an acquire is a bug).
        """
        with self._lock:
            if self.borrowed <= 0:
                raise RuntimeError(f"{self.name}: release() without a matching acquire")
            self.borrowed -= 1

    def stats(self) -> LimiterStats:
        """A consistent snapshot of the counters."""
        with self._lock:
            return LimiterStats(
                self.name, self._limit, self.borrowed, self._peak, self._admitted, self._refused
            )

    def __repr__(self) -> str:
        return f"<Limiter {self.name!r} {self.borrowed}/{self._limit}>"

    # A held slot as a context manager, for code that acquired with try_acquire():
    #     if not limiter.try_acquire(): raise Overloaded(...)
    #     with limiter.held(): ...
    def held(self) -> _Held:
        """A context manager that releases one slot (already acquired) on exit."""
        return _Held(self)


class _Held:
    __slots__ = ("_limiter",)

    def __init__(self, limiter: Limiter) -> None:
        self._limiter = limiter

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._limiter.release()
