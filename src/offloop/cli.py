"""The ``offloop`` command: flags and environment become config objects, then things run.

This is the only module that wires layers together.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import sys
from collections.abc import Sequence

from offloop._signals import graceful_exit
from offloop.errors import OffloopError
from offloop.gateway.config import GatewayConfig, parse_backend
from offloop.gateway.core import Gateway
from offloop.idl import load_idl, service_info, service_names
from offloop.rpc.caller import AsyncCaller, Caller
from offloop.rpc.client import ClientConfig
from offloop.worker.config import WorkerConfig
from offloop.worker.server import WorkerServer

__all__ = ["main"]

log = logging.getLogger("offloop")


def _install_uvloop() -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency; Windows lacks it
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def _add_worker_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--idl", required=True, help="the .thrift file")
    p.add_argument("--service", required=True, help="the service the handler implements")
    p.add_argument("--handler", required=True, help="package.module:Name of the handler")
    p.add_argument(
        "--pool",
        choices=("process", "thread"),
        default="process",
        help="process (pure-Python CPU work) or thread (GIL-releasing work)",
    )
    p.add_argument("--workers", type=int, default=0, help="pool size (default: cores)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=9090, help="Thrift port (default 9090)")
    p.add_argument(
        "--protocol",
        choices=("binary", "compact"),
        default="binary",
        help="Thrift protocol, always framed (default binary)",
    )
    p.add_argument(
        "--max-frame-size",
        type=int,
        default=WorkerConfig.max_frame_size,
        help="bytes (default 16 MiB)",
    )
    p.add_argument(
        "--max-queued",
        type=int,
        default=-1,
        help="calls waiting for a worker (default 4 x workers)",
    )
    p.add_argument("--call-timeout", type=float, default=30.0, help="seconds (default 30)")
    p.add_argument(
        "--grace", type=float, default=10.0, help="seconds to drain on shutdown (default 10)"
    )
    p.add_argument("--nice", type=int, default=10, help="niceness of pool workers (default 10)")
    p.add_argument(
        "--admin-port",
        type=int,
        default=None,
        help="HTTP port for /healthz and /metrics (default: none)",
    )
    p.add_argument(
        "--admin-host", default="127.0.0.1", help="address of the admin port (default 127.0.0.1)"
    )
    p.add_argument(
        "--max-connections",
        type=int,
        default=10_000,
        help="connections served at once; more are closed on accept (default 10000)",
    )
    p.add_argument(
        "--no-batching", action="store_true", help="run @batched methods one call at a time"
    )


def worker_config(ns: argparse.Namespace) -> WorkerConfig:
    """Build a WorkerConfig from parsed flags."""
    return WorkerConfig(
        idl=ns.idl,
        service=ns.service,
        handler=ns.handler,
        pool=ns.pool,
        workers=ns.workers,
        host=ns.host,
        port=ns.port,
        protocol=ns.protocol,
        max_frame_size=ns.max_frame_size,
        max_queued=ns.max_queued,
        call_timeout=ns.call_timeout,
        grace=ns.grace,
        nice=ns.nice,
        admin_host=ns.admin_host,
        admin_port=ns.admin_port,
        max_connections=ns.max_connections,
        batching=not ns.no_batching,
    )


async def _run_worker(config: WorkerConfig) -> None:
    server = WorkerServer(config)
    with graceful_exit() as stop:
        await server.start()
        await stop.wait()
        await server.shutdown()


def _add_gateway_args(p: argparse.ArgumentParser, *, backends: bool = True) -> None:
    if backends:
        p.add_argument("--idl", required=True, help="the .thrift file")
        p.add_argument(
            "--backend",
            action="append",
            default=[],
            metavar="[SERVICE=]HOST:PORT",
            help="a worker address; repeat for several (default service: all)",
        )
        p.add_argument(
            "--service",
            action="append",
            default=[],
            help="expose only these services (default: all with backends)",
        )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, help="HTTP port (default 8080)")
    p.add_argument(
        "--server",
        choices=("uvicorn", "tornado"),
        default="uvicorn",
        help="HTTP server (default uvicorn)",
    )
    p.add_argument(
        "--mode",
        choices=("loop", "actor"),
        default="loop",
        help="loop: async multiplexed clients; actor: Pykka actors, blocking clients "
        "(default loop)",
    )
    p.add_argument("--max-body", type=int, default=1024 * 1024, help="bytes (default 1 MiB)")
    p.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        help="per-call deadline and cap of X-Request-Timeout, seconds (default 30)",
    )
    p.add_argument(
        "--max-inflight", type=int, default=1024, help="calls in flight before 503 (default 1024)"
    )
    p.add_argument(
        "--pool-size", type=int, default=4, help="connections per backend (loop mode, default 4)"
    )
    p.add_argument("--actors", type=int, default=32, help="actors (actor mode, default 32)")
    p.add_argument(
        "--mailbox",
        type=int,
        default=4,
        help="calls queued per actor before 503 (actor mode, default 4)",
    )
    p.add_argument(
        "--idempotent",
        action="append",
        default=[],
        metavar="SERVICE.METHOD",
        help="a method that may be retried after it was sent",
    )
    p.add_argument(
        "--exception-status",
        action="append",
        default=[],
        metavar="TYPE=STATUS",
        help="HTTP status for a declared exception type (default 422)",
    )
    p.add_argument(
        "--grace", type=float, default=10.0, help="seconds to drain on shutdown (default 10)"
    )
    p.add_argument("--no-watchdog", action="store_true", help="turn the loop watchdog off")
    p.add_argument(
        "--stall-threshold",
        type=float,
        default=0.1,
        help="seconds without a loop turn logged as a stall (default 0.1)",
    )


def gateway_config(ns: argparse.Namespace, backends: list[str] | None = None) -> GatewayConfig:
    """Build a GatewayConfig from parsed flags."""
    table: dict[str, list[tuple[str, int]]] = {}
    for text in ns.backend if backends is None else backends:
        service, host, port = parse_backend(text)
        table.setdefault(service or "*", []).append((host, port))
    statuses: dict[str, int] = {}
    for text in ns.exception_status:
        name, sep, status = text.partition("=")
        if not sep or not status.isdigit():
            raise ValueError(f"--exception-status must look like Type=422, got {text!r}")
        statuses[name] = int(status)
    return GatewayConfig(
        idl=ns.idl,
        backends={k: tuple(v) for k, v in table.items()},
        services=tuple(ns.service),
        host=ns.host,
        port=ns.port,
        server=ns.server,
        mode=ns.mode,
        max_body=ns.max_body,
        timeout=ns.timeout,
        max_inflight=ns.max_inflight,
        pool_size=ns.pool_size,
        actors=ns.actors,
        mailbox=ns.mailbox,
        idempotent=frozenset(ns.idempotent),
        exception_status=statuses,
        grace=ns.grace,
        watchdog=not ns.no_watchdog,
        stall_threshold=ns.stall_threshold,
    )


def build_gateway(config: GatewayConfig) -> Gateway:
    """Wire a gateway: load the IDL, pick the services, build the caller for the mode.

    Raises:
        IdlError: the IDL or a named service is missing.
        ValueError: a service has no backend.
    """
    module = load_idl(config.idl)
    names = list(config.services) or service_names(module)
    services = {n: service_info(module, n) for n in names}
    backends: dict[str, tuple[tuple[str, int], ...]] = {}
    for name in services:
        addrs = config.backends.get(name) or config.backends.get("*")
        if not addrs:
            raise ValueError(f"service {name} has no backend: add --backend {name}=host:port")
        backends[name] = addrs
    client = ClientConfig(max_frame_size=config.max_frame_size)
    caller: Caller
    if config.mode == "actor":
        from offloop.actors import ActorCaller

        caller = ActorCaller(backends, actors=config.actors, mailbox=config.mailbox, client=client)
    else:
        caller = AsyncCaller(backends, client, pool_size=config.pool_size)
    return Gateway(config, services, caller)


async def serve_gateway(gateway: Gateway, *, ready: asyncio.Event | None = None) -> None:
    """Serve ``gateway`` with the configured HTTP server until SIGTERM/SIGINT."""
    config = gateway.config
    # Everything made at start-up (modules, the IDL, the OpenAPI document) lives as long as
    # the process: keep it out of the collector's full passes, which otherwise pause the
    # loop for as long as it takes to walk all of it.
    gc.collect()
    gc.freeze()
    if config.server == "tornado":
        from offloop.gateway.tornado import make_server

        server = make_server(gateway)
        with graceful_exit() as stop:
            server.listen(config.port, config.host, backlog=2048)
            await gateway.startup()
            log.info(
                "gateway (tornado, %s mode) on http://%s:%d", config.mode, config.host, config.port
            )
            if ready is not None:
                ready.set()
            await stop.wait()
            server.stop()
            await gateway.shutdown()
            await server.close_all_connections()
        return
    import uvicorn

    from offloop.gateway.asgi import ASGIApp

    uconfig = uvicorn.Config(
        ASGIApp(gateway),
        host=config.host,
        port=config.port,
        loop="none",
        http="httptools",
        lifespan="on",
        access_log=False,
        log_level="warning",
        backlog=2048,
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
    with graceful_exit() as stop:
        serving = asyncio.get_running_loop().create_task(userver.serve())
        stopping = asyncio.get_running_loop().create_task(stop.wait())
        log.info(
            "gateway (uvicorn, %s mode) on http://%s:%d", config.mode, config.host, config.port
        )
        if ready is not None:
            ready.set()
        await asyncio.wait({serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
        userver.should_exit = True
        stopping.cancel()
        await serving


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="offloop",
        description="HTTP/JSON gateway and Thrift worker pools that keep event loops free.",
    )
    parser.add_argument("--log-level", default=os.environ.get("OFFLOOP_LOG_LEVEL", "INFO"))
    sub = parser.add_subparsers(dest="command", required=True)
    _add_worker_args(sub.add_parser("worker", help="run a Thrift worker server"))
    _add_gateway_args(sub.add_parser("gateway", help="run the HTTP/JSON gateway"))
    up = sub.add_parser("up", help="run the demo: a textlab worker and a gateway in front")
    _add_gateway_args(up, backends=False)
    up.add_argument(
        "--worker-port", type=int, default=9090, help="the demo worker's port (default 9090)"
    )
    up.add_argument("--workers", type=int, default=0, help="worker processes (default: cores)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``offloop`` console script."""
    parser = build_parser()
    ns = parser.parse_args(argv)
    logging.basicConfig(
        level=ns.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s",
    )
    try:
        if ns.command == "up":
            from offloop.demo.up import run_demo

            return run_demo(ns)
        # Configuration errors are the user's: a usage message and status 2.
        try:
            if ns.command == "worker":
                main_coro = _run_worker(worker_config(ns))
            else:
                main_coro = serve_gateway(build_gateway(gateway_config(ns)))
        except (ValueError, OffloopError) as exc:
            parser.error(str(exc))
        _install_uvloop()
        try:
            asyncio.run(main_coro)
        except (OffloopError, ImportError, OSError) as exc:  # start-up failed: say why, once
            log.error("%s failed to start: %s", ns.command, exc)
            return 1
    except KeyboardInterrupt:  # Ctrl-C outside the serving loop (start-up, clean-up)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
