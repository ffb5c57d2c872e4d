"""Dynamic batching: merge calls of one method that arrive close together into one job.

A :class:`Batcher` holds at most one *forming* batch and counts its batches *in flight*
(dispatched, not yet finished). The wait is adaptive, so that batching costs nothing when
there is nothing to merge and grows batches while calls arrive faster than the model
finishes them:

- **A slot is free** (fewer than ``slots`` of its batches in flight, and ``ready()`` says the
  pool has an idle worker): the forming batch leaves at the end of the current loop
  iteration. A lone call therefore waits for no window, while calls read together (one read
  of a pipelining connection, several connections ready at once) still leave together.
- **No slot is free**: the batch keeps growing, and leaves when one of its batches finishes
  (calls that arrived while a batch ran are merged into the next one), or when it reaches
  ``max_batch``.
- ``max_wait`` bounds the wait for a pool busy with *other* work (``ready()`` false while
  this method has a slot): then the batch leaves after ``max_wait`` and queues in the pool
  like any call. While every slot holds one of its own batches, the timer does not send it:
  a call would wait for a worker anyway, and waiting here merges it with its successors.

Every wait is bounded: by ``max_batch`` calls, by a running batch (itself bounded by the
call timeout), or by ``max_wait``. Dispatch goes through the same bounded pool as single
calls, so the number of batches in flight is bounded by the pool's admission too.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

__all__ = ["Batcher"]

#: Runs one batch: a list of payloads in, a list of results (one per payload) out.
RunBatch = Callable[[list[Any]], Awaitable[list[Any]]]


def _always() -> bool:
    return True


class Batcher:
    """Groups payloads for one batched method.

    Args:
        run: coroutine function that runs a whole batch; if it raises, every call of that
            batch (and only of that batch) gets the exception.
        max_batch: most payloads in one batch.
        max_wait: longest a payload waits for a pool busy with other work, in seconds.
        slots: most batches of this method in flight before the forming one waits for one
            of them to finish (the pool's workers: more would only queue).
        ready: whether the pool has an idle worker now (default: always).
    """

    def __init__(
        self,
        run: RunBatch,
        *,
        max_batch: int,
        max_wait: float,
        slots: int = 1,
        ready: Callable[[], bool] = _always,
    ) -> None:
        if slots < 1:
            raise ValueError("slots must be at least 1")
        self._run = run
        self._max_batch = max_batch
        self._max_wait = max_wait
        self._slots = slots
        self._ready = ready
        self._items: list[tuple[Any, asyncio.Future[Any]]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._soon: asyncio.Handle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        #: Batches dispatched so far.
        self.batches = 0
        #: Batches dispatched and not yet finished.
        self.in_flight = 0

    async def submit(self, payload: Any) -> Any:
        """Add one payload and wait for its own result."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        self._items.append((payload, fut))
        if len(self._items) >= self._max_batch:
            self._flush()
        else:
            self._schedule(loop)
        return await fut

    def _slot_free(self) -> bool:
        return self.in_flight < self._slots and self._ready()

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        """Decide when the forming batch leaves (see the module's docstring)."""
        if self._soon is not None:
            return  # it leaves at the end of this iteration already
        if self._slot_free():
            # At the end of this iteration: calls read in the same one join it.
            self._soon = loop.call_soon(self._leave_now)
        elif self._timer is None and self.in_flight < self._slots:
            self._timer = loop.call_later(self._max_wait, self._flush)

    def _leave_now(self) -> None:
        self._soon = None
        self._flush()

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._soon is not None:
            self._soon.cancel()
            self._soon = None
        items, self._items = self._items, []
        items = [(p, f) for p, f in items if not f.cancelled()]
        if not items:
            return
        self.batches += 1
        self.in_flight += 1
        task = asyncio.get_running_loop().create_task(self._dispatch(items))
        self._tasks.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self.in_flight -= 1
        if self._items:
            # A slot of this method is free: what arrived while the batch ran leaves now
            # (or waits max_wait, if the pool is busy with other work).
            self._schedule(asyncio.get_running_loop())

    async def _dispatch(self, items: list[tuple[Any, asyncio.Future[Any]]]) -> None:
        try:
            results = await self._run([p for p, _ in items])
        except BaseException as exc:
            for _, fut in items:
                if not fut.done():
                    fut.set_exception(exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        for (_, fut), result in zip(items, results, strict=True):
            if not fut.done():
                fut.set_result(result)

    def flush(self) -> None:
        """Dispatch the forming batch now, without waiting for it to fill."""
        self._flush()

    async def close(self) -> None:
        """Dispatch what is forming, then cancel the batches still in flight and wait for
        them (their calls get the cancellation). To let batches finish first, call
        :meth:`flush` and wait for their calls."""
        self._flush()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
