"""A bounded thread pool, for work that releases the GIL (numpy, torch, I/O).

The pool owns its threads rather than wrapping ``concurrent.futures.ThreadPoolExecutor``,
for three reasons:

- **Bounded.** The executor's queue is unbounded; here a :class:`~offloop.runtime.limiter.Limiter`
  admits at most ``workers + max_queued`` jobs and the rest are refused at once.
- **No thread starts on the event loop while serving.** The executor starts its threads
  lazily inside ``submit()``, on the loop thread under a global lock; on a loaded two-core
  host that stalled the loop for 117-234 ms. :meth:`ThreadPool.start` starts one thread,
  which starts the others off the loop; :meth:`ThreadPool.run` only puts a job on a queue.
- **Closing takes ``grace``, not as long as the slowest job.** A thread cannot be killed. The
  executor's threads are joined at interpreter exit, so a process with one stuck job could not
  exit; these threads are daemons, and a job still running after the grace period is left
  behind to finish (or be dropped at exit) while its caller gets :class:`ClosedError`.

A job's life: admitted (a limiter slot taken), queued, then either run by a thread, or dropped
from the queue because its caller gave up or the pool closed. A running job whose caller gives
up (cancelled or timed out) is told through :data:`offloop.context.CANCEL`: the handler sees
:func:`offloop.cancelled` turn true and :func:`offloop.check_deadline` raise. Its slot is given
back exactly once, when it returns or is dropped; a job past its deadline runs on and keeps
its slot until it returns, so the bound stays true. Whatever the job function raises reaches
the caller as :class:`~offloop.runtime.base.JobFailed`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import queue
import threading
from collections.abc import Callable
from typing import Any

from offloop.context import CANCEL, CancelFlag
from offloop.errors import ClosedError, DeadlineExceeded, Overloaded
from offloop.runtime.base import (
    JobFactory,
    JobFailed,
    JobFn,
    PoolStats,
    check_pool_bounds,
)
from offloop.runtime.limiter import Limiter

__all__ = ["ThreadPool", "max_dropped_jobs"]

log = logging.getLogger("offloop.runtime")

#: Names of the pool's threads: ``offloop-pool_0``, ``offloop-pool_1``... (as the executor
#: this pool replaced named them, so that logs and dashboards keep matching).
THREAD_NAME_PREFIX = "offloop-pool"


#: An item's states. Moves happen under the pool's lock: QUEUED to RUNNING (a thread took
#: it) or to DROPPED (its caller gave up, or the pool closed, before a thread took it);
#: RUNNING to DONE.
_QUEUED, _RUNNING, _DROPPED, _DONE = range(4)


class _Item:
    """One piece of work on the queue: the call to make, the future its caller awaits on the
    loop (``waiter``), its state, and its cancel flag. ``job`` is false for the start-up item,
    which holds no admission slot and is not counted as busy.

    Issue 16: a job's hand-off is this one object and one loop future. A
    ``concurrent.futures.Future`` (a condition and its lock), two done callbacks, and the
    futures of ``wait_for`` and ``shield`` each job used to make were a third of a light call's
    cost in the pool.
    """

    __slots__ = ("call", "cancel", "job", "loop", "state", "waiter")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        call: Callable[[], Any],
        *,
        job: bool = True,
    ) -> None:
        self.call = call
        self.loop = loop
        self.waiter: asyncio.Future[Any] = loop.create_future()
        self.job = job
        self.state = _QUEUED
        #: Set when its caller gives up (cancelled, or timed out): the running job sees it as
        #: :data:`offloop.context.CANCEL` (issue 13, cancellation).
        self.cancel = CancelFlag()


def max_dropped_jobs(slots: int) -> int:
    """Jobs given up while queued that may wait on the queue for a thread to skip them:
    behind threads that do not return (a stuck handler), past this many, calls are refused
    as overloaded. Each holds about 300 bytes (its payload is let go when it is dropped)."""
    return max(1024, 4 * slots)


def _dropped_call() -> None:
    """What a dropped item calls instead of its job: never called (a thread skips it)."""
    raise AssertionError("a dropped job was run")


def _settle(waiter: asyncio.Future[Any], ok: bool, value: Any) -> None:
    """Hand a finished item's outcome to its waiter, on the waiter's loop."""
    if waiter.done():  # its caller gave up, or close() failed it
        return
    if ok:
        waiter.set_result(value)
    else:
        waiter.set_exception(value)


def _expire(item: _Item, pool: ThreadPool, timeout: float) -> None:
    """``item``'s time ran out (a timer on the loop): its caller hears it now."""
    if not item.waiter.done():
        item.waiter.set_exception(DeadlineExceeded(f"call did not finish within {timeout:.3g} s"))
    pool._give_up(item)


