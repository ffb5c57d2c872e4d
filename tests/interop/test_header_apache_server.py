"""Interop over 127.0.0.1: Apache Thrift's own THeader client (``THeaderTransport`` and
``THeaderProtocol`` of the ``thrift`` package, with the client class its compiler generated)
calls an offloop worker, and offloop's clients in ``auto`` mode find out that Apache's framed
servers do not speak THeader.

For the first: results, the declared exception and ``TApplicationException`` come back as
Apache's classes, binary and compact and zlib-compressed, and the info headers it sets are
honoured (the request id is echoed, the deadline and principal reach the handler). For the
second: against Apache's ``TThreadPoolServer`` (framed, binary pure and accelerated, and
compact) and thriftpy2's framed server, the probe is refused (the server closes) and the
calls go out plain framed, on a connection of their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from harness import ServerThread, running_worker, worker_config
from net import free_port
from textlab import TextLab
from textlab.ttypes import ParseError
from thrift.protocol import TBinaryProtocol, TCompactProtocol
from thrift.protocol.THeaderProtocol import THeaderProtocol
from thrift.server import TServer
from thrift.Thrift import TApplicationException
from thrift.transport import TSocket, TTransport
from thrift.transport.THeaderTransport import (
    THeaderClientType,
    THeaderSubprotocolID,
    THeaderTransformID,
)
from waiting import wait_until

from offloop.client.blocking import BlockingClient
from offloop.client.config import ClientConfig
from offloop.client.connection import ThriftConnection
from offloop.client.pool import ConnectionPool
from offloop.idl import load_idl, service_info

HANDLER = "context_handler:Handler"
SUBPROTOCOLS = {"binary": THeaderSubprotocolID.BINARY, "compact": THeaderSubprotocolID.COMPACT}


@pytest.fixture(params=["thread", "process"])
def worker(request: pytest.FixtureRequest) -> Iterator[ServerThread]:
    # trust_principal: the principal an Apache client sets reaches the handler (item 2).
    config = worker_config(request.param, handler=HANDLER, trust_principal=True)
    with running_worker(config) as server:
        yield server


class ApacheHeaderClient:
    """Apache's generated TextLab client over THeaderProtocol on a TSocket."""

    def __init__(self, port: int, protocol: str = "binary", *, zlib: bool = False) -> None:
        self.socket = TSocket.TSocket("127.0.0.1", port)
        self.socket.setTimeout(10_000)
        self.protocol = THeaderProtocol(
            self.socket, (THeaderClientType.HEADERS,), SUBPROTOCOLS[protocol]
        )
        self.transport = self.protocol.trans
        if zlib:
            self.transport.add_transform(THeaderTransformID.ZLIB)
        self.client = TextLab.Client(self.protocol)
        self.transport.open()

    def __enter__(self) -> ApacheHeaderClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.transport.close()


@pytest.mark.parametrize("protocol", ["binary", "compact"])
@pytest.mark.parametrize("zlib", [False, True], ids=["plain", "zlib"])
def test_apache_header_client_gets_results_and_exceptions(
    worker: ServerThread, protocol: str, zlib: bool
) -> None:
    with ApacheHeaderClient(worker.port, protocol, zlib=zlib) as apache:
        assert apache.client.ping("hello") == "hello"
        with pytest.raises(ParseError) as declared:
            apache.client.parse("zz")
        assert "zz" in declared.value.message
        with pytest.raises(TApplicationException) as fault:
            apache.client.ping("raise")
        assert fault.value.type == TApplicationException.INTERNAL_ERROR
        assert apache.client.sleep(1) == 1.0  # the connection lives on


def test_apache_header_client_info_headers_are_honoured(worker: ServerThread) -> None:
    with ApacheHeaderClient(worker.port) as apache:
        apache.transport.set_header(b"offloop-request-id", b"apache-1")
        apache.transport.set_header(b"offloop-principal", b"jwt:bob")
        apache.transport.set_header(b"offloop-deadline-ms", b"10000")
        seen = json.loads(apache.client.ping("context"))
        assert apache.transport.get_headers() == {b"offloop-request-id": b"apache-1"}
        assert seen["request_id"] == "apache-1"
        assert seen["principal"] == "jwt:bob"
        assert 0 < seen["time_left"] <= 10.0
        # Apache sends headers with one call only: the next has none, and no context.
        seen = json.loads(apache.client.ping("context"))
        assert seen == {"request_id": None, "principal": None, "deadline": False, "time_left": None}
        assert apache.transport.get_headers() == {}


def test_apache_header_client_deadline_passed(worker: ServerThread) -> None:
    with ApacheHeaderClient(worker.port) as apache:
        apache.transport.set_header(b"offloop-deadline-ms", b"0")
        with pytest.raises(TApplicationException) as fault:
            apache.client.ping("never runs")
        assert fault.value.message.startswith("deadline exceeded: ")


# -- offloop's clients against servers that do not speak THeader --------------------------


class _Handler:
    def ping(self, msg: str) -> str:
        return msg


