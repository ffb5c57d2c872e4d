"""Serving a worker from its config until SIGTERM/SIGINT, then draining it.

The drain timeline on SIGTERM (:mod:`offloop.app.signals`): ``/readyz`` fails at once; every
call is still served for ``config.drain_delay`` seconds, while endpoints and DNS drop the
worker; then it stops accepting, answers new calls on open connections "shutting down", lets
the calls in flight finish within ``config.grace`` seconds, and returns (the command exits 0).
SIGINT skips the delay; a second signal exits at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from offloop import tracing
from offloop.app.signals import Stop, drain_delay, graceful_exit
from offloop.idl import IdlError, load_idl, service_names
from offloop.tls import reload_on_sighup
from offloop.worker.config import WorkerConfig
from offloop.worker.server import WorkerServer

__all__ = ["serve_worker", "unknown_services"]


async def serve_worker(
    config: WorkerConfig,
    *,
    handler: object | None = None,
    ready: asyncio.Event | None = None,
    stop: asyncio.Event | None = None,
    handlers: Mapping[str, object] | None = None,
) -> None:
    """Start a :class:`~offloop.worker.server.WorkerServer` and serve until stopped.

    Stops on ``stop`` being set, or on SIGTERM/SIGINT when no ``stop`` is given (a second
    signal exits at once). On SIGTERM, ``/readyz`` fails at once and calls are still served
    for ``config.drain_delay`` seconds; then (at once on SIGINT or ``stop``) it stops
    accepting and drains calls in flight within ``config.grace``.

    Args:
        config: the worker's configuration.
        handler: the handler object, instead of importing ``config.handler``.
        handlers: handler objects by service name (several services: ``config.services``),
            instead of importing theirs.
        ready: set once the worker listens.
        stop: set to stop; when given, no signal handler is installed (embedding, tests),
            and there is no drain delay (for one, serve a ``WorkerServer`` yourself:
            ``begin_drain()``, wait, ``shutdown()``).

    Raises:
        OffloopError, ImportError, OSError: the worker could not start (a handler that does
            not import or start, a port in use).
    """
    tracing.setup("offloop-worker")  # on by the OTEL_* variables: docs/tracing.md
    server = WorkerServer(config, handler=handler, handlers=handlers)
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


def unknown_services(config: WorkerConfig) -> str | None:
    """What is wrong with the services ``config`` names, in one line, if one of them is not
    a service of its IDL (a typo: the user's to fix, like a bad setting); None when all are.

    An IDL that does not load is not judged here: starting the worker says why.
    """
    try:
        known = service_names(load_idl(config.idl))
    except IdlError:
        return None
    missing = [name for name in config.handlers if name not in known]
    if not missing:
        return None
    names = ", ".join(repr(name) for name in missing)
    return (
        f"--service: {config.idl} declares no service {names} "
        f"(its services: {', '.join(known) or 'none'})"
    )
