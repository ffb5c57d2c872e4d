"""The limits of the HTTP fronts (issue 11, items 7, 8, 9 and 12), over raw sockets, against
uvicorn and Tornado alike: request heads (431, 414), slow and idle connections (408, closed),
the connection cap, chunked bodies (413), and a JSON error body for every error a front can
give. Limits are set small so that each test stays fast; no test asserts how long anything
took (a timeout only bounds a hang)."""

from __future__ import annotations

import contextlib
import functools
import json
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from gateway_stack import ALLTYPES_IDL, Stack, alltypes_worker_config, worker_config
from harness import metric
from net import unread_bytes
from waiting import wait_until

#: Seconds a raw socket waits for the gateway before the test fails (bounds a hang only).
SOCKET_TIMEOUT = 10.0

StackFactory = Callable[[str, str], Stack]


# -- raw HTTP ------------------------------------------------------------------------------


def _address(stack: Stack) -> tuple[str, int]:
    host, port = stack.url.removeprefix("http://").split(":")
    return host, int(port)


@contextlib.contextmanager
def raw_connection(stack: Stack) -> Iterator[socket.socket]:
    sock = socket.create_connection(_address(stack), timeout=SOCKET_TIMEOUT)
    try:
        yield sock
    finally:
        sock.close()


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One HTTP response off ``sock``: status, headers (lower-case names) and body."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before a whole response head; got {data!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return status, headers, body[:length]


def closed_by_peer(sock: socket.socket) -> bool:
    """Whether the gateway has closed ``sock`` (reads end, or the connection was reset);
    waits up to SOCKET_TIMEOUT for it. Data still coming counts as not closed."""
    try:
        return sock.recv(65536) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


def assert_json_error(
    response: tuple[int, dict[str, str], bytes], status: int, *, contains: str = ""
) -> dict[str, Any]:
    code, headers, body = response
    assert code == status, (code, headers, body)
    assert headers["content-type"].startswith("application/json"), headers
    error = json.loads(body)["error"]
    assert error["code"] == status and error["message"], error
    assert contains.lower() in error["message"].lower(), error
    # Every error carries a request id, in its body and its X-Request-Id header, even a
    # refusal by the front before the request reached the gateway's core.
    assert error["request_id"] and headers["x-request-id"] == error["request_id"], (headers, error)
    return dict(error)


