"""Building a gateway from its config, and serving it with the configured HTTP server.

:func:`build_gateway` loads the IDL, picks the services and builds the caller of the mode
(:class:`~offloop.client.caller.AsyncCaller` or :class:`~offloop.client.actors.ActorCaller`).
:func:`serve_gateway` serves it with uvicorn (ASGI) or Tornado until stopped: stop accepting,
drain calls in flight within ``grace``, close the backends' connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import math
import resource
import socket
import sys

from offloop.app.signals import graceful_exit
from offloop.client.caller import AsyncCaller, Caller
from offloop.client.network import TCP, Network
from offloop.gateway.config import GatewayConfig
from offloop.gateway.connections import FrontGuard, connection_capacity
from offloop.gateway.core import Gateway
from offloop.idl import load_idl, service_info, service_names
from offloop.listen import ListenConfig

__all__ = ["bind_socket", "build_gateway", "raise_open_files_limit", "serve_gateway"]

log = logging.getLogger("offloop.gateway")


def build_gateway(config: GatewayConfig, *, network: Network = TCP) -> Gateway:
    """Wire a gateway: load the IDL, pick the services, build the caller for the mode.

    Args:
        config: the gateway's configuration.
        network: how loop mode's clients connect (an in-memory pair from
            :mod:`offloop.testing` runs gateway and workers without sockets; actor mode's
            blocking clients always use TCP).

    Raises:
        IdlError: the IDL or a named service is missing.
        ValueError: a service has no backend, or a backend names no service of the IDL.
    """
    module = load_idl(config.idl)
    names = list(config.services) or service_names(module)
    services = {n: service_info(module, n) for n in names}
    unknown = sorted(set(config.backends) - set(services) - {"*"})
    if unknown:
        raise ValueError(
            f"--backend names no service of {config.idl}: {', '.join(unknown)} "
            f"(services: {', '.join(services)})"
        )
    backends: dict[str, tuple[tuple[str, int], ...]] = {}
    for name in services:
        addrs = config.backends.get(name) or config.backends.get("*")
        if not addrs:
            raise ValueError(f"service {name} has no backend: add --backend {name}=host:port")
        backends[name] = addrs
    caller: Caller
    if config.mode == "actor":
        from offloop.client.actors import ActorCaller

        caller = ActorCaller(
            backends,
            actors=config.actors.count,
            mailbox=config.actors.mailbox,
            client=config.client,
            health=config.health,
        )
    else:
        caller = AsyncCaller(backends, config.client, health=config.health, network=network)
    return Gateway(config, services, caller)


def bind_socket(listen: ListenConfig) -> socket.socket:
    """A listening TCP socket for ``listen`` (port 0: a free one; read it off the socket).

    Binding before serving makes a port in use fail start-up with one clear error, on every
    front alike.

    Raises:
        OSError: the address cannot be bound (in use, not local, not permitted).
    """
    infos = socket.getaddrinfo(listen.host, listen.port, type=socket.SOCK_STREAM)
    family, kind, proto, _, addr = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(listen.backlog)
    except OSError as exc:
        sock.close()
        where = f"{listen.host}:{listen.port}"
        raise OSError(exc.errno, f"cannot listen on {where}: {exc.strerror}") from exc
    sock.setblocking(False)
    return sock


async def serve_gateway(
    gateway: Gateway,
    *,
    sock: socket.socket | None = None,
    ready: asyncio.Event | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Serve ``gateway`` with its configured HTTP server until stopped.

    Stops on ``stop`` being set, or on SIGTERM/SIGINT when no ``stop`` is given (a second
    signal exits at once). Stopping refuses new calls, drains calls in flight within
    ``config.grace`` and closes the backends' connections.

    Client connections are held to ``config.front``: at start the soft open-files limit is
    raised to the hard one (``raise_open_files_limit``), connections are capped at
    ``max_connections`` and at that limit less ``fd_reserve``
    (:func:`~offloop.gateway.connections.connection_capacity`), and a
    :class:`~offloop.gateway.connections.FrontGuard` closes idle and slow ones for as long as
    the gateway serves.

    Args:
        gateway: what :func:`build_gateway` made.
        sock: a socket from :func:`bind_socket` (default: bound here from
            ``config.listen``); closed when serving ends.
        ready: set once the gateway accepts requests.
        stop: set to stop; when given, no signal handler is installed (embedding, tests).

    Raises:
        OSError: the address cannot be bound.
        ValueError: the open-files limit leaves no descriptor for a client connection.
    """
    config = gateway.config
    if sock is None:
        sock = bind_socket(config.listen)
    # Everything made at start-up (modules, the IDL, the OpenAPI document) lives as long as
    # the process: keep it out of the collector's full passes, which otherwise pause the
    # loop for as long as it takes to walk all of it.
    gc.collect()
    gc.freeze()
    with contextlib.ExitStack() as stack:
        stack.callback(sock.close)
        if stop is None:
            stop = stack.enter_context(graceful_exit())
        guard = _front_guard(gateway)
        host, port = sock.getsockname()[:2]
        where = (
            f"gateway ({config.front.server}, {config.mode} mode) on http://{host}:{port}, "
            f"at most {guard.capacity} client connections"
        )
        guard.start()
        try:
            if config.front.server == "tornado":
                await _serve_tornado(gateway, guard, sock, ready, stop, where)
            else:
                await _serve_uvicorn(gateway, guard, sock, ready, stop, where)
        finally:
            await guard.stop()


