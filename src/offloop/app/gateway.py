"""Building a gateway from its config, and serving it with the configured HTTP server.

:func:`build_gateway` loads the IDL, picks the services and builds the caller of the mode
(:class:`~offloop.client.caller.AsyncCaller` or :class:`~offloop.client.actors.ActorCaller`).
:func:`serve_gateway` serves it with uvicorn (ASGI) or Tornado until stopped. On SIGTERM,
``/readyz`` fails at once and requests are still served for ``drain_delay`` seconds, while load
balancers drop the gateway; then (at once on SIGINT or a ``stop`` event) it stops accepting,
drains requests in flight within ``grace`` and closes the backends' connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import math
import os
import resource
import socket
import ssl
import sys

from offloop import tracing
from offloop.app.signals import Stop, drain_delay, graceful_exit
from offloop.client.caller import AsyncCaller, Caller
from offloop.client.multiplex import MultiplexedCaller
from offloop.client.network import TCP, Network, TlsNetwork
from offloop.client.targets import StaticTarget, TargetLike, as_target
from offloop.gateway.config import GatewayConfig
from offloop.gateway.connections import FrontGuard, connection_capacity
from offloop.gateway.core import Gateway
from offloop.idl import load_idl, service_info, service_names
from offloop.listen import ListenConfig
from offloop.tls import ClientTLS, ServerTLS, reload_on_sighup

__all__ = ["bind_socket", "build_gateway", "raise_open_files_limit", "serve_gateway"]

log = logging.getLogger("offloop.gateway")


def build_gateway(config: GatewayConfig, *, network: Network = TCP) -> Gateway:
    """Wire a gateway: load the IDL, pick the services, build the caller for the mode.

    Args:
        config: the gateway's configuration.
        network: how loop mode's clients connect (an in-memory pair from
            :mod:`offloop.testing` runs gateway and workers without sockets; actor mode's
            blocking clients always use TCP). With ``config.backend_tls`` on, the TCP
            network becomes TLS (:class:`~offloop.client.network.TlsNetwork`), in both modes.

    Raises:
        IdlError: the IDL or a named service is missing.
        ValueError: a service has no backend, or a backend names no service of the IDL.
        TLSConfigError: a file of ``backend_tls`` is missing, or its key does not match.
    """
    tracing.setup("offloop-gateway")  # on by the OTEL_* variables: docs/tracing.md
    config.backend_tls.check()
    tls = ClientTLS(config.backend_tls) if config.backend_tls.enabled else None
    if tls is not None and network is TCP:
        network = TlsNetwork(tls)
    module = load_idl(config.idl)
    names = list(config.services) or service_names(module)
    services = {n: service_info(module, n) for n in names}
    unknown = sorted(set(config.backends) - set(services) - {"*"})
    if unknown:
        raise ValueError(
            f"--backend names no service of {config.idl}: {', '.join(unknown)} "
            f"(services: {', '.join(services)})"
        )
    unknown = sorted(set(config.backend_multiplexed) - set(services) - {"*"})
    if unknown:
        raise ValueError(
            f"--backend-multiplexed names no service of {config.idl}: {', '.join(unknown)} "
            f"(services: {', '.join(services)})"
        )
    backends: dict[str, tuple[TargetLike, ...]] = {}
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
            tls=tls,
        )
    else:
        caller = AsyncCaller(backends, config.client, health=config.health, network=network)
    if config.backend_multiplexed:  # calls named Service:method (Apache's multiplexing)
        caller = MultiplexedCaller(caller, config.backend_multiplexed)
    gateway = Gateway(config, services, caller)
    if tls is not None:
        gateway.closers.append(tls.close)  # item 20: its watcher thread ends with the gateway
    return gateway


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
    signal exits at once). On SIGTERM, ``/readyz`` fails at once and requests are still
    served for ``config.drain_delay`` seconds. Then (at once on SIGINT or ``stop``) it stops
    accepting, refuses new calls, drains calls in flight within ``config.grace`` and closes
    the backends' connections.

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
        stop: set to stop; when given, no signal handler is installed (embedding, tests),
            and there is no drain delay (for one, set ``gateway.draining`` and wait before
            setting ``stop``).

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
        stopping: asyncio.Event | Stop = (
            stop if stop is not None else stack.enter_context(graceful_exit())
        )
        if stop is None:
            stack.enter_context(reload_on_sighup())  # SIGHUP: reload TLS certificates
        tls: ssl.SSLContext | None = None
        config.tls.check()
        if config.tls.enabled:
            source = ServerTLS(config.tls, "front")
            stack.callback(source.close)
            tls = source.front_door()
        guard = _front_guard(gateway)
        host, port = sock.getsockname()[:2]
        scheme = "https" if tls is not None else "http"
        where = (
            f"gateway ({config.front.server}, {config.mode} mode) on {scheme}://{host}:{port}, "
            f"at most {guard.capacity} client connections"
        )
        guard.start()
        # One line per backend that does not accept a connection at start, naming its service.
        reporting = asyncio.get_running_loop().create_task(
            report_unreachable(config, list(gateway.services))
        )
        try:
            if config.front.server == "tornado":
                await _serve_tornado(gateway, guard, sock, ready, stopping, where, tls)
            else:
                await _serve_uvicorn(gateway, guard, sock, ready, stopping, where, tls)
        finally:
            reporting.cancel()
            await asyncio.gather(reporting, return_exceptions=True)
            await guard.stop()
    log.info("gateway stopped")


async def report_unreachable(config: GatewayConfig, services: list[str]) -> list[str]:
    """Try one TCP connection to every fixed backend address at once, and log one WARNING
    line per address that does not accept it, naming the service and the address (the
    pools and health probes retry on their own). Each line is its own message, so the
    repeat filter does not fold one backend's line into another's; the check runs once.

    Args:
        config: the gateway's configuration: its backends and connect timeout.
        services: the services the gateway serves (an address without a service serves
            those that have none of their own).

    Returns:
        The lines logged (tests read them).
    """
    timeout = config.client.connect_timeout
    shared = ", ".join(s for s in services if s not in config.backends) or "no service"
    checks = [
        (shared if service == "*" else service, as_target(target))
        for service, targets in config.backends.items()
        for target in targets
    ]
    static = [(s, t) for s, t in checks if isinstance(t, StaticTarget)]

    async def reachable(target: StaticTarget) -> str | None:
        try:
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(target.host, target.port), timeout
            )
        except TimeoutError:
            return f"no answer within {timeout:g} s"
        except OSError as exc:  # asyncio's text names the address again: the errno's words
            return os.strerror(exc.errno) if exc.errno else str(exc)
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return None

    answers = await asyncio.gather(*(reachable(t) for _, t in static))
    lines = []
    for (service, target), problem in zip(static, answers, strict=True):
        if problem is None:
            continue
        lines.append(
            f"backend {target} of {service} is not reachable at start ({problem.lower()}); "
            f"calls fail until it is"
        )
        log.warning(lines[-1])
    return lines


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


async def _drain_delay(gateway: Gateway, stop: asyncio.Event | Stop) -> None:
    """After a SIGTERM: fail ``/readyz`` and keep serving for the drain delay."""
    if isinstance(stop, Stop) and stop.delayed:
        gateway.draining = True
        await drain_delay(gateway.config.drain_delay, "gateway")


async def _serve_tornado(
    gateway: Gateway,
    guard: FrontGuard,
    sock: socket.socket,
    ready: asyncio.Event | None,
    stop: asyncio.Event | Stop,
    where: str,
    tls: ssl.SSLContext | None,
) -> None:
    from offloop.gateway.tornado import make_server

    server = make_server(gateway, guard, tls=tls)
    server.add_sockets([sock])
    try:
        await gateway.startup()
        log.info("%s", where)
        if ready is not None:
            ready.set()
        await stop.wait()
        await _drain_delay(gateway, stop)
    finally:
        server.stop()
        await gateway.shutdown()
        await server.close_all_connections()


async def _serve_uvicorn(
    gateway: Gateway,
    guard: FrontGuard,
    sock: socket.socket,
    ready: asyncio.Event | None,
    stop: asyncio.Event | Stop,
    where: str,
    tls: ssl.SSLContext | None,
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
    if tls is not None:
        uconfig.load()  # serve() then keeps what load() made, and our context
        uconfig.ssl = tls
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
        if stopping.done() and not serving.done():
            await _drain_delay(gateway, stop)
    finally:
        userver.should_exit = True
        stopping.cancel()
        await serving
