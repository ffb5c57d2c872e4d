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
import socket

from offloop.app.signals import graceful_exit
from offloop.client.caller import AsyncCaller, Caller
from offloop.client.network import TCP, Network
from offloop.gateway.config import GatewayConfig
from offloop.gateway.core import Gateway
from offloop.idl import load_idl, service_info, service_names
from offloop.listen import ListenConfig

__all__ = ["bind_socket", "build_gateway", "serve_gateway"]

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

    Args:
        gateway: what :func:`build_gateway` made.
        sock: a socket from :func:`bind_socket` (default: bound here from
            ``config.listen``); closed when serving ends.
        ready: set once the gateway accepts requests.
        stop: set to stop; when given, no signal handler is installed (embedding, tests).

    Raises:
        OSError: the address cannot be bound.
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
        host, port = sock.getsockname()[:2]
        where = f"gateway ({config.front.server}, {config.mode} mode) on http://{host}:{port}"
        if config.front.server == "tornado":
            await _serve_tornado(gateway, sock, ready, stop, where)
        else:
            await _serve_uvicorn(gateway, sock, ready, stop, where)


async def _serve_tornado(
    gateway: Gateway,
    sock: socket.socket,
    ready: asyncio.Event | None,
    stop: asyncio.Event,
    where: str,
) -> None:
    from offloop.gateway.tornado import make_server

    server = make_server(gateway)
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
    sock: socket.socket,
    ready: asyncio.Event | None,
    stop: asyncio.Event,
    where: str,
) -> None:
    import uvicorn

    from offloop.gateway.asgi import ASGIApp

    config = gateway.config
    uconfig = uvicorn.Config(
        ASGIApp(gateway),
        loop="none",
        http="httptools",
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
