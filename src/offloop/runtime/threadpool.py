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
import concurrent.futures
import contextlib
import logging
import os
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from offloop.context import CANCEL, CancelFlag
from offloop.errors import ClosedError, DeadlineExceeded, Overloaded
from offloop.runtime.base import JobFactory, JobFailed, JobFn, PoolStats, check_pool_bounds
from offloop.runtime.limiter import Limiter

__all__ = ["ThreadPool", "max_dropped_jobs"]

log = logging.getLogger("offloop.runtime")

#: Names of the pool's threads: ``offloop-pool_0``, ``offloop-pool_1``... (as the executor
#: this pool replaced named them, so that logs and dashboards keep matching).
THREAD_NAME_PREFIX = "offloop-pool"


@dataclass(eq=False, slots=True)
class _Item:
    """One piece of work on the queue.

    ``future`` is the thread side's state: ``cancel()`` succeeds only while the item is
    queued, and its done callbacks run exactly once, whether it ran or was cancelled.
    ``waiter`` is what the caller awaits on the loop. ``job`` is false for the start-up
    item, which holds no admission slot and is not counted as busy.
    """

    call: Callable[[], Any]
    future: concurrent.futures.Future[Any]
    waiter: asyncio.Future[Any]
    job: bool = True
    ran: bool = False  # counted as busy: uncounted when its slot goes back
    #: Set when its caller gives up (cancelled, or timed out): the running job sees it as
    #: :data:`offloop.context.CANCEL` (issue 13, cancellation).
    cancel: CancelFlag = field(default_factory=CancelFlag)


def max_dropped_jobs(slots: int) -> int:
    """Jobs given up while queued that may wait on the queue for a thread to skip them:
    behind threads that do not return (a stuck handler), past this many, calls are refused
    as overloaded. Each holds about 2 KiB (its payload is let go when it is dropped)."""
    return max(1024, 4 * slots)


def _dropped_call() -> None:
    """What a dropped item holds instead of its job: never called (its future is cancelled)."""
    raise AssertionError("a dropped job was run")


def _pass_on(loop: asyncio.AbstractEventLoop, waiter: asyncio.Future[Any], future: Any) -> None:
    """Hand a finished (or cancelled) item's outcome to its waiter, on the waiter's loop."""
    # A closed loop raises RuntimeError: a job left behind at close, and nobody waits.
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(_settle, waiter, future)


def _settle(waiter: asyncio.Future[Any], future: concurrent.futures.Future[Any]) -> None:
    if waiter.done():  # already failed by close(), or its caller gave up
        return
    if future.cancelled():  # only close() cancels an item whose caller still waits
        waiter.set_exception(ClosedError("thread pool closed before the call ran"))
    elif (exc := future.exception()) is not None:
        waiter.set_exception(exc)
    else:
        waiter.set_result(future.result())


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
        self._dropped = 0  # jobs dropped while queued and still on the queue
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
        boot = self._submit(loop, self._boot, holds_slot=False)
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

    def _submit(
        self, loop: asyncio.AbstractEventLoop, call: Callable[[], Any], *, holds_slot: bool
    ) -> _Item:
        item = _Item(call, concurrent.futures.Future(), loop.create_future(), holds_slot)
        if holds_slot:
            # Exactly once: when the job returns, or when it is dropped from the queue. Before
            # the waiter hears of it, so that a caller who got a result finds the slot free.
            item.future.add_done_callback(lambda _future: self._release(item))
        item.future.add_done_callback(lambda future: _pass_on(loop, item.waiter, future))
        self._queue.put(item)
        return item

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
        if not item.future.set_running_or_notify_cancel():
            if item.job:
                with self._lock:
                    self._dropped -= 1  # dropped while queued; its slot went back then
            return
        if not item.job:
            self._run_boot(item)
            return
        with self._lock:
            self._busy += 1
            item.ran = True
        token = CANCEL.set(item.cancel)  # offloop.cancelled() in the handler
        try:
            result = item.call()
        except BaseException as exc:  # the thread must survive; the caller gets the error
            self._ran_to_end()
            item.future.set_exception(exc)
        else:
            self._ran_to_end()
            item.future.set_result(result)
        finally:
            CANCEL.reset(token)
        # Busy falls with the slot, in _release (a done callback that runs before the one that
        # hands the outcome to its waiter): a caller who has the result finds the job counted
        # neither busy nor admitted, and one who sees busy fall finds room.

    def _ran_to_end(self) -> None:
        """Item 5: count a job whose function returned or raised (``PoolStats.completed``)."""
        with self._lock:
            self._completed += 1

    @staticmethod
    def _run_boot(item: _Item) -> None:
        try:
            item.future.set_result(item.call())
        except BaseException as exc:  # the factory failed: start() raises it
            item.future.set_exception(exc)

    def _call(self, payload: Any) -> Any:
        assert self._fn is not None
        try:
            return self._fn(payload)
        except BaseException as exc:  # even SystemExit: a job must not stop the server
            raise JobFailed.from_exception(exc) from exc

    def _release(self, item: _Item) -> None:
        """An admitted job is done, or dropped from the queue: its slot goes back, and, if it
        ran, it stops counting as busy (slot first: who sees busy fall finds room)."""
        self._admission.release()
        if item.ran:
            with self._lock:
                self._busy -= 1

    async def run(self, payload: Any, *, timeout: float) -> Any:
        if self._closed or self._fn is None:
            raise ClosedError("thread pool is closed")
        if not self._admission.try_acquire():
            raise Overloaded(f"{self._workers} threads busy and {self._max_queued} calls queued")
        if self._dropped >= self._max_dropped:
            # Jobs given up while queued leave the queue only when a thread reaches them:
            # behind threads that do not return, they are bounded too.
            self._admission.release()
            raise Overloaded(
                f"{self._dropped} calls given up wait to leave the queue behind busy threads"
            )
        item = self._submit(
            asyncio.get_running_loop(), lambda: self._call(payload), holds_slot=True
        )
        self._jobs.add(item)
        try:
            return await asyncio.wait_for(asyncio.shield(item.waiter), timeout)
        except TimeoutError:
            self._give_up(item)
            raise DeadlineExceeded(f"call did not finish within {timeout:.3g} s") from None
        except asyncio.CancelledError:
            self._give_up(item)
            raise
        finally:
            self._jobs.discard(item)

    def _drop(self, item: _Item) -> None:
        """Drop ``item`` from the queue if it has not started (its slot goes back through
        its future's callback), letting go of its payload now rather than when a thread
        reaches it."""
        if item.future.cancel():  # succeeds for queued jobs only
            with self._lock:
                self._dropped += 1
            item.call = _dropped_call

    def _give_up(self, item: _Item) -> None:
        item.cancel.set()  # a running job sees it: offloop.cancelled(), check_deadline()
        self._drop(item)
        # Nobody will read the outcome: without this, an error would be logged as never
        # retrieved (the shield stops passing it on once its caller left).
        item.waiter.cancel()

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
            self._drop(item)
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
