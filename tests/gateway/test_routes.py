"""Every route and status of the gateway, over real sockets, against uvicorn and Tornado in both
modes (the ``gateway_factory`` parametrization): real workers behind, a real HTTP client in
front."""

from __future__ import annotations

import functools
import json
import re
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from gates import Gate
from gateway_stack import (
    ALLTYPES_IDL,
    AllTypesHandler,
    GatewayFactory,
    Stack,
    alltypes_worker_config,
)
from harness import calls_answered, metric
from net import free_port, unread_bytes
from openapi_spec_validator import validate
from waiting import wait_until

JSON = {"content-type": "application/json"}


def assert_error(r: httpx.Response, status: int, *, path: str | None = None) -> dict[str, Any]:
    """The response is ``status`` with the standard error body; returns that body's error."""
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    error = r.json()["error"]
    assert error["code"] == status
    assert isinstance(error["message"], str) and error["message"]
    if path is not None:
        assert error["path"] == path, error
    return error


def in_background(fn: Any, *args: Any, **kwargs: Any) -> tuple[threading.Thread, list[Any]]:
    """Run ``fn`` in a thread; its result (or exception) lands in the returned list."""
    out: list[Any] = []

    def target() -> None:
        try:
            out.append(fn(*args, **kwargs))
        except Exception as exc:
            out.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, out


# -- 200, 202 ------------------------------------------------------------------------------


