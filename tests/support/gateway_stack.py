"""Real gateways in front of real workers, on 127.0.0.1, for the gateway's integration tests.

Each test gets one background thread running one event loop (:class:`LoopThread`, uvloop, as
``offloop gateway`` uses), which hosts everything the test starts: worker servers
(:class:`WorkerServer` with the faulty handler of ``tests/support``) and the gateway behind a
real HTTP server, uvicorn (the ASGI app) or Tornado. A :class:`Stack` is what one test holds:
its workers, its gateway and an ``httpx.Client`` of it over real sockets; closing it stops the
HTTP server, the gateway and every worker. The fixtures that build stacks for every HTTP
server and gateway mode are in ``tests/gateway/conftest.py``.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import faulty
import harness
import httpx
import uvloop
from configs import override
from harness import metric

from offloop.app.gateway import bind_socket, build_gateway, serve_gateway
from offloop.gateway.config import GatewayConfig
from offloop.gateway.core import Gateway
from offloop.idl import load_idl
from offloop.listen import ListenConfig
from offloop.worker.config import WorkerConfig
from offloop.worker.server import WorkerServer

__all__ = [
    "ALLTYPES_IDL",
    "IDL",
    "MODES",
    "SERVERS",
    "STEP_TIMEOUT",
    "THREAD_EXIT_TIMEOUT",
    "AllTypesHandler",
    "GatewayFactory",
    "LoopThread",
    "Stack",
    "alltypes_worker_config",
    "worker_config",
]

T = TypeVar("T")

#: The demo IDL, by the path the faulty handler loads it from (one module of classes).
IDL: str = faulty.IDL
#: The IDL with every Thrift type, a void and a oneway method.
ALLTYPES_IDL = str(Path(__file__).resolve().parents[1] / "idl" / "alltypes.thrift")
alltypes = load_idl(ALLTYPES_IDL)

#: Seconds any one step (a start, a stop, a request) may take before the test fails.
STEP_TIMEOUT = 30.0
#: Seconds teardown waits for threads the test started (pool threads finishing a slow call).
THREAD_EXIT_TIMEOUT = 5.0

SERVERS = ("uvicorn", "tornado")
MODES = ("loop", "actor")


class AllTypesHandler:
    """The ``AllTypes`` service for a thread-pool worker: each method echoes its argument.

    ``testException("Xception")`` raises the declared ``Xception``; oneway calls are recorded
    in :attr:`oneway_calls`.
    """

    oneway_calls: list[int] = []

    def testVoid(self) -> None:
        return None

    def testOneway(self, secondsToSleep: int) -> None:
        AllTypesHandler.oneway_calls.append(secondsToSleep)

    def testException(self, arg: str) -> None:
        if arg == "Xception":
            raise alltypes.Xception(errorCode=1001, message=arg)

    def __getattr__(self, name: str) -> Callable[..., Any]:
        if name.startswith("_"):
            raise AttributeError(name)
        return lambda *args: args[0] if args else None


# -- the loop thread -----------------------------------------------------------------------


class LoopThread:
    """An event loop running in a background thread; :meth:`run` submits coroutines to it."""

    def __init__(self) -> None:
        self.loop = uvloop.new_event_loop()
        self.leftover: list[str] = []  # tasks still pending at stop: nobody owned them
        self._thread = threading.Thread(target=self._main, name="gateway-test-loop", daemon=True)
        self._thread.start()

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = STEP_TIMEOUT) -> T:
        """Run ``coro`` on the loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        """Cancel what is left on the loop, stop it and join its thread."""
        if not self._thread.is_alive():
            return

        async def finish() -> None:
            current = asyncio.current_task()
            tasks = [t for t in asyncio.all_tasks() if t is not current]
            self.leftover = [repr(t) for t in tasks]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.loop.shutdown_default_executor()

        try:
            self.run(finish())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(STEP_TIMEOUT)
            if not self._thread.is_alive():
                self.loop.close()


# -- workers, gateways, and what a test holds --------------------------------------------


def worker_config(pool: str = "thread", **overrides: Any) -> WorkerConfig:
    """The faulty TextLab handler on a free port: two workers, short deadlines, no admin
    port, normal priority (the worker suite's configuration, tuned for the gateway's)."""
    settings: dict[str, Any] = {
        "call_timeout": 5.0,
        "grace": 0.5,
        "nice": 0,
        "admin_port": None,
        **overrides,
    }
    return harness.worker_config(pool, **settings)


def alltypes_worker_config(**overrides: Any) -> WorkerConfig:
    """:class:`AllTypesHandler` in a thread pool (it lives in this module, so no process)."""
    handler = f"{__name__}:AllTypesHandler"
    return worker_config(
        "thread", idl=ALLTYPES_IDL, service="AllTypes", handler=handler, **overrides
    )