def exchange(stack: Stack, data: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send ``data`` on a new connection and read one response."""
    with raw_connection(stack) as sock:
        sock.sendall(data)
        return read_response(sock)


def get(path: str, *headers: str) -> bytes:
    lines = [f"GET {path} HTTP/1.1", "Host: gw", *headers, "", ""]
    return "\r\n".join(lines).encode("latin-1")


def post(path: str, body: bytes, *headers: str) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: gw", f"Content-Length: {len(body)}", *headers]
    return "\r\n".join([*lines, "", ""]).encode("latin-1") + body


def front(stack_factory: StackFactory, server: str, **config: Any) -> Stack:
    """A gateway on ``server`` (loop mode: the front does not depend on the mode) in front of
    one TextLab worker, with ``config`` overrides."""
    stack = stack_factory(server, "loop")
    worker = stack.start_worker(worker_config())
    stack.start_gateway([("127.0.0.1", worker.port)], **config)
    return stack


def healthy(stack: Stack) -> bool:
    try:
        return exchange(stack, get("/healthz"))[0] == 200
    except OSError:  # refused, or closed before an answer
        return False


# -- item 7: the request head --------------------------------------------------------------


def test_header_over_the_limit_431(stack_factory: StackFactory, server: str) -> None:
    stack = front(stack_factory, server, max_header_bytes=4096)
    start = get("/healthz", "X-Big: ")[: -len(b"\r\n\r\n")]  # the head, up to the value
    for size, status in ((4096, 200), (4097, 431)):
        value = b"x" * (size - len(start) - len(b"\r\n\r\n"))
        data = start + value + b"\r\n\r\n"
        assert len(data) == size
        with raw_connection(stack) as sock:
            sock.sendall(data)
            response = read_response(sock)
            if status == 200:
                assert response[0] == 200, response
            else:
                assert_json_error(response, 431, contains="max_header_bytes")
                assert closed_by_peer(sock)
    assert healthy(stack)
    text = stack.metrics()
    assert metric(text, "offloop_gateway_requests_total", route="front", status="431") == 1


def test_huge_header_is_cut_off_early(stack_factory: StackFactory, server: str) -> None:
    """One header streamed without end: the front stops reading it at the limit (before, the
    uvicorn front kept every byte: 128 MiB of header grew the gateway by 252 MiB)."""
    stack = front(stack_factory, server, max_header_bytes=4096)
    total = 16 * 1024 * 1024
    piece = b"x" * 65536
    sent = 0
    with raw_connection(stack) as sock:
        try:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: gw\r\nX-Big: ")
            while sent < total:
                sock.sendall(piece)
                sent += len(piece)
        except (BrokenPipeError, ConnectionResetError):
            pass
        assert sent < total, "the front read a 16 MiB header to its end"
    assert healthy(stack)


def test_url_over_the_limit_414(stack_factory: StackFactory, server: str) -> None:
    stack = front(stack_factory, server, max_url_bytes=1024)
    at_limit = "/nowhere?" + "q" * (1024 - len("/nowhere?"))
    assert exchange(stack, get(at_limit))[0] == 404
    for path in (at_limit + "q", "/rpc/TextLab/ping/" + "p" * 2000):
        with raw_connection(stack) as sock:
            sock.sendall(get(path))
            assert_json_error(read_response(sock), 414, contains="max_url_bytes")
            assert closed_by_peer(sock)
    assert healthy(stack)


def test_too_many_header_fields_431(stack_factory: StackFactory, server: str) -> None:
    stack = front(stack_factory, server, max_header_count=10)
    ten = [f"X-H{i}: v" for i in range(9)]  # and Host
    assert exchange(stack, get("/healthz", *ten))[0] == 200
    with raw_connection(stack) as sock:
        sock.sendall(get("/healthz", *ten, "X-One-More: v"))
        assert_json_error(read_response(sock), 431, contains="max_header_count")
        assert closed_by_peer(sock)
    assert healthy(stack)


# -- item 8: idle and slow connections, and the connection cap ----------------------------


def test_idle_connections_are_closed(stack_factory: StackFactory, server: str) -> None:
    stack = front(stack_factory, server, idle_timeout=0.3)
    with raw_connection(stack) as fresh, raw_connection(stack) as kept:
        kept.sendall(get("/healthz"))
        assert read_response(kept)[0] == 200
        # Neither sends anything more: both are closed, without a response.
        assert closed_by_peer(fresh)
        assert closed_by_peer(kept)
    assert healthy(stack)


def _trickle(sock: socket.socket, first: bytes, byte: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send ``first``, then ``byte`` every 50 ms until the gateway answers; its answer."""
    sock.sendall(first)
    sock.settimeout(0.05)
    deadline = time.monotonic() + SOCKET_TIMEOUT
    while time.monotonic() < deadline:
        try:
            data = sock.recv(1, socket.MSG_PEEK)
        except TimeoutError:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                sock.sendall(byte)
            continue
        assert data, "closed without a response"
        sock.settimeout(SOCKET_TIMEOUT)
        return read_response(sock)
    raise AssertionError("the gateway kept reading a request that never ends")


def test_slow_head_408(stack_factory: StackFactory, server: str) -> None:
    # Idle connections stay (idle_timeout is long): only the head's timeout can end this one.
    stack = front(stack_factory, server, header_timeout=0.3, idle_timeout=60.0)
    with raw_connection(stack) as sock:
        response = _trickle(sock, b"GET /healthz HTTP/1.1\r\nX-Slow: ", b"x")
        assert_json_error(response, 408, contains="header_timeout")
        assert closed_by_peer(sock)
    assert healthy(stack)


def test_slow_body_408(stack_factory: StackFactory, server: str) -> None:
    stack = front(stack_factory, server, body_timeout=0.3, idle_timeout=60.0)
    head = post("/rpc/TextLab/ping", b"", "Content-Type: application/json")
    head = head.replace(b"Content-Length: 0", b"Content-Length: 100000")
    with raw_connection(stack) as sock:
        response = _trickle(sock, head + b'{"msg": "', b"x")
        assert_json_error(response, 408, contains="body_timeout")
        assert closed_by_peer(sock)
    assert stack.inflight() == 0
    assert healthy(stack)


def test_cap_closes_the_oldest_idle_connection(stack_factory: StackFactory, server: str) -> None:
    stack = front(stack_factory, server, max_connections=4)
    with contextlib.ExitStack() as stack_of_sockets:
        idle = [stack_of_sockets.enter_context(raw_connection(stack)) for _ in range(4)]
        for sock in idle:  # each served once, so each is surely accepted, in this order
            sock.sendall(get("/healthz"))
            assert read_response(sock)[0] == 200
        # A fifth is served, and the oldest idle connection made room for it.
        assert exchange(stack, get("/healthz"))[0] == 200
        assert closed_by_peer(idle[0])
        for sock in idle[1:]:
            sock.sendall(get("/healthz"))
            assert read_response(sock)[0] == 200


def test_cap_with_no_idle_connection_503(stack_factory: StackFactory, server: str) -> None:
    stack = front(stack_factory, server, max_connections=3)
    head = post("/rpc/TextLab/ping", b"", "Content-Type: application/json")
    head = head.replace(b"Content-Length: 0", b"Content-Length: 100")
    with contextlib.ExitStack() as stack_of_sockets:
        busy = [stack_of_sockets.enter_context(raw_connection(stack)) for _ in range(3)]
        _, port = _address(stack)
        for sock in busy:  # each sending a body it never ends: none is idle
            sock.sendall(head + b'{"msg": ')
            # Read by the gateway, so surely accepted, and in its body.
            read = functools.partial(unread_bytes, port, sock.getsockname()[1])
            wait_until(lambda: read() == 0, timeout=SOCKET_TIMEOUT)  # noqa: B023 (used at once)
        with raw_connection(stack) as sock:
            response = read_response(sock)
            error = assert_json_error(response, 503, contains="max_connections")
            assert response[1]["retry-after"] == "1", error
    # Once the gateway has seen them go, there is room again.
    wait_until(lambda: healthy(stack), timeout=SOCKET_TIMEOUT)


# -- item 12: chunked bodies ---------------------------------------------------------------


def _chunked(pieces: list[bytes]) -> bytes:
    head = (
        b"POST /rpc/TextLab/ping HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    return head + b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"


def test_too_many_chunks_413(stack_factory: StackFactory, server: str) -> None:
    stack = front(stack_factory, server, max_body_chunks=32)
    body = json.dumps({"msg": "x" * 21}).encode()
    assert len(body) == 32
    status, _, answer = exchange(stack, _chunked([body[i : i + 1] for i in range(32)]))
    assert (status, json.loads(answer)) == (200, {"result": "x" * 21})
    body = json.dumps({"msg": "x" * 22}).encode()
    with raw_connection(stack) as sock:
        sock.sendall(_chunked([body[i : i + 1] for i in range(33)]))
        assert_json_error(read_response(sock), 413, contains="max_body_chunks")
        assert closed_by_peer(sock)
    assert healthy(stack)


# -- items 9 and 12: every error a front gives is JSON -------------------------------------


def test_malformed_http_400_json(stack_factory: StackFactory, server: str) -> None:
    stack = front(stack_factory, server)
    for data in (
        b"NOT HTTP AT ALL\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: gw\r\nBad Header\r\n\r\n",
        b"POST /rpc/TextLab/ping HTTP/1.1\r\nHost: gw\r\nContent-Length: x\r\n\r\n",
    ):
        with raw_connection(stack) as sock:
            sock.sendall(data)
            assert_json_error(read_response(sock), 400)
    assert healthy(stack)


@pytest.mark.parametrize(
    ("path", "status", "allow"),
    [("/healthz", 405, "GET"), ("/rpc/TextLab/ping", 405, "POST"), ("/nowhere", 404, None)],
)
def test_unrouted_methods_json(
    stack_factory: StackFactory, server: str, path: str, status: int, allow: str | None
) -> None:
    """Methods a front may refuse before the core sees them (Tornado routes only seven)."""
    stack = front(stack_factory, server)
    for method in ("PROPFIND", "TRACE", "PUT", "DELETE"):
        response = exchange(stack, get(path).replace(b"GET", method.encode(), 1))
        assert_json_error(response, status)
        assert response[1].get("allow") == allow, (method, response)


def test_handler_failure_500_json(
    stack_factory: StackFactory, server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    stack = front(stack_factory, server)
    assert stack.gateway is not None

    async def broken(request: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(stack.gateway, "handle", broken)
    assert_json_error(exchange(stack, get("/healthz")), 500, contains="internal error")


def test_json_nested_too_deep_400(stack_factory: StackFactory, server: str) -> None:
    """985 levels and more used to fail json.loads with RecursionError: a 500 in the fronts'
    own formats, missing from the request metrics."""
    stack = front(stack_factory, server)
    for depth in (100, 985, 100_000):
        body = b'{"msg": ' + b"[" * depth + b"]" * depth + b"}"
        response = exchange(
            stack, post("/rpc/TextLab/ping", body, "Content-Type: application/json")
        )
        assert_json_error(response, 400)
    route = "/rpc/TextLab/ping"
    assert stack.metric("offloop_gateway_requests_total", route=route, status="400") == 3
    assert healthy(stack)


def test_json_strictness(stack_factory: StackFactory, server: str) -> None:
    stack = stack_factory(server, "loop")
    worker = stack.start_worker(alltypes_worker_config())
    stack.start_gateway([("127.0.0.1", worker.port)], idl=ALLTYPES_IDL, services=("AllTypes",))

    def call(method: str, body: bytes) -> tuple[int, dict[str, Any]]:
        r = stack.client.post(
            f"/rpc/AllTypes/{method}", content=body, headers={"content-type": "application/json"}
        )
        return r.status_code, r.json()

    # Only the documented strings stand for the special doubles; bare literals are not JSON.
    for literal in (b"NaN", b"Infinity", b"-Infinity"):
        status, answer = call("testDouble", b'{"thing": ' + literal + b"}")
        assert status == 400 and literal.decode().lstrip("-") in answer["error"]["message"]
    assert call("testDouble", b'{"thing": "-Infinity"}') == (200, {"result": "-Infinity"})
    # A number too large for a double is refused, not made infinite.
    status, answer = call("testDouble", b'{"thing": 1e400}')
    assert status == 400 and answer["error"]["path"] == "argument.thing", answer
    assert call("testDouble", b'{"thing": 1e300}') == (200, {"result": 1e300})
    # Duplicate keys are refused, naming the key, at any depth.
    status, answer = call("testString", b'{"thing": "a", "thing": "b"}')
    assert status == 400 and '"thing"' in answer["error"]["message"], answer
    status, answer = call("testStruct", b'{"thing": {"i32_thing": 1, "i32_thing": 2}}')
    assert status == 400 and '"i32_thing"' in answer["error"]["message"], answer
    # An integer may be written as an integral number (as JSON Schema has it), not 45.5.
    assert call("testI32", b'{"thing": 45.0}') == (200, {"result": 45})
    assert call("testI64", b'{"thing": 4.5e1}') == (200, {"result": 45})
    assert call("testEnum", b'{"thing": 5.0}') == (200, {"result": "FIVE"})
    for body in (b'{"thing": 45.5}', b'{"thing": 1e300}', b'{"thing": 1e400}'):
        status, answer = call("testI32", body)
        assert status == 400 and answer["error"]["path"] == "argument.thing", answer
    # Past 2**53 a float no longer holds every integer: refused rather than rounded.
    status, answer = call("testI64", b'{"thing": 9007199254740993.0}')
    assert status == 400 and answer["error"]["path"] == "argument.thing", answer


def test_empty_body_is_an_empty_object(stack_factory: StackFactory, server: str) -> None:
    stack = stack_factory(server, "loop")
    worker = stack.start_worker(alltypes_worker_config())
    stack.start_gateway([("127.0.0.1", worker.port)], idl=ALLTYPES_IDL, services=("AllTypes",))
    response = exchange(stack, post("/rpc/AllTypes/testVoid", b""))
    assert response[0] == 200 and json.loads(response[2]) == {"result": None}, response
    no_length = b"POST /rpc/AllTypes/testVoid HTTP/1.1\r\nHost: gw\r\n\r\n"
    assert exchange(stack, no_length)[0] == 200
    # A body needs its content type still.
    assert_json_error(exchange(stack, post("/rpc/AllTypes/testVoid", b"{}")), 415)