class ThreadPool:
    """Runs jobs in ``workers`` threads of this process.

    Args:
        factory: builds the job function once; it must be thread-safe.
        workers: threads.
        max_queued: jobs that may wait for a thread (default four per worker).
        nice: niceness added to each pool thread (Linux nice is per thread), so that the
            event loop thread keeps its priority while the pool is saturated; 0 to leave it.
    """

    def __init__(
        self,
        factory: JobFactory,
        *,
        workers: int,
        max_queued: int | None = None,
        nice: int = 0,
    ) -> None:
        self._max_queued = check_pool_bounds(workers, max_queued)
        self._factory = factory
        self._workers = workers
        self._nice = nice
        self._niceness: int | None = None  # of pool threads, set by start()
        self._fn: JobFn | None = None
        self._admission = Limiter(workers + self._max_queued, name="thread pool jobs")
        # Unbounded as a type, bounded in fact: it holds admitted jobs (the limiter's slots),
        # dropped ones (their payloads let go; at most max_dropped_jobs: see run), one
        # start-up item and one stop sentinel per thread.
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._jobs: set[_Item] = set()  # jobs whose caller waits, for close() to fail
        self._busy = 0
        self._dropped = 0  # items dropped while queued and still on the queue
        self._max_dropped = max_dropped_jobs(workers + self._max_queued)
        self._completed = 0  # jobs that ran to an end (PoolStats.completed)
        self._lock = threading.Lock()
        self._started = False
        self._closed = False

    @property
    def workers(self) -> int:
        return self._workers

    async def start(self) -> None:
        """Start every thread and build the job function in one of them.

        Only the first thread is started here, on the loop; it starts the others and builds
        the job function (importing a handler may take seconds) off the loop. When this
        returns, all ``workers`` threads exist, so :meth:`run` never starts one.

        Raises:
            RuntimeError: the pool was started before.
            Exception: whatever the factory raised (the threads are stopped again).
        """
        if self._started:
            raise RuntimeError("thread pool already started")
        self._started = True
        self._niceness = self._thread_niceness()
        loop = asyncio.get_running_loop()
        boot = _Item(loop, self._boot, job=False)
        self._queue.put(boot)
        try:
            self._start_thread()
            await boot.waiter
        except BaseException:
            self._stop_threads()
            self._closed = True
            raise

    def _boot(self) -> None:
        for _ in range(self._workers - 1):
            self._start_thread()
        self._fn = self._factory()

    def _start_thread(self) -> None:
        thread = threading.Thread(
            target=self._serve,
            name=f"{THREAD_NAME_PREFIX}_{len(self._threads)}",
            daemon=True,  # see the module docstring: a stuck job must not hold up exit
        )
        thread.start()
        self._threads.append(thread)

    def _stop_threads(self) -> None:
        # Each thread takes one sentinel once the items before it are done or skipped. One
        # per worker, not per thread started: a start-up cut short may still be starting some.
        for _ in range(self._workers):
            self._queue.put(None)

    def _thread_niceness(self) -> int | None:
        """The niceness of pool threads: the starting thread's plus ``nice`` (as the process
        pool's ``os.nice()``), or None to leave it.

        Worked out once, on the thread that calls :meth:`start`: a Linux thread inherits its
        creator's niceness, and all threads but the first are created by a pool thread that
        has already lowered its own.
        """
        if not self._nice:
            return None
        try:
            return min(19, os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) + self._nice)
        except OSError as exc:  # not Linux: run at normal priority
            log.debug("cannot renice pool threads: %s", exc)
            return None

    def _renice(self) -> None:
        if self._niceness is not None:
            try:
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), self._niceness)
            except OSError as exc:  # not permitted: run at normal priority
                log.debug("cannot renice pool thread: %s", exc)

    def _serve(self) -> None:
        """A pool thread: run items until a stop sentinel."""
        self._renice()
        while (item := self._queue.get()) is not None:
            self._run_item(item)
            # Let go of the item now rather than when the next one comes: it holds the job's
            # payload and result, which may be large.
            del item

    def _run_item(self, item: _Item) -> None:
        if not item.job:
            self._run_boot(item)
            return
        with self._lock:
            if item.state != _QUEUED:
                self._dropped -= 1  # dropped while queued; its slot went back then
                return
            item.state = _RUNNING
            self._busy += 1
        token = CANCEL.set(item.cancel)  # offloop.cancelled() in the handler
        try:
            value, ok = item.call(), True
        except BaseException as exc:  # the thread must survive; the caller gets the error
            value, ok = exc, False
        finally:
            CANCEL.reset(token)
        # Slot, then busy, go back before the waiter hears of it: a caller who has the result
        # finds the job counted neither busy nor admitted, and one who sees busy fall finds
        # room.
        self._admission.release()
        with self._lock:
            item.state = _DONE
            self._busy -= 1
            self._completed += 1  # item 5: PoolStats.completed
        # A closed loop raises RuntimeError: a job left behind at close, and nobody waits.
        with contextlib.suppress(RuntimeError):
            item.loop.call_soon_threadsafe(_settle, item.waiter, ok, value)
        del value

    @staticmethod
    def _run_boot(item: _Item) -> None:
        try:
            value, ok = item.call(), True
        except BaseException as exc:  # the factory failed: start() raises it
            value, ok = exc, False
        with contextlib.suppress(RuntimeError):
            item.loop.call_soon_threadsafe(_settle, item.waiter, ok, value)

    def _call(self, payload: Any) -> Any:
        assert self._fn is not None
        try:
            return self._fn(payload)
        except BaseException as exc:  # even SystemExit: a job must not stop the server
            raise JobFailed.from_exception(exc) from exc

    async def run(self, payload: Any, *, timeout: float) -> Any:
        if self._closed or self._fn is None:
            raise ClosedError("thread pool is closed")
        if not self._admission.try_acquire():
            raise Overloaded(f"{self._workers} threads busy and {self._max_queued} calls queued")
        if self._dropped >= self._max_dropped:
            # Calls given up while queued leave the queue only when a thread reaches them:
            # behind threads that do not return, they are bounded too.
            self._admission.release()
            raise Overloaded(
                f"{self._dropped} calls given up wait to leave the queue behind busy threads"
            )
        loop = asyncio.get_running_loop()
        item = _Item(loop, functools.partial(self._call, payload))
        self._jobs.add(item)
        self._queue.put(item)
        timer = loop.call_later(timeout, _expire, item, self, timeout)
        try:
            return await item.waiter
        except asyncio.CancelledError:
            self._give_up(item)
            raise
        finally:
            timer.cancel()
            self._jobs.discard(item)

    def _give_up(self, item: _Item) -> None:
        """``item``'s caller gave up (cancelled, or its time ran out): a queued job is dropped
        and its slot goes back; a running one sees its cancel flag and keeps its slot until
        it returns."""
        item.cancel.set()  # a running job sees it: offloop.cancelled(), check_deadline()
        with self._lock:
            dropped = item.state == _QUEUED
            if dropped:
                item.state = _DROPPED
                self._dropped += 1
        if dropped:
            item.call = _dropped_call  # its payload is let go now, not when a thread comes
            self._admission.release()

    def stats(self) -> PoolStats:
        admission = self._admission.stats()
        with self._lock:
            busy = self._busy
            completed = self._completed
        alive = 0 if self._closed or self._fn is None else self._workers
        return PoolStats(
            workers=self._workers,
            alive=alive,
            busy=busy,
            queued=max(0, admission.borrowed - busy),
            restarts=0,
            admission=admission,
            completed=completed,
        )

    async def close(self, grace: float = 0.0) -> None:
        """Stop the threads; return within about ``grace`` seconds.

        Queued jobs fail with :class:`ClosedError` at once. Running jobs get ``grace``
        seconds; then their callers get :class:`ClosedError` and close returns. A thread
        cannot be stopped from outside, so a thread whose job is still running is left
        behind (logged once): it finishes the job, then exits. Pool threads are daemons, so
        such a thread does not hold up the interpreter's exit.
        """
        if self._closed:
            return
        self._closed = True
        for item in self._jobs:
            with self._lock:
                dropped = item.state == _QUEUED
                if dropped:
                    item.state = _DROPPED
                    self._dropped += 1
            if dropped:
                item.call = _dropped_call
                self._admission.release()
                if not item.waiter.done():
                    item.waiter.set_exception(ClosedError("thread pool closed before the call ran"))
        self._stop_threads()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while self._busy and loop.time() < deadline:
            await asyncio.sleep(0.01)
        if not self._busy:
            return
        log.warning(
            "thread pool closed with %d calls still running after %.3g s of grace: "
            "their threads are left to finish them",
            self._busy,
            grace,
        )
        for item in self._jobs:
            if not item.waiter.done():
                item.waiter.set_exception(
                    ClosedError("thread pool closed while the call was running")
                )
