"""Real gateways in front of real workers, on 127.0.0.1, for the gateway's integration tests.

Each test gets one background thread running one event loop (uvloop, as ``offloop gateway``
uses), which hosts everything the test starts: worker servers (:class:`WorkerServer` with the
faulty handler of ``tests/support``) and the gateway behind a real HTTP server, uvicorn (the
ASGI app) or Tornado. The test thread talks to it over real sockets with ``httpx.Client``.

The :func:`gateway_factory` fixture is parametrized over the HTTP server (``uvicorn``,
``tornado``) and the gateway mode (``loop``, ``actor``), so every test that uses it runs
against each combination. Whatever a test starts is stopped at its end: gateway, workers,
loop, thread; then no thread the test started may be left running.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import socket
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import tornado.httpserver
import tornado.netutil
import uvicorn
import uvloop
from prometheus_client.parser import text_string_to_metric_families

from offloop.watchdog import IDLE_POLL

SUPPORT_DIR = Path(__file__).resolve().parents[1] / "support"
if str(SUPPORT_DIR) not in sys.path:
    # Before any pool starts: child processes import the handler as ``faulty:Handler``.
    sys.path.insert(0, str(SUPPORT_DIR))

import faulty  # noqa: E402
import harness  # noqa: E402
from harness import wait_until as wait_until  # noqa: E402  (re-exported for the tests)

from offloop.cli import build_gateway  # noqa: E402
from offloop.gateway.asgi import ASGIApp  # noqa: E402
from offloop.gateway.config import GatewayConfig  # noqa: E402
from offloop.gateway.core import Gateway  # noqa: E402
from offloop.gateway.tornado import make_server  # noqa: E402
from offloop.idl import load_idl  # noqa: E402
from offloop.worker.config import WorkerConfig  # noqa: E402
from offloop.worker.server import WorkerServer  # noqa: E402

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


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (nothing listens on it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def metric_value(text: str, name: str, **labels: str) -> float | None:
    """The value of sample ``name`` with ``labels`` in Prometheus text, or None."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return None


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
        return self.start_worker(dataclasses.replace(worker.config, port=worker.port))

    # -- the gateway ---------------------------------------------------------------------

    def start_gateway(
        self, backends: list[tuple[str, int]], *, idl: str = IDL, **overrides: Any
    ) -> Gateway:
        """Build the gateway for ``backends`` and serve it over HTTP on a free port."""
        if self.mode == "actor":
            pytest.importorskip("offloop.actors", reason="actor mode is not written yet")
        settings: dict[str, Any] = {"timeout": 2.0, "grace": 1.0, **overrides}
        config = GatewayConfig(
            idl=idl,
            backends={"*": tuple(backends)},
            port=0,
            server=self.server_kind,  # type: ignore[arg-type]
            mode=self.mode,  # type: ignore[arg-type]
            **settings,
        )
        gateway = build_gateway(config)
        (sock,) = tornado.netutil.bind_sockets(0, "127.0.0.1", family=socket.AF_INET)
        port = sock.getsockname()[1]
        if self.server_kind == "uvicorn":
            self._stop_http = self.loop.run(_serve_uvicorn(gateway, sock))
        else:
            self._stop_http = self.loop.run(_serve_tornado(gateway, sock))
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
        return metric_value(self.metrics(), name, **labels)

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


async def _serve_uvicorn(
    gateway: Gateway, sock: socket.socket
) -> Callable[[], Coroutine[Any, Any, None]]:
    config = uvicorn.Config(
        ASGIApp(gateway),
        loop="none",
        http="httptools",
        lifespan="on",
        access_log=False,
        log_level="warning",
        timeout_graceful_shutdown=1,
    )
    server = uvicorn.Server(config)
    task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            task.result()  # raises what stopped it
            raise RuntimeError("uvicorn exited at start")
        await asyncio.sleep(0.01)

    async def stop() -> None:
        server.should_exit = True  # lifespan shutdown stops the gateway
        await task
        sock.close()

    return stop