class Stack:
    """Workers and a gateway served on one :class:`LoopThread`; see the module docstring.

    Args:
        loop: the loop thread hosting everything.
        server: ``uvicorn`` or ``tornado``.
        mode: the gateway's mode, ``loop`` or ``actor``.
    """

    def __init__(self, loop: LoopThread, server: str, mode: str) -> None:
        self.loop = loop
        self.server_kind = server
        self.mode = mode
        self.workers: list[WorkerServer] = []
        self.gateway: Gateway | None = None
        self.url = ""
        self._client: httpx.Client | None = None
        self._stop_http: Callable[[], Coroutine[Any, Any, None]] | None = None

    # -- workers -------------------------------------------------------------------------

    def start_worker(self, config: WorkerConfig) -> WorkerServer:
        """Start a worker server on the loop; it is stopped with the stack."""
        worker = WorkerServer(config)
        self.workers.append(worker)
        self.loop.run(worker.start(), timeout=60)
        return worker

    def stop_worker(self, worker: WorkerServer, grace: float = 0.0) -> None:
        """Shut a worker down (its port closes; calls in flight get ``grace`` seconds)."""
        self.loop.run(worker.shutdown(grace))
        self.workers.remove(worker)

    def restart_worker(self, worker: WorkerServer) -> WorkerServer:
        """Start a new worker like ``worker`` (stopped) on the same port."""
        return self.start_worker(override(worker.config, port=worker.port))

    # -- the gateway ---------------------------------------------------------------------

    def start_gateway(
        self, backends: list[tuple[str, int]], *, idl: str = IDL, **overrides: Any
    ) -> Gateway:
        """Build the gateway for ``backends`` and serve it over HTTP on a free port, by the
        library's own serving path (:func:`offloop.app.serve_gateway`)."""
        settings: dict[str, Any] = {"timeout": 2.0, "grace": 1.0, **overrides}
        config = override(
            GatewayConfig(idl=idl, backends={"*": tuple(backends)}),
            port=0,
            server=self.server_kind,
            mode=self.mode,
            **settings,
        )
        gateway = build_gateway(config)
        sock = bind_socket(ListenConfig(host="127.0.0.1", port=0))
        port = sock.getsockname()[1]
        self._stop_http = self.loop.run(_serve(gateway, sock))
        self.gateway = gateway
        self.url = f"http://127.0.0.1:{port}"
        return gateway

    @property
    def client(self) -> httpx.Client:
        """A synchronous HTTP client of the gateway (real sockets, no proxies from the env)."""
        if self._client is None:
            self._client = httpx.Client(base_url=self.url, trust_env=False, timeout=10.0)
        return self._client

    def call(
        self,
        method: str,
        body: Any = None,
        *,
        service: str = "TextLab",
        headers: dict[str, str] | None = None,
        timeout: float = 10.0,
    ) -> httpx.Response:
        """POST a JSON body to ``/rpc/{service}/{method}``."""
        return self.client.post(
            f"/rpc/{service}/{method}", json=body or {}, headers=headers, timeout=timeout
        )

    def metrics(self) -> str:
        return self.client.get("/metrics").text

    def metric(self, name: str, **labels: str) -> float | None:
        """One sample of the gateway's ``/metrics``."""
        return metric(self.metrics(), name, **labels)

    def inflight(self) -> float | None:
        return self.metric("offloop_gateway_inflight_calls")

    def backend_up(self, worker: WorkerServer) -> float | None:
        return self.metric("offloop_gateway_backend_up", backend=f"127.0.0.1:{worker.port}")

    # -- teardown ------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the HTTP server and gateway, then every worker."""
        try:
            if self._client is not None:
                self._client.close()
            if self._stop_http is not None:
                stop, self._stop_http = self._stop_http, None
                self.loop.run(stop())
        finally:
            for worker in list(self.workers):
                self.stop_worker(worker)


async def _serve(gateway: Gateway, sock: socket.socket) -> Callable[[], Coroutine[Any, Any, None]]:
    """Serve ``gateway`` on the loop; returns the coroutine function that stops it."""
    ready, stop = asyncio.Event(), asyncio.Event()
    task = asyncio.get_running_loop().create_task(
        serve_gateway(gateway, sock=sock, ready=ready, stop=stop)
    )
    waiting = asyncio.get_running_loop().create_task(ready.wait())
    await asyncio.wait({task, waiting}, return_when=asyncio.FIRST_COMPLETED)
    if not ready.is_set():
        waiting.cancel()
        task.result()  # raises what stopped it
        raise RuntimeError("the gateway exited at start")

    async def stop_serving() -> None:
        stop.set()
        await task

    return stop_serving


#: What the ``gateway_factory`` fixture returns: ``make(pool="thread", backends=1,
#: worker={...}, addresses=[...], **gateway_config)`` -> a started :class:`Stack`.
GatewayFactory = Callable[..., Stack]
