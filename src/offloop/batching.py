"""Marking handler methods as batched: ``@offloop.batched(max_batch=32, max_wait_ms=5)``.

A batched method receives a list of calls' arguments and returns a list of results; the
worker server groups waiting calls into such lists before dispatch (see
:mod:`offloop.worker.batcher`), so batching works with thread and process pools alike.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["batch_options", "batched"]

F = TypeVar("F", bound=Callable[..., Any])

_ATTR = "__offloop_batch__"


def batched(*, max_batch: int = 32, max_wait_ms: float = 5.0) -> Callable[[F], F]:
    """Mark a handler method as batched.

    Args:
        max_batch: most calls merged into one handler call.
        max_wait_ms: longest a call waits for others while the pool is busy with other
            calls. A call that finds a worker idle leaves at once, and calls that arrive
            while the method's batches fill every worker join the next batch, which leaves
            when one of them finishes (see :mod:`offloop.worker.batcher`).
    """
    if max_batch < 1:
        raise ValueError("max_batch must be at least 1")
    if not 0 <= max_wait_ms <= 10_000:
        raise ValueError("max_wait_ms must be between 0 and 10000")

    def mark(fn: F) -> F:
        setattr(fn, _ATTR, (max_batch, max_wait_ms / 1000.0))
        return fn

    return mark


def batch_options(handler: Any) -> dict[str, tuple[int, float]]:
    """Batched methods of a handler (class or instance): name -> (max_batch, max_wait s)."""
    found: dict[str, tuple[int, float]] = {}
    for name in dir(handler):
        opts = getattr(getattr(handler, name, None), _ATTR, None)
        if opts is not None:
            found[name] = opts
    return found
