"""A bounded thread pool, for work that releases the GIL (numpy, torch, I/O).

``concurrent.futures.ThreadPoolExecutor`` has an unbounded queue; this wrapper admits at most
``workers + max_queued`` jobs and refuses the rest at once. A job past its deadline is answered
with :class:`~offloop.errors.DeadlineExceeded`; a thread cannot be killed, so it runs on and
keeps its admission slot until it returns (the bound stays true).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import threading
from typing import Any

from offloop.errors import ClosedError, DeadlineExceeded, Overloaded
from offloop.runtime.base import JobFactory, JobFn, PoolStats, check_pool_bounds

__all__ = ["ThreadPool"]

log = logging.getLogger("offloop.runtime")


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
        self._fn: JobFn | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._admitted = 0  # running + queued, including jobs whose caller gave up
        self._busy = 0
        self._lock = threading.Lock()
        self._closed = False

    @property
    def workers(self) -> int:
        return self._workers

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=self._workers,
            thread_name_prefix="offloop-pool",
            initializer=self._init_thread,
        )
        # Build the job function off the loop: importing a handler may take seconds.
        self._fn = await loop.run_in_executor(self._executor, self._factory)

    def _init_thread(self) -> None:
        if self._nice:
            try:
                # Added to the niceness the thread inherited, as the process pool's os.nice().
                tid = threading.get_native_id()
                os.setpriority(
                    os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + self._nice)
                )
            except OSError as exc:  # not permitted or not Linux: run at normal priority
                log.debug("cannot renice pool thread: %s", exc)

    def _call(self, payload: Any) -> Any:
        assert self._fn is not None
        with self._lock:
            self._busy += 1
        try:
            return self._fn(payload)
        finally:
            with self._lock:
                self._busy -= 1

    def _release(self, _: object) -> None:
        with self._lock:
            self._admitted -= 1

    async def run(self, payload: Any, *, timeout: float) -> Any:
        if self._closed or self._executor is None:
            raise ClosedError("thread pool is closed")
        with self._lock:
            if self._admitted >= self._workers + self._max_queued:
                raise Overloaded(
                    f"overloaded: {self._workers} threads busy and {self._max_queued} calls queued"
                )
            self._admitted += 1
        try:
            cfut = self._executor.submit(self._call, payload)
        except RuntimeError as exc:  # executor shut down between the check and submit
            self._release(None)
            raise ClosedError("thread pool is closed") from exc
        cfut.add_done_callback(self._release)
        fut = asyncio.wrap_future(cfut)
        try:
            return await asyncio.wait_for(asyncio.shield(fut), timeout)
        except TimeoutError:
            cfut.cancel()  # frees the slot if the job never started
            raise DeadlineExceeded(f"call did not finish within {timeout:.3g} s") from None
        except asyncio.CancelledError:
            cfut.cancel()
            raise

    def stats(self) -> PoolStats:
        with self._lock:
            busy, admitted = self._busy, self._admitted
        alive = 0 if self._closed or self._fn is None else self._workers
        return PoolStats(
            workers=self._workers,
            alive=alive,
            busy=busy,
            queued=max(0, admitted - busy),
            restarts=0,
        )

    async def close(self, grace: float = 0.0) -> None:
        if self._closed:
            return
        self._closed = True
        ex = self._executor
        if ex is None:
            return
        ex.shutdown(wait=False, cancel_futures=True)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while self.stats().busy and loop.time() < deadline:
            await asyncio.sleep(0.01)
        if self.stats().busy:
            log.warning("thread pool closed with %d calls still running", self.stats().busy)
