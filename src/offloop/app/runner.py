"""Running a server coroutine as a process's main program: uvloop, and errors said once."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

__all__ = ["install_uvloop", "run"]


def install_uvloop() -> None:
    """Make uvloop the event loop of ``asyncio.run`` where it is installed."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency; Windows lacks it
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def run(main: Coroutine[Any, Any, None]) -> None:
    """Run ``main`` (``serve_gateway(...)``, ``serve_worker(...)``) on uvloop until it returns.

    Raises:
        whatever ``main`` raises; start-up failures are :class:`~offloop.errors.OffloopError`,
        ``ImportError`` (a handler) or ``OSError`` (a port in use).
    """
    install_uvloop()
    asyncio.run(main)
