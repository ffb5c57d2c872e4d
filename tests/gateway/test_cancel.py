"""Cancellation through the gateway (issue 13): the worker hears that the HTTP client gave up.

A real gateway (each HTTP server, each mode) in front of a real worker on 127.0.0.1. An HTTP
client sends a call over a bare socket and goes away while the call runs; the worker's handler
(``cancel_handler``'s ``until-cancelled``) sees the cancellation. Both modes send the cancel at
once: the loop-mode connection itself, an actor's blocking client woken by the loop (see
docs/gateway.md, "Cancellation"). A framed-only backend (Apache's Thrift server) is never sent a
cancel.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from gateway_stack import GatewayFactory
from harness import calls_answered
from textlab import TextLab
from thrift.protocol import TBinaryProtocol
from thrift.transport import TSocket, TTransport
from waiting import wait_until

HANDLER = "cancel_handler:Handler"


def _post_and_leave(port: int, method: str, body: dict[str, Any]) -> socket.socket:
    """Send one HTTP request over a bare socket and return the socket (close it to leave)."""
    data = json.dumps(body).encode()
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(
        f"POST /rpc/TextLab/{method} HTTP/1.1\r\nHost: gateway\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n".encode()
        + data
    )
    return sock


def test_a_client_that_goes_away_cancels_its_call_on_the_worker(
    gateway_factory: GatewayFactory, mode: str, tmp_path: Path
) -> None:
    # The call's deadline is far: the worker hears of the cancellation, not of a deadline.
    stack = gateway_factory(worker={"handler": HANDLER, "call_timeout": 60.0}, timeout=30.0)
    worker = stack.workers[0]
    seen = tmp_path / "seen"
    port = int(stack.url.rsplit(":", 1)[1])
    sock = _post_and_leave(port, "ping", {"msg": f"until-cancelled:{seen}"})
    try:
        wait_until(lambda: Path(f"{seen}.running").exists(), timeout=30)
        assert not seen.exists()  # it runs until it hears of the cancellation
    finally:
        sock.close()  # the HTTP client goes away
    # The whole line: the handler may be writing it as we look.
    wait_until(lambda: seen.exists() and seen.read_text().endswith("\n"), timeout=30)
    assert seen.read_text() == "cancelled=True check_deadline raised DeadlineExceeded\n"
    wait_until(lambda: calls_answered(worker, "ping", "cancelled") == 1, timeout=30)
    wait_until(lambda: worker.pool.stats().busy == 0, timeout=30)
    # Everything still works afterwards.
    assert stack.call("ping", {"msg": "after"}).json() == {"result": "after"}


# -- a framed-only backend: Apache's Thrift server ------------------------------------------


class _Handler:
    def ping(self, msg: str) -> str:
        return msg

    def sleep(self, millis: int) -> float:
        threading.Event().wait(millis / 1000)
        return float(millis)


class ApacheBackend:
    """Apache Thrift's framed binary transport and generated ``Processor`` of TextLab, one
    thread per connection, recording every byte its connections read."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._received = bytearray()
        self._conns: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._accepting = threading.Thread(target=self._accept, daemon=True)
        self._accepting.start()

    @property
    def received(self) -> bytes:
        with self._lock:
            return bytes(self._received)

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return  # closed by stop()
            with self._lock:
                self._conns.append(conn)
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        backend = self

        class Recording(TSocket.TSocket):  # type: ignore[misc]
            def read(self, sz: int) -> bytes:
                data: bytes = super().read(sz)
                with backend._lock:
                    backend._received += data
                return data

        raw = Recording()
        raw.setHandle(conn)
        transport = TTransport.TFramedTransport(raw)
        protocol = TBinaryProtocol.TBinaryProtocol(transport)
        processor = TextLab.Processor(_Handler())
        try:
            while True:
                processor.process(protocol, protocol)
        except Exception:  # as Apache's servers: a bad frame or a closed peer ends it
            pass
        finally:
            conn.close()

    def stop(self) -> None:
        self._listener.close()
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        self._accepting.join(5)
        for thread in self._threads:
            thread.join(5)


@pytest.fixture
def apache_backend() -> Iterator[ApacheBackend]:
    backend = ApacheBackend()
    try:
        yield backend
    finally:
        backend.stop()


def test_a_framed_only_backend_is_never_sent_a_cancel(
    apache_backend: ApacheBackend, gateway_factory: GatewayFactory, tmp_path: Path
) -> None:
    stack = gateway_factory(backends=0, addresses=[("127.0.0.1", apache_backend.port)])
    assert stack.call("ping", {"msg": "framed"}).json() == {"result": "framed"}
    # The gateway gives up on a call (its deadline), and an HTTP client goes away.
    r = stack.call("sleep", {"millis": 400}, headers={"x-request-timeout": "0.1"})
    assert r.status_code == 504, r.text
    port = int(stack.url.rsplit(":", 1)[1])
    sock = _post_and_leave(port, "sleep", {"millis": 300})
    wait_until(lambda: apache_backend.received.count(b"sleep") == 2, timeout=30)
    sock.close()
    # Both calls end on the backend, and the connections it served still work.
    for i in range(5):
        assert stack.call("ping", {"msg": f"after {i}"}).json() == {"result": f"after {i}"}
    assert b"offloop.cancel" not in apache_backend.received