def test_ok(gateway_factory: GatewayFactory) -> None:
    stack = gateway_factory()
    r = stack.call("ping", {"msg": "héllo"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json"
    assert r.json() == {"result": "héllo"}
    r = stack.call("sleep", {"millis": 1})
    assert r.json() == {"result": 1.0}


def test_void_oneway_and_exception_of_void(
    stack_factory: Callable[[str, str], Stack], server: str, mode: str
) -> None:
    # The AllTypes service, for its void and oneway methods (TextLab has neither).
    stack = stack_factory(server, mode)
    worker = stack.start_worker(alltypes_worker_config())
    stack.start_gateway([("127.0.0.1", worker.port)], idl=ALLTYPES_IDL, services=("AllTypes",))
    r = stack.call("testVoid", service="AllTypes")
    assert r.status_code == 200, r.text
    assert r.json() == {"result": None}
    AllTypesHandler.oneway_calls.clear()
    r = stack.call("testOneway", {"secondsToSleep": 7}, service="AllTypes")
    assert r.status_code == 202, r.text
    wait_until(lambda: AllTypesHandler.oneway_calls == [7], timeout=2)
    r = stack.call("testException", {"arg": "fine"}, service="AllTypes")
    assert r.json() == {"result": None}
    error = assert_error(stack.call("testException", {"arg": "Xception"}, service="AllTypes"), 422)
    assert error["type"] == "Xception"
    assert error["fields"] == {"errorCode": 1001, "message": "Xception"}
    thing = {"string_thing": "s", "byte_thing": -1, "i32_thing": 2**31 - 1, "i64_thing": 2**53}
    r = stack.call("testStruct", {"thing": thing}, service="AllTypes")
    assert r.status_code == 200, r.text
    assert r.json() == {"result": thing}


# -- 4xx -----------------------------------------------------------------------------------


def test_bad_input_400(gateway_factory: GatewayFactory) -> None:
    stack = gateway_factory()
    client = stack.client
    for body in (b"{", b"[1,", b'{"msg": "x"} trailing', b"\xff\xfe"):
        error = assert_error(client.post("/rpc/TextLab/ping", content=body, headers=JSON), 400)
        assert "malformed JSON" in error["message"]
    # Wrong types, with the path of the bad value.
    error = assert_error(stack.call("sleep", {"millis": "soon"}), 400, path="argument.millis")
    assert "argument.millis" in error["message"]
    assert_error(stack.call("sleep", {"millis": 2**31}), 400, path="argument.millis")
    assert_error(stack.call("sleep", {"millis": 1.5}), 400, path="argument.millis")
    assert_error(stack.call("embed", {"texts": ["a", 3]}), 400, path="argument.texts[1]")
    # Not an object of named arguments; an unknown argument.
    assert_error(stack.call("ping", ["x"]), 400, path="argument")
    error = assert_error(stack.call("ping", {"msg": "x", "loud": True}), 400)
    assert error["path"].startswith("argument")
    assert "loud" in error["message"]
    # A bad deadline header.
    for bad in ("soon", "-1", "0", "nan", "inf", ""):
        r = stack.call("ping", {"msg": "x"}, headers={"x-request-timeout": bad})
        error = assert_error(r, 400)
        assert "X-Request-Timeout" in error["message"]
    # None of them reached a worker, and the gateway is still fine.
    assert stack.call("ping", {"msg": "ok"}).json() == {"result": "ok"}


def test_unknown_route_404(gateway_factory: GatewayFactory) -> None:
    stack = gateway_factory()
    error = assert_error(stack.call("ping", service="Nope"), 404, path="/rpc/Nope/ping")
    assert "Nope" in error["message"]
    error = assert_error(stack.call("pong"), 404, path="/rpc/TextLab/pong")
    assert "pong" in error["message"]
    assert_error(stack.client.post("/rpc/TextLab", json={}), 404)
    assert_error(stack.client.post("/rpc/TextLab/ping/more", json={}), 404)
    assert_error(stack.client.get("/nowhere"), 404)
    assert_error(stack.client.get("/docs/nope.js"), 404)


def test_wrong_method_405(gateway_factory: GatewayFactory) -> None:
    stack = gateway_factory()
    for verb in ("GET", "PUT", "DELETE"):
        r = stack.client.request(verb, "/rpc/TextLab/ping")
        assert_error(r, 405)
        assert r.headers["allow"] == "POST"
    for path in ("/healthz", "/metrics", "/openapi.json"):
        r = stack.client.post(path, json={})
        assert_error(r, 405)
        assert r.headers["allow"] == "GET"


def test_body_too_large_413(gateway_factory: GatewayFactory) -> None:
    stack = gateway_factory(max_body=1024)
    # Exactly at the limit is fine.
    at_limit = json.dumps({"msg": ""}).encode()
    at_limit = json.dumps({"msg": "x" * (1024 - len(at_limit))}).encode()
    assert len(at_limit) == 1024
    r = stack.client.post("/rpc/TextLab/ping", content=at_limit, headers=JSON)
    assert r.status_code == 200, r.text
    # Over it: with a Content-Length, and streamed in chunks (no length declared).
    over = json.dumps({"msg": "x" * 2000}).encode()
    assert_error(stack.client.post("/rpc/TextLab/ping", content=over, headers=JSON), 413)

    def chunks() -> Any:
        for i in range(0, len(over), 256):
            yield over[i : i + 256]

    assert_error(stack.client.post("/rpc/TextLab/ping", content=chunks(), headers=JSON), 413)
    assert stack.call("ping", {"msg": "ok"}).status_code == 200


def test_not_json_415(gateway_factory: GatewayFactory) -> None:
    stack = gateway_factory()
    body = b'{"msg": "x"}'
    for headers in ({"content-type": "text/plain"}, {"content-type": "application/jsonx"}, {}):
        r = stack.client.post("/rpc/TextLab/ping", content=body, headers=headers)
        assert_error(r, 415)
    r = stack.client.post(
        "/rpc/TextLab/ping",
        content=body,
        headers={"content-type": "Application/JSON; charset=utf-8"},
    )
    assert r.status_code == 200, r.text


def test_declared_exception_422(gateway_factory: GatewayFactory) -> None:
    stack = gateway_factory()
    error = assert_error(stack.call("parse", {"sentence": "colorless green"}), 422)
    assert error["type"] == "ParseError"
    assert error["fields"] == {"message": "cannot parse 'colorless green'", "unknown_words": ["x"]}
    assert "ParseError" in error["message"]


def test_exception_status_is_configurable(gateway_factory: GatewayFactory) -> None:
    stack = gateway_factory(exception_status={"ParseError": 409})
    error = assert_error(stack.call("parse", {"sentence": "x"}), 409)
    assert error["type"] == "ParseError"


# -- 5xx -----------------------------------------------------------------------------------


def test_backend_application_error_502(
    gateway_factory: GatewayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    stack = gateway_factory()
    error = assert_error(stack.call("ping", {"msg": "raise"}), 502)
    assert error["type"] == "TApplicationException"
    # The client gets a stable message; the handler's exception text goes to the log.
    assert error["message"] == "TextLab.ping: backend error"
    assert any("boom" in r.getMessage() for r in caplog.records if r.name == "offloop.gateway"), (
        "the gateway's log names the backend's error"
    )
    assert_error(stack.call("ping", {"msg": "apperror"}), 502)
    # A handler that returns what the IDL cannot encode is the backend's fault too.
    assert_error(stack.call("ping", {"msg": "badreturn"}), 502)
    assert stack.call("ping", {"msg": "ok"}).status_code == 200


def test_no_backend_503(gateway_factory: GatewayFactory) -> None:
    stack = gateway_factory(backends=0, addresses=[("127.0.0.1", free_port())])
    # Refused, not waited on: a call that waited for a backend would end at the gateway's
    # deadline with 504, so the status alone proves it (no stopwatch).
    assert_error(stack.call("ping", {"msg": "x"}), 503)
    assert stack.client.get("/healthz").status_code == 200
    r = wait_until(lambda: (r := stack.client.get("/readyz")).status_code == 503 and r, 3)
    assert r.json()["ready"] is False
    wait_until(lambda: stack.metric("offloop_gateway_backend_up") == 0, timeout=3)
    assert_error(stack.call("ping", {"msg": "x"}), 503)


def _assert_refused_at_once(stack: Stack, tmp_path: Path, full: Callable[[], bool]) -> None:
    """While a gated call holds the only slot (``full()`` says it does), a ping is refused at
    once with 503; once the gate opens, the held call and the next ping succeed."""
    with Gate(tmp_path) as gate:
        thread, out = in_background(stack.call, "ping", {"msg": gate.message})
        wait_until(full, timeout=10)
        r = stack.call("ping", {"msg": "x"})
        assert not out, "the refusal waited for the held call to end"
        error = assert_error(r, 503)
        assert "overloaded" in error["message"]
        assert r.headers["retry-after"] == "1"
        gate.open()
        thread.join(30)
    assert out[0].status_code == 200, out
    assert out[0].json() == {"result": "opened"}
    assert stack.call("ping", {"msg": "x"}).status_code == 200


def test_gateway_overloaded_503(gateway_factory: GatewayFactory, tmp_path: Path) -> None:
    stack = gateway_factory(max_inflight=1)
    _assert_refused_at_once(stack, tmp_path, lambda: stack.inflight() == 1)


def test_backends_overloaded_503(gateway_factory: GatewayFactory, tmp_path: Path) -> None:
    # One worker, no queue: while the held call runs there, the backend answers 'overloaded'.
    stack = gateway_factory(worker={"workers": 1, "max_queued": 0})
    (worker,) = stack.workers
    _assert_refused_at_once(stack, tmp_path, lambda: worker.pool.stats().busy == 1)


def test_deadline_504(gateway_factory: GatewayFactory) -> None:
    # Statuses, not stopwatches, prove each deadline: every sleep would end well within the
    # deadlines that must not apply.
    stack = gateway_factory(timeout=1.0)
    r = stack.call("sleep", {"millis": 600}, headers={"x-request-timeout": "0.2"})
    assert_error(r, 504)
    # The header can lower the gateway's deadline, never raise it.
    r = stack.call("sleep", {"millis": 1500}, headers={"x-request-timeout": "100"})
    assert_error(r, 504)
    r = stack.call("sleep", {"millis": 10}, headers={"x-request-timeout": "0.9"})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("pool", ["process"])
def test_each_status_with_process_pool(gateway_factory: GatewayFactory, pool: str) -> None:
    """The statuses that depend on the worker, with the handler in child processes."""
    stack = gateway_factory(pool)
    assert stack.call("ping", {"msg": "x"}).json() == {"result": "x"}
    assert_error(stack.call("sleep", {"millis": "x"}), 400, path="argument.millis")
    assert assert_error(stack.call("parse", {"sentence": "x"}), 422)["type"] == "ParseError"
    assert_error(stack.call("ping", {"msg": "raise"}), 502)
    r = stack.call("sleep", {"millis": 1500}, headers={"x-request-timeout": "0.3"})
    assert_error(r, 504)
    # A crashed child is replaced; its call fails as the backend's fault.
    assert_error(stack.call("ping", {"msg": "crash"}), 502)
    wait_until(lambda: stack.call("ping", {"msg": "back"}).status_code == 200, timeout=10)


# -- the plain routes ----------------------------------------------------------------------


def test_health_ready_and_metrics(gateway_factory: GatewayFactory) -> None:
    stack = gateway_factory()
    (worker,) = stack.workers
    client = stack.client
    r = client.get("/healthz")
    assert (r.status_code, r.json()) == (200, {"status": "ok"})
    r = client.get("/readyz")
    assert r.status_code == 200
    assert r.json() == {
        "ready": True,
        "backends": [
            {
                "service": "TextLab",
                "address": f"127.0.0.1:{worker.port}",
                "up": True,
                "in_flight": 0,
                "source": "static",
                "state": "up",
            }
        ],
    }
    assert stack.call("ping", {"msg": "x"}).status_code == 200
    assert_error(stack.call("ping", {"msg": "raise"}), 502)
    wait_until(lambda: (stack.metric("offloop_loop_lag_seconds_count") or 0) >= 1, timeout=5)
    r = client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    text = r.text
    route = "/rpc/TextLab/ping"
    assert metric(text, "offloop_gateway_requests_total", route=route, status="200") == 1
    assert metric(text, "offloop_gateway_requests_total", route=route, status="502") == 1
    assert metric(text, "offloop_gateway_requests_total", route="/healthz", status="200")
    assert metric(text, "offloop_gateway_request_seconds_count", route=route) == 2
    assert metric(text, "offloop_gateway_inflight_calls") == 0
    backend = f"127.0.0.1:{worker.port}"
    assert metric(text, "offloop_gateway_backend_up", backend=backend) == 1
    assert metric(text, "offloop_gateway_backend_inflight_calls", backend=backend) == 0
    lag = metric(text, "offloop_loop_lag_seconds_count")
    assert lag is not None and lag >= 1
    assert metric(text, "offloop_loop_lag_last_seconds") is not None
    # A route nobody knows is counted under one label, not one per path.
    client.get("/x/1")
    client.get("/x/2")
    assert stack.metric("offloop_gateway_requests_total", route="unknown", status="404") == 2


def test_openapi_document_is_valid(gateway_factory: GatewayFactory) -> None:
    stack = gateway_factory()
    r = stack.client.get("/openapi.json")
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    doc = r.json()
    validate(doc)
    for name in ("ping", "parse", "burn", "crunch", "sleep", "embed"):
        assert "post" in doc["paths"][f"/rpc/TextLab/{name}"]


_URL = re.compile(r"""(?:https?:)?//[^\s"'`)<>]+""", re.IGNORECASE)


def test_docs_page_and_local_assets(gateway_factory: GatewayFactory) -> None:
    stack = gateway_factory()
    client = stack.client
    r = client.get("/docs")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    html = r.text
    assets = re.findall(r"""(?:src|href)="([^"]+)\"""", html)
    assert "docs/docs.js" in assets and "docs/docs.css" in assets
    texts = [html]
    for asset in assets:
        # Served here, not by a CDN; relative, so that the page works under a prefix too.
        assert asset.startswith("docs/"), asset
        a = client.get("/" + asset)
        assert a.status_code == 200, asset
        kind = {"js": "text/javascript", "css": "text/css", "svg": "image/svg+xml"}
        assert a.headers["content-type"].startswith(kind[asset.rsplit(".", 1)[-1]])
        if not asset.endswith(".svg"):  # an SVG names its XML namespace by URL
            texts.append(a.text)
    for text in texts:
        assert not _URL.findall(text), _URL.findall(text)
    # Only flat names under /docs/.
    assert_error(client.get("/docs/../core.py"), 404)
    assert_error(client.get("/docs/.hidden"), 404)
    assert_error(client.get("/docs/static/index.html"), 404)
    # Names the file system refuses are unknown assets too, not server errors.
    assert_error(client.get("/docs/a%00b.js"), 404)
    assert_error(client.get("/docs/" + "x" * 300), 404)


# -- client disconnects --------------------------------------------------------------------


def test_client_disconnect_frees_the_slot(gateway_factory: GatewayFactory) -> None:
    stack = gateway_factory(timeout=5.0)
    (worker,) = stack.workers
    host, port = stack.url.removeprefix("http://").split(":")
    body = b'{"millis": 2000}'
    request = (
        b"POST /rpc/TextLab/sleep HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    sock = socket.create_connection((host, int(port)))
    try:
        sock.sendall(request)
        wait_until(lambda: stack.inflight() == 1, timeout=2)
    finally:
        sock.close()
    wait_until(lambda: stack.inflight() == 0, timeout=5)
    if stack.mode == "loop":
        # Its connection gave the call's seqid up. (An actor is stuck in its blocking call
        # until the reply comes, so its backend slot frees only then: that is by design.)
        backend = f"127.0.0.1:{worker.port}"
        name = "offloop_gateway_backend_inflight_calls"
        wait_until(lambda: stack.metric(name, backend=backend) == 0, timeout=5)
    # All of that before the sleep ended: the worker had not answered it (it counts a call
    # before it sends the reply), so nothing waited for the call to finish. (In loop mode the
    # worker also heard the call was given up, and counts it cancelled: issue 13.)
    assert calls_answered(worker, "sleep", "ok") == 0, "the slot was freed only when the call ended"
    assert stack.call("ping", {"msg": "still here"}).status_code == 200


def test_client_gone_mid_body(gateway_factory: GatewayFactory) -> None:
    stack = gateway_factory()
    host, port = stack.url.removeprefix("http://").split(":")
    head = (
        b"POST /rpc/TextLab/ping HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
        b'Content-Length: 100\r\n\r\n{"msg": '
    )

    def read_by_server(sock: socket.socket) -> bool:
        return unread_bytes(int(port), sock.getsockname()[1]) == 0

    for _ in range(3):
        with socket.create_connection((host, int(port))) as sock:
            sock.sendall(head)
            # Gone mid-body only once the server has read the start of the request.
            wait_until(functools.partial(read_by_server, sock), timeout=5)
    assert stack.call("ping", {"msg": "still here"}).status_code == 200
    assert stack.inflight() == 0
