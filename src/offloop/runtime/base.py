"""What every pool offers: bounded admission, deadlines and statistics."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from offloop.errors import OffloopError

__all__ = [
    "JobFactory",
    "JobFn",
    "Pool",
    "PoolStats",
    "WorkerCrashed",
    "check_pool_bounds",
    "default_max_queued",
]

#: A function that runs one job: payload in, result out. Built once per worker.
JobFn = Callable[[Any], Any]
#: A picklable callable that builds the job function inside each worker (thread pool: once).
JobFactory = Callable[[], JobFn]


class WorkerCrashed(OffloopError):
    """The worker process running the job died (killed, segfault, ``os._exit``)."""

    status_hint = 502


@dataclass(frozen=True)
class PoolStats:
    """A snapshot of a pool, for metrics and health checks.

    Attributes:
        workers: configured workers.
        alive: workers ready to take jobs (process pool: live children).
        busy: workers running a job now.
        queued: jobs admitted and waiting for a worker.
        restarts: children replaced since start (process pool only).
    """

    workers: int
    alive: int
    busy: int
    queued: int
    restarts: int


def default_max_queued(workers: int) -> int:
    """The default bound on queued jobs: four per worker, enough to keep every worker fed
    between replies without letting a burst queue for long."""
    return 4 * workers


def check_pool_bounds(workers: int, max_queued: int | None) -> int:
    """Validate a pool's size and queue bound.

    Args:
        workers: the pool's workers.
        max_queued: jobs that may wait for a worker; None for :func:`default_max_queued`.

    Returns:
        The queue bound to use.

    Raises:
        ValueError: ``workers`` < 1 or ``max_queued`` < 0.
    """
    if workers < 1:
        raise ValueError("workers must be at least 1")
    bound = default_max_queued(workers) if max_queued is None else max_queued
    if bound < 0:
        raise ValueError("max_queued must be >= 0")
    return bound


class Pool(Protocol):
    """A bounded pool of workers.

    ``run`` either admits the job (a worker is idle, or the queue has room) or raises
    :class:`~offloop.errors.Overloaded` at once: nothing queues without bound.
    """

    @property
    def workers(self) -> int: ...

    async def start(self) -> None:
        """Start the workers; raises if they cannot start (a handler that fails to import)."""

    async def run(self, payload: Any, *, timeout: float) -> Any:
        """Run one job and return its result.

        Raises:
            Overloaded: every worker is busy and the queue is full.
            DeadlineExceeded: the job did not finish within ``timeout`` seconds.
            WorkerCrashed: the worker process died while running the job.
            ClosedError: the pool is closed.
        """

    def stats(self) -> PoolStats: ...

    async def close(self, grace: float = 0.0) -> None:
        """Stop the workers: running jobs get up to ``grace`` seconds, then are abandoned."""
