"""Serving a worker from its config until SIGTERM/SIGINT, then draining it.

The drain timeline on SIGTERM (:mod:`offloop.app.signals`): ``/readyz`` fails at once; every
call is still served for ``config.drain_delay`` seconds, while endpoints and DNS drop the
worker; then it stops accepting, answers new calls on open connections "shutting down", lets
the calls in flight finish within ``config.grace`` seconds, and returns (the command exits 0).
SIGINT skips the delay; a second signal exits at once.
"""

from __future__ import annotations

import asyncio

from offloop.app.signals import Stop, drain_delay, graceful_exit
from offloop.tls import reload_on_sighup
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
    signal exits at once). On SIGTERM, ``/readyz`` fails at once and calls are still served
    for ``config.drain_delay`` seconds; then (at once on SIGINT or ``stop``) it stops
    accepting and drains calls in flight within ``config.grace``.

    Args:
        config: the worker's configuration.
        handler: the handler object, instead of importing ``config.handler``.
        ready: set once the worker listens.
        stop: set to stop; when given, no signal handler is installed (embedding, tests),
            and there is no drain delay (for one, serve a ``WorkerServer`` yourself:
            ``begin_drain()``, wait, ``shutdown()``).

    Raises:
        OffloopError, ImportError, OSError: the worker could not start (a handler that does
            not import or start, a port in use).
    """
    server = WorkerServer(config, handler=handler)
    if stop is not None:
        await _serve(server, ready, stop)
        return
    with graceful_exit() as signalled, reload_on_sighup():  # SIGHUP: reload TLS certificates
        await _serve(server, ready, signalled)


async def _serve(
    server: WorkerServer, ready: asyncio.Event | None, stop: asyncio.Event | Stop
) -> None:
    await server.start()
    try:
        if ready is not None:
            ready.set()
        await stop.wait()
        if isinstance(stop, Stop) and stop.delayed:
            server.begin_drain()
            await drain_delay(server.config.drain_delay, "worker")
    finally:
        await server.shutdown()
