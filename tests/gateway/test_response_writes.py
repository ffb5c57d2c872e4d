"""How a response leaves the gateway, on every front: whole, in order, and never held back.

The uvicorn front writes a response's head and body in one write (issue 16); these tests check
what a client sees of that on real sockets: a response to ``HEAD`` (a head and no body) still
arrives, an interim ``100 Continue`` arrives before the client sends its body, and pipelined
requests get their responses whole and in order.
"""

from __future__ import annotations

import socket
from collections.abc import Callable

import pytest
from gateway_stack import Stack, worker_config

from offloop.gateway.uvicorn_protocol import _OneWrite

pytestmark = pytest.mark.timeout(120)


def _read_response(sock: socket.socket, buffer: bytearray, *, head_only: bool = False) -> bytes:
    """One response off ``sock`` (status line, fields, a Content-Length body), leaving what
    follows it in ``buffer``."""
    while b"\r\n\r\n" not in buffer:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed mid-head: {bytes(buffer)!r}"
        buffer += chunk
    end = buffer.index(b"\r\n\r\n") + 4
    head = bytes(buffer[:end])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    total = end if head_only else end + length
    while len(buffer) < total:
        chunk = sock.recv(65536)
        assert chunk, "connection closed mid-body"
        buffer += chunk
    response = bytes(buffer[:total])
    del buffer[:total]
    return response


@pytest.fixture
def stack(stack_factory: Callable[[str, str], Stack], server: str) -> Stack:
    made = stack_factory(server, "loop")
    worker = made.start_worker(worker_config())
    made.start_gateway([("127.0.0.1", worker.port)])
    return made


def _connect(stack: Stack) -> socket.socket:
    host, port = stack.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    return sock


def test_a_response_to_head_arrives_without_a_body(stack: Stack) -> None:
    with _connect(stack) as sock:
        buffer = bytearray()
        sock.sendall(b"HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        head = _read_response(sock, buffer, head_only=True)
        assert head.startswith(b"HTTP/1.1 200"), head
        # The connection still serves the next request, and nothing of a body came between.
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        response = _read_response(sock, buffer)
        assert response.startswith(b"HTTP/1.1 200"), response


def test_100_continue_comes_before_the_body_is_sent(stack: Stack) -> None:
    body = b'{"msg": "hello"}'
    with _connect(stack) as sock:
        buffer = bytearray()
        sock.sendall(
            b"POST /rpc/TextLab/ping HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(body)
        )
        interim = _read_response(sock, buffer, head_only=True)  # blocks until it comes
        assert interim.startswith(b"HTTP/1.1 100"), interim
        sock.sendall(body)
        response = _read_response(sock, buffer)
        assert response.startswith(b"HTTP/1.1 200"), response
        assert response.endswith(b'{"result":"hello"}') or b'"hello"' in response, response


def test_pipelined_requests_get_whole_responses_in_order(stack: Stack) -> None:
    messages = [f"m{i}" for i in range(8)]
    request = (
        b"POST /rpc/TextLab/ping HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s"
    )
    with _connect(stack) as sock:
        buffer = bytearray()
        sock.sendall(
            b"".join(
                request % (len(body), body)
                for body in (f'{{"msg": "{m}"}}'.encode() for m in messages)
            )
        )
        for message in messages:
            response = _read_response(sock, buffer)
            assert response.startswith(b"HTTP/1.1 200"), response
            assert response.endswith(f'"{message}"}}'.encode()), response
        assert not buffer


class _Recorder:
    """A transport that records each write and whether it was closed."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


def test_the_uvicorn_front_writes_a_head_and_its_body_at_once() -> None:
    recorder = _Recorder()
    out = _OneWrite(recorder)  # type: ignore[arg-type]
    out.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # interim: never held
    assert recorder.writes == [b"HTTP/1.1 100 Continue\r\n\r\n"]
    out.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
    assert len(recorder.writes) == 1  # the head waits for its body
    out.write(b"{}")
    assert recorder.writes[1:] == [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"]
    out.write(b"more")  # what follows the head is never held
    assert recorder.writes[-1] == b"more"


def test_a_held_head_goes_out_before_anything_else_is_done() -> None:
    recorder = _Recorder()
    out = _OneWrite(recorder)  # type: ignore[arg-type]
    out.write(b"HTTP/1.1 500 Internal Server Error\r\n\r\n")
    assert not out.is_closing()  # any other use of the transport writes the head first
    assert recorder.writes == [b"HTTP/1.1 500 Internal Server Error\r\n\r\n"]
    out = _OneWrite(recorder)  # type: ignore[arg-type]
    out.write(b"HTTP/1.1 200 OK\r\n\r\n")
    out.close()
    assert recorder.writes[-1] == b"HTTP/1.1 200 OK\r\n\r\n" and recorder.closed
