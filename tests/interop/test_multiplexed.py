"""Interop over 127.0.0.1: several services on one port, as Apache Thrift's
``TMultiplexedProtocol`` and ``TMultiplexedProcessor`` do it (issue 13), with real processes.

- Apache's ``TMultiplexedProcessor`` server (``Calc`` and ``Echo`` of ``two_services.thrift``)
  called through an ``offloop gateway`` with ``--backend-multiplexed``, in loop and actor mode;
  without the setting its calls are refused, as Apache refuses plain names.
- Apache's ``TMultiplexedProtocol`` client calling an ``offloop worker`` that serves both
  services (``--service Calc=... --service Echo=...``): results, the declared exception,
  faults; and Apache's plain client calling the same worker with an unambiguous name, and with
  the ambiguous ``ping`` (a fault that names ``Calc:ping`` and ``Echo:ping``).
- ``offloop gateway`` in front of that ``offloop worker``: with ``--backend-multiplexed`` every
  method; without it, the unambiguous methods, and a clear error for ``ping``.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from net import free_port
from offloop_process import START_TIMEOUT, OffloopProcess
from thrift.protocol import TBinaryProtocol
from thrift.protocol.TMultiplexedProtocol import TMultiplexedProtocol
from thrift.server import TServer
from thrift.Thrift import TApplicationException
from thrift.TMultiplexedProcessor import TMultiplexedProcessor
from thrift.transport import TSocket, TTransport
from two_services import Calc, Echo
from two_services.ttypes import Refused
from waiting import wait_until

from offloop.app import build_gateway
from offloop.gateway.config import GatewayConfig

HERE = Path(__file__).resolve().parent
IDL = str(HERE / "two_services.thrift")


# -- Apache's multiplexed server ------------------------------------------------------------


class _ApacheCalc:
    def ping(self, msg: str) -> str:
        return f"calc:{msg}"

    def add(self, a: int, b: int) -> int:
        return a + b

    def divide(self, a: int, b: int) -> int:
        if b == 0:
            raise Refused(reason="division by zero")
        return a // b

    def hold(self, gate: str) -> str:
        return gate


class _ApacheEcho:
    def ping(self, msg: str) -> str:
        return f"echo:{msg}"

    def echo(self, text: str) -> str:
        return text

    def upper(self, text: str) -> str:
        return text.upper()

    def later(self, text: str) -> str:
        return f"later:{text}"

    def shout(self, text: str) -> str:
        return f"{text.upper()}!"


@pytest.fixture
def apache_server() -> Iterator[int]:
    """Apache's ``TThreadedServer`` with a ``TMultiplexedProcessor`` serving Calc and Echo,
    framed binary, on 127.0.0.1; its port."""
    processor = TMultiplexedProcessor()
    processor.registerProcessor("Calc", Calc.Processor(_ApacheCalc()))
    processor.registerProcessor("Echo", Echo.Processor(_ApacheEcho()))
    server_socket = TSocket.TServerSocket(host="127.0.0.1", port=0)
    server_socket.listen()
    port = server_socket.handle.getsockname()[1]
    stop = threading.Event()
    original_accept = server_socket.accept
    clients: list[Any] = []

    def accept() -> Any:
        client = original_accept()
        if stop.is_set():
            client.close()
            raise SystemExit  # ends serve(), which catches every Exception
        clients.append(client)
        return client

    server_socket.accept = accept
    server_socket.listen = lambda: None
    server = TServer.TThreadedServer(
        processor,
        server_socket,
        TTransport.TFramedTransportFactory(),
        TBinaryProtocol.TBinaryProtocolFactory(),
        daemon=True,
    )
    thread = threading.Thread(target=lambda: _quietly(server.serve), daemon=True)
    thread.start()
    try:
        yield port
    finally:
        stop.set()
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 5):
            pass  # wakes accept(), which then ends serve()
        thread.join(10)
        for client in clients:  # ends the connection threads, blocked reading
            with contextlib.suppress(Exception):
                client.handle.shutdown(2)
        server_socket.close()


def _quietly(serve: Any) -> None:
    with contextlib.suppress(SystemExit):
        serve()


# -- offloop's processes --------------------------------------------------------------------


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Any]:
    """Starts ``offloop`` subprocesses; kills them at the end."""
    started: list[OffloopProcess] = []

    def start(args: list[str], probe_port: int) -> OffloopProcess:
        process = OffloopProcess(tmp_path / f"offloop{len(started)}.log", args, probe_port)
        started.append(process)
        return process

    yield start
    for process in started:
        process.kill()


@pytest.fixture(params=["thread", "process"])
def offloop_worker(request: pytest.FixtureRequest, spawn: Any) -> int:
    """``offloop worker`` serving Calc and Echo (the handlers of ``multi_handlers.py``); its
    Thrift port."""
    for _ in range(3):  # a free port may be taken before the worker binds it: try others
        port, admin = free_port(), free_port()
        worker = spawn(
            [
                "worker", "--idl", IDL,
                "--service", "Calc=multi_handlers:Calc", "--service", "Echo=multi_handlers:Echo",
                "--app-dir", str(HERE), "--pool", str(request.param), "--workers", "1",
                "--port", str(port), "--admin-port", str(admin), "--grace", "1",
            ],
            admin,
        )  # fmt: skip
        wait_until(lambda w=worker: _started_or_exited(w), timeout=START_TIMEOUT, interval=0.05)
        if worker.proc.poll() is None:
            assert "serving Calc, Echo on 127.0.0.1" in worker.output
            return port
        assert "address already in use" in worker.output, worker.output
    pytest.fail("no free ports for the worker")


def _started_or_exited(process: OffloopProcess) -> bool:
    return process.proc.poll() is not None or process.get("/readyz")[0] == 200


def start_gateway(spawn: Any, backend: int, *flags: str) -> tuple[httpx.Client, OffloopProcess]:
    """``offloop gateway`` in front of ``127.0.0.1:backend``: an HTTP client of it, and it."""
    port = free_port()
    gateway = spawn(
        ["gateway", "--idl", IDL, "--backend", f"127.0.0.1:{backend}", "--port", str(port),
         "--grace", "1", "--drain-delay", "0", *flags],
        port,
    )  # fmt: skip
    gateway.wait_ready()
    http = httpx.Client(base_url=f"http://127.0.0.1:{port}", trust_env=False, timeout=30)
    return http, gateway


def rpc(http: httpx.Client, service: str, method: str, **body: Any) -> httpx.Response:
    return http.post(f"/rpc/{service}/{method}", json=body)


def result(http: httpx.Client, service: str, method: str, **body: Any) -> Any:
    """The result of a call that must succeed."""
    response = rpc(http, service, method, **body)
    assert response.status_code == 200, response.text
    return response.json()["result"]


MODES = ["loop", "actor"]


# -- the gateway in front of Apache's TMultiplexedProcessor ----------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_gateway_calls_apache_multiplexed_server(apache_server: int, spawn: Any, mode: str) -> None:
    http, _ = start_gateway(spawn, apache_server, "--mode", mode, "--backend-multiplexed", "*")
    with http:
        assert result(http, "Calc", "ping", msg="x") == "calc:x"
        assert result(http, "Echo", "ping", msg="x") == "echo:x"
        assert result(http, "Calc", "add", a=40, b=2) == 42
        assert result(http, "Echo", "upper", text="abc") == "ABC"
        refused = rpc(http, "Calc", "divide", a=1, b=0)
        assert refused.status_code == 422, refused.text
        assert "division by zero" in refused.text


def test_gateway_multiplexes_only_the_services_named(apache_server: int, spawn: Any) -> None:
    """``--backend-multiplexed Calc``: Calc's calls reach Apache's processor; Echo's go out
    plain, which Apache's ``TMultiplexedProcessor`` refuses (it closes the connection)."""
    http, _ = start_gateway(spawn, apache_server, "--backend-multiplexed", "Calc")
    with http:
        assert result(http, "Calc", "add", a=1, b=2) == 3
        plain = rpc(http, "Echo", "echo", text="x")
        assert plain.status_code >= 500, plain.text
        assert result(http, "Calc", "ping", msg="still") == "calc:still"


