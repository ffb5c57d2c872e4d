"""Serving a worker from its config until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio

from offloop.app.signals import graceful_exit
from offloop.worker.config import WorkerConfig
from offloop.worker.server import WorkerServer

__all__ = ["serve_worker"]


async def serve_worker(
    config: WorkerConfig,
    *,
    handler: object | None = None,
    ready: asyncio.Event | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Start a :class:`~offloop.worker.server.WorkerServer` and serve until stopped.

    Stops on ``stop`` being set, or on SIGTERM/SIGINT when no ``stop`` is given (a second
    signal exits at once). Stopping drains calls in flight within ``config.grace``.

    Args:
        config: the worker's configuration.
        handler: the handler object, instead of importing ``config.handler``.
        ready: set once the worker listens.
        stop: set to stop; when given, no signal handler is installed (embedding, tests).

    Raises:
        OffloopError, ImportError, OSError: the worker could not start (a handler that does
            not import or start, a port in use).
    """
    server = WorkerServer(config, handler=handler)
    if stop is not None:
        await _serve(server, ready, stop)
        return
    with graceful_exit() as signalled:
        await _serve(server, ready, signalled)


async def _serve(server: WorkerServer, ready: asyncio.Event | None, stop: asyncio.Event) -> None:
    await server.start()
    try:
        if ready is not None:
            ready.set()
        await stop.wait()
    finally:
        await server.shutdown()
