"""Dynamic batching: merge calls of one method that arrive close together into one job.

A :class:`Batcher` holds at most one forming batch. The first call starts a timer of
``max_wait`` seconds; the batch is dispatched when the timer fires or when it reaches
``max_batch`` calls, whichever comes first, so no call waits longer than ``max_wait`` to be
dispatched. Dispatch goes through the same bounded pool as single calls, so the number of
batches in flight is bounded by the pool's admission, and a call waiting in a forming batch
is bounded by ``max_batch``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

__all__ = ["Batcher"]

#: Runs one batch: a list of payloads in, a list of results (one per payload) out.
RunBatch = Callable[[list[Any]], Awaitable[list[Any]]]


class Batcher:
    """Groups payloads for one batched method.

    Args:
        run: coroutine function that runs a whole batch; if it raises, every call of that
            batch (and only of that batch) gets the exception.
        max_batch: most payloads in one batch.
        max_wait: longest a payload waits for the batch to fill, in seconds.
    """

    def __init__(self, run: RunBatch, *, max_batch: int, max_wait: float) -> None:
        self._run = run
        self._max_batch = max_batch
        self._max_wait = max_wait
        self._items: list[tuple[Any, asyncio.Future[Any]]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.batches = 0

    async def submit(self, payload: Any) -> Any:
        """Add one payload and wait for its own result."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        self._items.append((payload, fut))
        if len(self._items) >= self._max_batch:
            self._flush()
        elif self._timer is None:
            self._timer = loop.call_later(self._max_wait, self._flush)
        return await fut

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        items, self._items = self._items, []
        items = [(p, f) for p, f in items if not f.cancelled()]
        if not items:
            return
        self.batches += 1
        task = asyncio.get_running_loop().create_task(self._dispatch(items))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

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