async def _serve_tornado(
    gateway: Gateway, sock: socket.socket
) -> Callable[[], Coroutine[Any, Any, None]]:
    server: tornado.httpserver.HTTPServer = make_server(gateway)
    server.add_sockets([sock])
    await gateway.startup()

    async def stop() -> None:
        server.stop()
        await gateway.shutdown()
        await server.close_all_connections()

    return stop


# -- fixtures ------------------------------------------------------------------------------


def _live_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.is_alive()}


@pytest.fixture
def loop_thread() -> Iterator[LoopThread]:
    """The test's background loop thread; afterwards no thread the test started may run."""
    before = _live_threads()
    # As `offloop gateway` does once started: move what exists to the permanent generation,
    # so that a full collection does not walk every object the whole test session made
    # (hundreds of ms of stop-the-world that the watchdog rightly reports as a stall).
    gc.collect()
    gc.freeze()
    loop = LoopThread()
    try:
        yield loop
    finally:
        loop.stop()
    assert not loop.leftover, f"tasks left pending on the loop: {loop.leftover}"
    deadline = time.monotonic() + THREAD_EXIT_TIMEOUT
    while True:
        left = [t for t in _live_threads() - before if not t.daemon]
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert not left, f"threads left running: {left}"


@pytest.fixture(params=SERVERS)
def server(request: pytest.FixtureRequest) -> str:
    """The HTTP server in front of the gateway."""
    return str(request.param)


@pytest.fixture(params=MODES)
def mode(request: pytest.FixtureRequest) -> str:
    """The gateway's mode: event-loop clients or actors."""
    return str(request.param)


GatewayFactory = Callable[..., Stack]


@pytest.fixture
def stack_factory(loop_thread: LoopThread) -> Iterator[Callable[[str, str], Stack]]:
    """Makes empty :class:`Stack` objects for any server and mode; all closed at the end."""
    stacks: list[Stack] = []

    def make(server: str, mode: str) -> Stack:
        stack = Stack(loop_thread, server, mode)
        stacks.append(stack)
        return stack

    try:
        yield make
    finally:
        # Close every stack even if one fails to stop; then report the first failure.
        errors: list[BaseException] = []
        for stack in reversed(stacks):
            try:
                stack.close()
            except Exception as exc:
                errors.append(exc)
        if errors:
            raise errors[0]
        # A clean run of the gateway suite blocks the gateway's loop nowhere: the watchdog
        # (on by default) recorded no stall blamed on code. Stalls of a starved host (the
        # loop thread was waiting in its poll) are not the code's doing and are left out.
        stalls = [
            record
            for stack in stacks
            if stack.gateway is not None and stack.gateway.watchdog is not None
            for record in stack.gateway.watchdog.records
            if record.seen_live and record.blocking_function != IDLE_POLL
        ]
        assert not stalls, "the gateway's loop was blocked:\n" + "\n".join(
            f"{r.duration}s in {r.blocking_function}\n{r.stack}" for r in stalls
        )


@pytest.fixture
def gateway_factory(
    server: str, mode: str, stack_factory: Callable[[str, str], Stack]
) -> GatewayFactory:
    """``make(pool="thread", backends=1, worker={...}, addresses=[...], **gateway_config)``.

    Starts ``backends`` workers of ``pool`` (``worker`` overrides their config), then a
    gateway (with ``GatewayConfig`` overrides) in front of them and of any extra
    ``addresses``, served by the parametrized HTTP server in the parametrized mode.
    """

    def make(
        pool: str = "thread",
        *,
        backends: int = 1,
        worker: dict[str, Any] | None = None,
        addresses: list[tuple[str, int]] | None = None,
        **config: Any,
    ) -> Stack:
        stack = stack_factory(server, mode)
        started = [
            stack.start_worker(worker_config(pool, **(worker or {}))) for _ in range(backends)
        ]
        addrs = [("127.0.0.1", w.port) for w in started] + list(addresses or [])
        stack.start_gateway(addrs, **config)
        return stack

    return make
