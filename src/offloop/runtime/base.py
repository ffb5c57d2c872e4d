"""What every pool offers: bounded admission, deadlines, one error for a failing job, and
statistics."""

from __future__ import annotations

import os
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from offloop.errors import OffloopError
from offloop.runtime.limiter import LimiterStats

__all__ = [
    "JobFactory",
    "JobFailed",
    "JobFn",
    "Pool",
    "PoolStats",
    "WorkerCrashed",
    "check_pool_bounds",
    "default_max_queued",
    "run_idle",
]

#: A function that runs one job: payload in, result out. Built once per worker.
JobFn = Callable[[Any], Any]
#: A picklable callable that builds the job function inside each worker (thread pool: once).
JobFactory = Callable[[], JobFn]


class WorkerCrashed(OffloopError):
    """The worker process running the job died (killed, segfault, ``os._exit``)."""


class JobFailed(OffloopError):
    """The job function raised: the pool ran the job and it failed (the worker lives on).

    Every pool raises this, whatever the job raised, so that callers handle one error. The
    original exception cannot always cross a process boundary (not every exception pickles),
    so what it said travels as text; in the thread pool it is also chained as ``__cause__``.
    ``str(exc)`` is ``"TypeName: message"``, the way a traceback's last line names it.

    Attributes:
        type_name: the class name of the exception the job raised (``"ValueError"``).
        message: ``str()`` of that exception.
        traceback_text: its formatted traceback, for the log (never for a client).
    """

    def __init__(self, type_name: str, message: str, traceback_text: str = "") -> None:
        super().__init__(f"{type_name}: {message}" if message else type_name)
        self.type_name = type_name
        self.message = message
        self.traceback_text = traceback_text

    @classmethod
    def from_exception(cls, exc: BaseException) -> JobFailed:
        """Describe ``exc`` as text (call it where ``exc`` was caught, so that the traceback
        is the job's own)."""
        try:
            message = str(exc)
        except Exception:  # a broken __str__ must not hide the job's failure
            message = f"<unprintable {type(exc).__name__}>"
        return cls(type(exc).__name__, message, "".join(traceback.format_exception(exc)))

    def __reduce__(self) -> tuple[type[JobFailed], tuple[str, str, str]]:
        # Exception pickles self.args (one string); rebuild from the three fields instead.
        return type(self), (self.type_name, self.message, self.traceback_text)


@dataclass(frozen=True)
class PoolStats:
    """A snapshot of a pool, for metrics and health checks.

    Attributes:
        workers: configured workers.
        alive: workers ready to take jobs (process pool: live children).
        busy: workers running a job now.
        queued: jobs admitted and waiting for a worker.
        restarts: children replaced since start (process pool only).
        admission: the admission limiter (``workers + max_queued`` slots): jobs admitted
            and not yet finished, including those whose caller gave up, the peak, and how
            many were refused. None from a pool that does not report it.
        completed: jobs that ran to an end since start (their function returned or raised;
            process pool: or their child died or was killed while running them); not those
            dropped before they ran. What ``/livez`` judges progress by.
    """

    workers: int
    alive: int
    busy: int
    queued: int
    restarts: int
    admission: LimiterStats | None = None
    completed: int = 0


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
    :class:`~offloop.errors.Overloaded` at once: nothing queues without bound. A pool admits
    at most ``workers + max_queued`` jobs (a :class:`~offloop.runtime.limiter.Limiter`); a
    job holds its slot until it finishes or is dropped from the queue, even after its caller
    gave up, so the bound stays true.

    Whatever a job function raises reaches the caller as :class:`JobFailed`, from every pool;
    a worker that dies under a job is :class:`WorkerCrashed` instead.
    """

    @property
    def workers(self) -> int: ...

    async def start(self) -> None:
        """Start the workers; raises if they cannot start (a handler that fails to import)."""

    async def run(self, payload: Any, *, timeout: float) -> Any:
        """Run one job and return its result.

        Raises:
            JobFailed: the job function raised (the worker lives on).
            Overloaded: every worker is busy and the queue is full.
            DeadlineExceeded: the job did not finish within ``timeout`` seconds.
            WorkerCrashed: the worker process died while running the job.
            ClosedError: the pool is closed, or was closed before or while the job ran.
        """

    def stats(self) -> PoolStats: ...

    async def close(self, grace: float = 0.0) -> None:
        """Stop the workers and return within about ``grace`` seconds.

        Queued jobs fail with :class:`~offloop.errors.ClosedError`; running jobs get up to
        ``grace`` seconds, then are abandoned (their callers see an error).
        """


def run_idle(tid: int = 0) -> bool:
    """Put the calling thread (``tid`` 0) or thread ``tid`` under Linux's ``SCHED_IDLE``
    policy: it runs only when no thread of a normal policy wants the CPU, however nice it is,
    and a thread of a normal policy that wakes takes the CPU from it at once. Threads it
    creates inherit the policy. Returns whether it took (False where the policy does not
    exist or may not be set; the thread keeps its niceness then)."""
    policy = getattr(os, "SCHED_IDLE", None)
    if policy is None:
        return False
    try:
        os.sched_setscheduler(tid, policy, os.sched_param(0))
    except OSError:
        return False
    return True