# -- Apache's clients calling an offloop worker serving two services ------------------------


class ApacheClient:
    """Apache's generated clients over one framed binary socket: multiplexed per service,
    and a plain one."""

    def __init__(self, port: int) -> None:
        sock = TSocket.TSocket("127.0.0.1", port)
        sock.setTimeout(30_000)
        self.transport = TTransport.TFramedTransport(sock)
        protocol = TBinaryProtocol.TBinaryProtocol(self.transport)
        self.calc = Calc.Client(TMultiplexedProtocol(protocol, "Calc"))
        self.echo = Echo.Client(TMultiplexedProtocol(protocol, "Echo"))
        self.plain_calc = Calc.Client(protocol)
        self.plain_echo = Echo.Client(protocol)
        self.transport.open()

    def __enter__(self) -> ApacheClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.transport.close()


def test_apache_multiplexed_client_calls_offloop_worker(offloop_worker: int) -> None:
    with ApacheClient(offloop_worker) as apache:
        assert apache.calc.ping("x") == "calc:x"
        assert apache.echo.ping("x") == "echo:x"
        assert apache.calc.add(2, 3) == 5
        assert apache.echo.upper("abc") == "ABC/1"  # batched, a batch of one
        assert apache.echo.later("a") == "later:a"  # async def, on the worker's loop
        assert apache.echo.shout("a").startswith("A! in ")  # @inline, on the worker's loop
        with pytest.raises(Refused) as refused:
            apache.calc.divide(1, 0)
        assert refused.value.reason == "division by zero"
        # Plain names on the same connection: unambiguous ones work, ping is refused.
        assert apache.plain_calc.add(1, 1) == 2
        assert apache.plain_echo.echo("plain") == "plain"
        with pytest.raises(TApplicationException) as fault:
            apache.plain_calc.ping("x")
        assert fault.value.type == TApplicationException.UNKNOWN_METHOD
        assert "call Calc:ping or Echo:ping" in fault.value.message
        assert apache.echo.ping("after") == "echo:after"  # the connection lives on