def raise_open_files_limit() -> int:
    """Raise the soft open-files limit (``RLIMIT_NOFILE``) to the hard limit where the system
    allows it; returns the soft limit in force afterwards (unchanged when it cannot be
    raised, which is logged)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return sys.maxsize
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open-files limit from %d to %d: %s", soft, hard, exc)
        else:
            soft = hard
    return soft


def _front_guard(gateway: Gateway) -> FrontGuard:
    """The guard of the gateway's client connections, capped by the open-files limit."""
    config = gateway.config
    front = config.front
    if front.raise_open_files_limit:
        open_files = raise_open_files_limit()
    else:
        open_files = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if open_files == resource.RLIM_INFINITY:
            open_files = sys.maxsize
    # What the gateway itself may hold open: its pools to every backend address, a health
    # probe each, the actors' connections, and some for the loop, the logs and the listener.
    addresses = sum(len(addrs) for addrs in config.backends.values())
    own = addresses * (config.client.pool_size + 1) + _OWN_FILES
    if config.mode == "actor":
        own += config.actors.count
    if own > front.fd_reserve:
        log.warning(
            "fd_reserve (%d) may be too few for the gateway's own files and backend "
            "connections (about %d): raise fd_reserve",
            front.fd_reserve,
            own,
        )
    return FrontGuard(gateway, connection_capacity(front, open_files))


#: Descriptors the gateway holds whatever its backends: listener, loop, logs, a few spare.
_OWN_FILES = 32


async def _serve_tornado(
    gateway: Gateway,
    guard: FrontGuard,
    sock: socket.socket,
    ready: asyncio.Event | None,
    stop: asyncio.Event,
    where: str,
) -> None:
    from offloop.gateway.tornado import make_server

    server = make_server(gateway, guard)
    server.add_sockets([sock])
    try:
        await gateway.startup()
        log.info("%s", where)
        if ready is not None:
            ready.set()
        await stop.wait()
    finally:
        server.stop()
        await gateway.shutdown()
        await server.close_all_connections()


async def _serve_uvicorn(
    gateway: Gateway,
    guard: FrontGuard,
    sock: socket.socket,
    ready: asyncio.Event | None,
    stop: asyncio.Event,
    where: str,
) -> None:
    import uvicorn

    from offloop.gateway.asgi import ASGIApp
    from offloop.gateway.uvicorn_protocol import protocol_class

    config = gateway.config
    uconfig = uvicorn.Config(
        ASGIApp(gateway),
        loop="none",
        # httptools, held to the front's limits (uvicorn's own protocol bounds no head).
        http=protocol_class(guard),
        # Websockets are not served: no upgrade to a protocol without these limits.
        ws="none",
        # The guard closes idle connections; uvicorn's own keep-alive timer is a backstop.
        timeout_keep_alive=math.ceil(config.front.idle_timeout),
        lifespan="on",
        access_log=False,
        log_level="warning",
        timeout_graceful_shutdown=int(config.grace) or 1,
        # The gateway reads no client address, so uvicorn's proxy-headers middleware would
        # be a layer of work per request for nothing; no Server header either.
        proxy_headers=False,
        server_header=False,
    )
    userver = uvicorn.Server(uconfig)
    # Our two-stage signal handling, not uvicorn's: it re-raises the signal after serving,
    # which turns a clean Ctrl-C into a KeyboardInterrupt traceback.
    userver.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
    loop = asyncio.get_running_loop()
    serving = loop.create_task(userver.serve(sockets=[sock]))
    stopping = loop.create_task(stop.wait())
    try:
        while not userver.started and not serving.done():
            await asyncio.wait({serving, stopping}, timeout=0.01, return_when="FIRST_COMPLETED")
            if stopping.done():
                break
        if userver.started:
            log.info("%s", where)
            if ready is not None:
                ready.set()
        await asyncio.wait({serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        userver.should_exit = True
        stopping.cancel()
        await serving