@pytest.fixture(
    params=["apache-binary", "apache-accelerated", "apache-compact", "thriftpy2"],
)
def framed_server(request: pytest.FixtureRequest) -> Iterator[tuple[int, str, list[int]]]:
    """A framed-only Thrift server on 127.0.0.1: (port, protocol, accepted connections)."""
    kind = str(request.param)
    accepted: list[int] = []
    if kind == "thriftpy2":
        from thriftpy2.rpc import make_server
        from thriftpy2.transport import TFramedTransportFactory

        textlab = load_idl(str(worker_config("thread").idl))
        port = free_port()
        server = make_server(
            textlab.TextLab,
            _Handler(),
            "127.0.0.1",
            port,
            trans_factory=TFramedTransportFactory(),
        )
        server.daemon = True
        original = server.trans.accept

        def accept() -> Any:
            client = original()
            accepted.append(1)
            return client

        server.trans.accept = accept
        thread = threading.Thread(target=server.serve, daemon=True)
        thread.start()
        wait_until(lambda: _listens(port), timeout=10)
        wait_until(lambda: accepted, timeout=10)  # that look's connection: not counted
        accepted.clear()
        try:
            yield port, "binary", accepted
        finally:
            server.close()
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                pass  # wakes accept() on the closed server, which then ends
            thread.join(10)
        return
    factories = {
        "apache-binary": TBinaryProtocol.TBinaryProtocolFactory(),
        "apache-accelerated": TBinaryProtocol.TBinaryProtocolAcceleratedFactory(),
        "apache-compact": TCompactProtocol.TCompactProtocolFactory(),
    }
    server_socket = TSocket.TServerSocket(host="127.0.0.1", port=0)
    server_socket.listen()
    port = server_socket.handle.getsockname()[1]
    stop = threading.Event()
    original_accept = server_socket.accept

    def accept_once_each() -> Any:
        client = original_accept()
        if stop.is_set():
            client.close()
            raise SystemExit  # ends serve() (a BaseException TServer does not catch)
        accepted.append(1)
        return client

    server_socket.accept = accept_once_each
    server_socket.listen = lambda: None
    apache = _ThreadPoolServer(
        TextLab.Processor(_Handler()),
        server_socket,
        TTransport.TFramedTransportFactory(),
        factories[kind],
        daemon=True,
    )
    apache.setNumThreads(SERVER_THREADS)
    thread = threading.Thread(target=lambda: _quietly(apache.serve), daemon=True)
    thread.start()
    try:
        yield port, "compact" if kind == "apache-compact" else "binary", accepted
    finally:
        stop.set()
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            pass
        thread.join(10)
        for _ in range(SERVER_THREADS):
            apache.clients.put(_StopClient())  # each pool thread reads one and ends
        server_socket.close()


SERVER_THREADS = 4


class _Stop(BaseException):
    """Ends a pool thread of ``TThreadPoolServer``, which catches every ``Exception``."""


class _StopClient:
    def read(self, size: int) -> bytes:
        raise _Stop

    readAll = read

    def close(self) -> None:
        pass


class _ThreadPoolServer(TServer.TThreadPoolServer):  # type: ignore[misc]
    def serveThread(self) -> None:
        with contextlib.suppress(_Stop):
            super().serveThread()


def _listens(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def _quietly(serve: Any) -> None:
    with contextlib.suppress(SystemExit):
        serve()


SERVICE = service_info(load_idl(str(worker_config("thread").idl)), "TextLab")
PING = SERVICE.methods["ping"]


def test_async_auto_falls_back_to_framed_and_remembers(
    framed_server: tuple[int, str, list[int]],
) -> None:
    port, protocol, accepted = framed_server
    config = ClientConfig(protocol=protocol, transport="auto")  # type: ignore[arg-type]

    async def main() -> None:
        pool = ConnectionPool("127.0.0.1", port, config, size=2)
        try:
            assert await pool.call(PING, PING.args_cls(msg="one"), timeout=10) == "one"
            # The probe's connection and the framed one.
            assert len(accepted) == 2
            pool.warm()  # a second connection: no probe, the pool remembers
            await _until(lambda: pool.connections == 2)
            results = await asyncio.gather(
                *(pool.call(PING, PING.args_cls(msg=str(i)), timeout=10) for i in range(20))
            )
            assert results == [str(i) for i in range(20)]
            assert len(accepted) == 3
        finally:
            await pool.close()

    asyncio.run(main())


def test_blocking_auto_falls_back_to_framed(framed_server: tuple[int, str, list[int]]) -> None:
    port, protocol, accepted = framed_server
    client = BlockingClient(
        "127.0.0.1",
        port,
        ClientConfig(protocol=protocol, transport="auto"),  # type: ignore[arg-type]
    )
    try:
        deadline = time.monotonic() + 10
        assert client.call(PING, PING.args_cls(msg="one"), deadline, 10) == "one"
        assert client.header is False
        client.reset()
        assert client.call(PING, PING.args_cls(msg="two"), deadline, 10) == "two"
        assert len(accepted) == 3  # probe, first socket, second socket: no second probe
    finally:
        client.close()


def test_auto_speaks_header_to_an_offloop_worker(worker: ServerThread) -> None:
    async def main() -> None:
        conn = await ThriftConnection.connect("127.0.0.1", worker.port, ClientConfig())
        try:
            assert conn.header
            seen = json.loads(await conn.call(PING, PING.args_cls(msg="context"), timeout=10))
            assert seen["deadline"] is True and 0 < seen["time_left"] <= 10
        finally:
            await conn.close()

    asyncio.run(main())
    client = BlockingClient("127.0.0.1", worker.port, ClientConfig())
    try:
        value = client.call(PING, PING.args_cls(msg="context"), time.monotonic() + 10, 10)
        seen = json.loads(value)
        assert client.header is True
        assert seen["deadline"] is True
    finally:
        client.close()


async def _until(predicate: Any, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "condition not met in time"
        await asyncio.sleep(0.01)
