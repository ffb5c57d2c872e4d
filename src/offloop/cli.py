"""The ``offloop`` command: flags and environment become config objects, then things run.

This is the only module that wires layers together.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence

from offloop._signals import graceful_exit
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
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9090)
    p.add_argument("--protocol", choices=("binary", "compact"), default="binary")
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
    p.add_argument("--admin-host", default="127.0.0.1")
    p.add_argument("--max-connections", type=int, default=10_000)


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
    )


async def _run_worker(config: WorkerConfig) -> None:
    server = WorkerServer(config)
    with graceful_exit() as stop:
        await server.start()
        await stop.wait()
        await server.shutdown()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="offloop",
        description="HTTP/JSON gateway and Thrift worker pools that keep event loops free.",
    )
    parser.add_argument("--log-level", default=os.environ.get("OFFLOOP_LOG_LEVEL", "INFO"))
    sub = parser.add_subparsers(dest="command", required=True)
    _add_worker_args(sub.add_parser("worker", help="run a Thrift worker server"))
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
        if ns.command == "worker":
            config = worker_config(ns)
            _install_uvloop()
            asyncio.run(_run_worker(config))
    except ValueError as exc:
        parser.error(str(exc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
