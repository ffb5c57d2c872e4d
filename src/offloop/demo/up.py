"""``offloop up``: the embedded demo. A process-pool textlab worker and a gateway in front.

The worker runs in a child process (multiprocessing's ``spawn`` context, so nothing of this
process's state is inherited), as it would on a host of its own: in a session of its own, so
that a terminal's Ctrl-C reaches only this process, which stops the worker once; and set to get
SIGTERM when this process dies, however it dies. The child says over a pipe when it listens, or
why it could not start (a port in use, say), so the gateway is never put in front of a process
that is not ours. Then the gateway serves here. On Ctrl-C or SIGTERM the gateway drains, then
the worker gets SIGTERM and finishes its calls, and is waited for (killed if it is still there
5 s after its grace period).

Library use::

    demo = DemoConfig(worker_port=9091, workers=2)
    gateway = demo_gateway(demo, listen=ListenConfig(port=8081))
    run_demo(gateway, demo_worker(demo, grace=gateway.grace))
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from offloop.app import build_gateway, run, serve_gateway, serve_worker
from offloop.app.gateway import bind_socket
from offloop.demo.textlab import IDL_PATH
from offloop.errors import OffloopError
from offloop.gateway.config import GatewayConfig
from offloop.listen import ListenConfig
from offloop.logs import LOG_LEVELS, LogConfig, installed_config, run_child
from offloop.worker.config import WORKER_PORT, PoolConfig, WorkerConfig

__all__ = ["DemoConfig", "demo_gateway", "demo_worker", "run_demo"]

log = logging.getLogger("offloop.demo")

#: Where the demo worker listens: this host only, it is the gateway's alone.
DEMO_HOST = "127.0.0.1"

#: The demo's service and handler.
DEMO_SERVICE = "TextLab"
DEMO_HANDLER = "offloop.demo.textlab:Handler"

#: Seconds the worker may take to start its pool (imports NLTK and numpy in each child).
WORKER_START_TIMEOUT = 60.0

#: Seconds the worker may overstay its grace period before it is killed.
STOP_MARGIN = 5.0

#: prctl option: the signal a process gets when its parent dies (linux/prctl.h).
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class DemoConfig:
    """What ``offloop up`` adds to the gateway's settings: the demo worker.

    Attributes:
        worker_port: the demo worker's TCP port, on 127.0.0.1.
        workers: the demo worker's processes; 0 for one per core.
    """

    worker_port: int = WORKER_PORT
    workers: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.worker_port <= 65535:
            raise ValueError(f"worker_port must be between 1 and 65535, not {self.worker_port}")
        if self.workers < 0:
            raise ValueError("workers must be >= 0 (0: one per core)")


def demo_gateway(demo: DemoConfig, **settings: Any) -> GatewayConfig:
    """The demo's gateway: the textlab IDL, the demo worker as the only backend.

    Args:
        demo: where the worker listens.
        **settings: any other :class:`~offloop.gateway.config.GatewayConfig` field (not
            ``idl``, ``backends`` or ``services``, which the demo sets).

    Raises:
        ValueError: a setting is invalid.
    """
    backends = {"*": ((DEMO_HOST, demo.worker_port),)}
    return GatewayConfig(idl=str(IDL_PATH), backends=backends, **settings)


def demo_worker(demo: DemoConfig, *, grace: float = 10.0) -> WorkerConfig:
    """The demo's worker: textlab's handler in a process pool, on 127.0.0.1.

    Args:
        demo: its port and size.
        grace: seconds its calls in flight get to finish on shutdown (the gateway's, in
            ``offloop up``).
    """
    return WorkerConfig(
        idl=str(IDL_PATH),
        service=DEMO_SERVICE,
        handler=DEMO_HANDLER,
        grace=grace,
        # One machine, no load balancer to take the worker out of rotation first: stopping
        # `offloop up` need not wait for endpoints to propagate.
        drain_delay=0.0,
        listen=ListenConfig(host=DEMO_HOST, port=demo.worker_port, backlog=1024),
        pool=PoolConfig(kind="process", workers=demo.workers),
    )


def run_demo(
    gateway: GatewayConfig,
    worker: WorkerConfig,
    *,
    start_timeout: float = WORKER_START_TIMEOUT,
    log: LogConfig | None = None,
) -> int:
    """Start the worker in a child process, then serve the gateway here until Ctrl-C/SIGTERM.

    The gateway's port is bound first, so a port in use fails before anything starts. On
    the way out, whatever happened, the worker gets SIGTERM and is waited for.

    Args:
        gateway: the gateway's config (see :func:`demo_gateway`).
        worker: the worker's config (see :func:`demo_worker`).
        start_timeout: seconds the worker may take to listen.
        log: how the worker process logs (default: as this process, if
            :func:`~offloop.logs.configure_logging` set it up, else at this process's level).

    Returns:
        0 once everything has stopped.

    Raises:
        OffloopError: the worker did not start (its port in use, a handler that failed),
            or the gateway could not be built or served.
        OSError: the gateway's address cannot be bound.
    """
    sock = bind_socket(gateway.listen)
    try:
        process, reader = _start_worker(worker, log or _inherited_log())
        try:
            _wait_ready(process, reader, worker, start_timeout)
            served = build_gateway(gateway)
            host, port = sock.getsockname()[:2]
            _print_banner(worker.listen, f"http://{host}:{port}")
            run(serve_gateway(served, sock=sock))
        finally:
            reader.close()
            _stop_worker(process, worker.grace + STOP_MARGIN)
    finally:
        sock.close()
    return 0


def _print_banner(worker: ListenConfig, url: str) -> None:
    print(
        f"\noffloop demo is up: textlab worker on {worker.host}:{worker.port}, "
        f"gateway on {url}\n"
        f"  docs:     {url}/docs\n"
        f"  openapi:  {url}/openapi.json\n"
        f"  metrics:  {url}/metrics\n"
        f"  try:      curl -X POST {url}/rpc/TextLab/parse "
        f"-H 'content-type: application/json' "
        f'-d \'{{"sentence": "the dog saw a man in the park"}}\'\n'
        f"Ctrl-C stops everything.\n",
        flush=True,
    )


# -- the worker process ---------------------------------------------------------------------


def _inherited_log() -> LogConfig:
    """How the worker logs when ``run_demo`` is not told: as this process."""
    installed = installed_config()
    if installed is not None:
        return installed
    level = logging.getLevelName(logging.getLogger().getEffectiveLevel())
    return LogConfig(level=level if level in LOG_LEVELS else "INFO")


def _start_worker(config: WorkerConfig, log: LogConfig) -> tuple[BaseProcess, Connection]:
    """Spawn the worker; the returned end of the pipe gets its ``("ready" | "failed", text)``.

    The child logs as ``log`` says, its lines marked ``(offloop-demo-worker)``; an exception
    that escapes it is logged so too (:func:`~offloop.logs.run_child`)."""
    context = multiprocessing.get_context("spawn")
    reader, writer = context.Pipe(duplex=False)
    name = "offloop-demo-worker"
    process = context.Process(
        target=run_child,
        args=(log, name, _worker_main, config, writer, os.getpid()),
        name=name,
    )
    # The child starts with SIGINT ignored, so a Ctrl-C before it has left our session (it
    # imports for a while first) cannot kill it with a traceback; its serving loop handles
    # SIGINT and SIGTERM itself.
    with _sigint_ignored():
        process.start()
    writer.close()
    return process, reader


@contextlib.contextmanager
def _sigint_ignored() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _wait_ready(
    process: BaseProcess, reader: Connection, config: WorkerConfig, timeout: float
) -> None:
    where = f"{config.listen.host}:{config.listen.port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if reader.poll(0.1):
            try:
                status, detail = reader.recv()
            except EOFError:  # it closed the pipe without a word: it died
                process.join(1)
                raise OffloopError(
                    f"the demo worker exited with status {process.exitcode} at start"
                ) from None
            if status == "ready":
                return
            raise OffloopError(f"the demo worker did not start on {where}: {detail}")
        if not process.is_alive():
            raise OffloopError(f"the demo worker exited with status {process.exitcode} at start")
    raise OffloopError(f"the demo worker did not listen on {where} within {timeout:.0f} s")


def _stop_worker(process: BaseProcess, timeout: float) -> None:
    """SIGTERM (the worker drains), then kill it if it overstays ``timeout`` seconds."""
    if process.is_alive():
        process.terminate()
        with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C again while it drains: stop now
            process.join(timeout)
    if process.is_alive():
        process.kill()
        process.join()
    process.close()


def _worker_main(config: WorkerConfig, ready: Connection, parent: int) -> None:
    """The child (its logging already set up): leave the terminal's session, die with the
    parent, serve, report."""
    os.setsid()
    _die_with_parent(parent)
    try:
        run(_serve_reporting(config, ready))
    except (OffloopError, ImportError, OSError) as exc:  # start-up failed: the parent says so
        with contextlib.suppress(OSError):
            ready.send(("failed", str(exc)))
        sys.exit(1)
    finally:
        ready.close()


async def _serve_reporting(config: WorkerConfig, report: Connection) -> None:
    """Serve the worker until SIGTERM, saying ``ready`` over ``report`` once it listens."""
    ready = asyncio.Event()
    serving = asyncio.ensure_future(serve_worker(config, ready=ready))
    waiting = asyncio.ensure_future(ready.wait())
    await asyncio.wait({serving, waiting}, return_when=asyncio.FIRST_COMPLETED)
    waiting.cancel()
    if ready.is_set():
        report.send(("ready", ""))
    await serving


def _die_with_parent(parent: int) -> None:
    """Get SIGTERM when ``offloop up`` dies, however it dies (a second Ctrl-C exits it at
    once, skipping its clean-up); exit now if it is already gone."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: the clean-up path still stops the worker
        return
    if os.getppid() != parent:
        sys.exit(1)