# -- offloop gateway -> offloop worker, two services ----------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_gateway_calls_offloop_worker_multiplexed(
    offloop_worker: int, spawn: Any, mode: str
) -> None:
    http, _ = start_gateway(spawn, offloop_worker, "--mode", mode, "--backend-multiplexed", "*")
    with http:
        assert result(http, "Calc", "ping", msg="x") == "calc:x"
        assert result(http, "Echo", "ping", msg="x") == "echo:x"
        assert result(http, "Calc", "add", a=40, b=2) == 42
        assert result(http, "Echo", "later", text="t") == "later:t"
        refused = rpc(http, "Calc", "divide", a=1, b=0)
        assert refused.status_code == 422 and "division by zero" in refused.text


def test_gateway_plain_names_to_offloop_worker(offloop_worker: int, spawn: Any) -> None:
    """Without ``--backend-multiplexed``: every method one service has works; ``ping``,
    which both have, is refused: 502 for the HTTP client (the gateway keeps a backend's
    details from it), and the worker's fault naming the two forms in the gateway's log."""
    http, gateway = start_gateway(spawn, offloop_worker)
    with http:
        assert result(http, "Calc", "add", a=1, b=2) == 3
        assert result(http, "Echo", "echo", text="e") == "e"
        ambiguous = rpc(http, "Calc", "ping", msg="x")
        assert ambiguous.status_code == 502, ambiguous.text
        assert "backend does not serve this method" in ambiguous.text
        gateway.wait_for_log("'ping' is a method of several services (Calc, Echo): call Calc:ping")
        assert result(http, "Echo", "echo", text="again") == "again"


def test_backend_multiplexed_must_name_services_of_the_idl() -> None:
    config = GatewayConfig(
        idl=IDL, backends={"*": (("127.0.0.1", 9),)}, backend_multiplexed=frozenset({"Nope"})
    )
    with pytest.raises(ValueError, match=r"--backend-multiplexed names no service of .*: Nope"):
        build_gateway(config)
