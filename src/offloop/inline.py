"""Marking handler methods to run on the worker's event loop: ``@offloop.inline``.

A handler method normally runs in the worker's pool (a thread or a child process), which
costs a hand-off per call. Two kinds of method skip it and run on the worker's loop:

- a method defined with ``async def`` (found by :func:`loop_methods`, no marker needed);
- a plain method marked ``@offloop.inline``: one known to be tiny (a lookup, an echo), which
  must never block, since the loop serves every connection while it runs.

The worker builds one instance of the handler in its main process for these methods (see
``docs/worker.md``): with a process pool it is an extra instance besides the children's.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["inline", "is_inline", "loop_methods"]

F = TypeVar("F", bound=Callable[..., Any])

_ATTR = "__offloop_inline__"


def inline(fn: F) -> F:
    """Mark a (sync) handler method to run on the worker's loop, without a pool hand-off.

    Only for methods that return in microseconds: while one runs, the worker reads and
    answers nothing else. An ``async def`` method runs on the loop without this marker.
    """
    if inspect.iscoroutinefunction(fn):
        raise TypeError(f"{fn.__qualname__} is async def: it runs on the loop without @inline")
    setattr(fn, _ATTR, True)
    return fn


def is_inline(fn: Any) -> bool:
    """Whether ``fn`` is marked :func:`inline`."""
    return getattr(fn, _ATTR, False) is True


def loop_methods(handler: Any, names: Any) -> dict[str, str]:
    """Of the method ``names``, those of ``handler`` (class or instance) that run on the
    worker's loop: name -> ``"async"`` (``async def``) or ``"inline"`` (``@inline``)."""
    found = {}
    for name in names:
        fn = getattr(handler, name, None)
        if fn is None:
            continue
        if inspect.iscoroutinefunction(fn):
            found[name] = "async"
        elif is_inline(fn):
            found[name] = "inline"
    return found
