"""The gateway under a path prefix (issue 12, items 5 and 11): behind a proxy that strips it
(``front.root_path``, ``--root-path``), on both HTTP servers, and mounted in a Starlette app
(the scope's ``root_path``); ``GET /`` to the docs page, and a favicon.

The ``/docs`` page must work wherever it is served: its assets, ``openapi.json`` and the calls
it sends are all relative to the page, and the document's ``servers`` entry names the prefix.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from importlib import resources
from typing import Any

import httpx
import pytest
from gateway_stack import IDL, Stack, worker_config
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route
from starlette.testclient import TestClient

from offloop.app.gateway import build_gateway
from offloop.gateway.asgi import ASGIApp
from offloop.gateway.config import FrontConfig, GatewayConfig
from offloop.gateway.core import strip_root

JSON = {"content-type": "application/json"}


def _assets(html: str) -> list[str]:
    return re.findall(r"""(?:src|href)="([^"]+)\"""", html)


def _check_docs_page(get: Callable[[str], httpx.Response], prefix: str) -> None:
    """The page at ``{prefix}/docs``, and every URL it names resolved as a browser does."""
    page = get(f"{prefix}/docs")
    assert page.status_code == 200
    for asset in _assets(page.text):
        assert not asset.startswith("/"), asset  # relative: the browser adds the prefix
        assert get(f"{prefix}/{asset}").status_code == 200, asset
    doc = get(f"{prefix}/openapi.json").json()
    assert doc["servers"] == [{"url": prefix or "/"}]


def test_the_page_names_no_absolute_url() -> None:
    static = resources.files("offloop.gateway").joinpath("static")
    for name in ("index.html", "docs.js"):
        text = static.joinpath(name).read_text()
        assert not re.findall(r"""["'`]/(?:docs|openapi\.json|rpc)""", text), name
    js = static.joinpath("docs.js").read_text()
    assert 'fetch(url("openapi.json")' in js and "fetch(url(path), init)" in js


def test_strip_root() -> None:
    assert strip_root("/api/docs", "/api") == "/docs"
    assert strip_root("/api", "/api") == "/"
    assert strip_root("/api/", "/api") == "/"
    assert strip_root("/apix/docs", "/api") == "/apix/docs"  # a whole segment only
    assert strip_root("/docs", "/api") == "/docs"  # a proxy that strips it
    assert strip_root("/rpc/A/b", "/r") == "/rpc/A/b"
    assert strip_root("/docs", "") == "/docs"


@pytest.mark.parametrize("bad", ["api", "/api/", "/a?b", "/a b", "/a%2f"])
def test_root_path_must_be_a_path(bad: str) -> None:
    with pytest.raises(ValueError, match="root_path"):
        FrontConfig(root_path=bad)
    assert FrontConfig(root_path="/api/v1").root_path == "/api/v1"


# -- behind a proxy: front.root_path, on both servers ---------------------------------------


def _stack(stack_factory: Callable[[str, str], Stack], server: str, **config: Any) -> Stack:
    stack = stack_factory(server, "loop")
    worker = stack.start_worker(worker_config())
    stack.start_gateway([("127.0.0.1", worker.port)], **config)
    return stack


@pytest.mark.parametrize("server", ["uvicorn", "tornado"])
def test_behind_a_proxy_that_strips_the_prefix(
    stack_factory: Callable[[str, str], Stack], server: str
) -> None:
    stack = _stack(stack_factory, server, root_path="/api")
    client = stack.client
    # The proxy strips /api: the gateway sees /docs, the browser is at /api/docs.
    page = client.get("/docs")
    assert page.status_code == 200
    for asset in _assets(page.text):
        assert client.get("/" + asset).status_code == 200, asset
    assert client.get("/openapi.json").json()["servers"] == [{"url": "/api"}]
    for path in ("/", "/docs/"):
        r = client.get(path, follow_redirects=False)
        assert (r.status_code, r.headers["location"]) == (307, "/api/docs"), path
    # A proxy that keeps the prefix works too.
    _check_docs_page(client.get, "/api")
    r = client.post("/api/rpc/TextLab/ping", json={"msg": "hi"})
    assert (r.status_code, r.json()) == (200, {"result": "hi"})
    assert client.get("/api/healthz").status_code == 200
    assert client.get("/apix/healthz").status_code == 404


@pytest.mark.parametrize("server", ["uvicorn", "tornado"])
def test_at_the_root_and_the_favicon(
    stack_factory: Callable[[str, str], Stack], server: str
) -> None:
    stack = _stack(stack_factory, server)
    client = stack.client
    _check_docs_page(client.get, "")
    r = client.get("/", follow_redirects=False)
    assert (r.status_code, r.headers["location"]) == (307, "/docs")
    assert client.get("/", follow_redirects=True).status_code == 200  # followed: the page
    icon = client.get("/favicon.ico")
    assert icon.status_code == 200
    assert icon.headers["content-type"] == "image/svg+xml"
    assert icon.content.startswith(b"<svg")
    assert client.head("/favicon.ico").status_code == 200
    assert client.post("/", json={}).status_code == 405
    assert stack.metric("offloop_gateway_requests_total", route="/favicon.ico", status="200")


# -- mounted in a Starlette app --------------------------------------------------------------


def test_mounted_in_starlette_serves_the_docs_and_is_shut_down(
    stack_factory: Callable[[str, str], Stack],
) -> None:
    stack = stack_factory("uvicorn", "loop")
    worker = stack.start_worker(worker_config())
    gateway = build_gateway(GatewayConfig(idl=IDL, backends={"*": (("127.0.0.1", worker.port),)}))
    api = ASGIApp(gateway)
    stops: list[float | None] = []
    shutdown = gateway.shutdown

    async def recorded_shutdown(grace: float | None = None) -> None:
        stops.append(grace)
        await shutdown(0)

    gateway.shutdown = recorded_shutdown  # type: ignore[method-assign]

    async def home(request: Any) -> PlainTextResponse:
        return PlainTextResponse("home")

    app = Starlette(routes=[Route("/", home), Mount("/api/v1", app=api)], lifespan=api.lifespan)
    with TestClient(app, base_url="http://testserver") as client:
        assert gateway.started  # by the host's lifespan, before any request
        assert client.get("/").text == "home"
        _check_docs_page(client.get, "/api/v1")
        r = client.get("/api/v1/", follow_redirects=False)
        assert (r.status_code, r.headers["location"]) == (307, "/api/v1/docs")
        r = client.post("/api/v1/rpc/TextLab/ping", json={"msg": "hi"})
        assert (r.status_code, r.json()) == (200, {"result": "hi"})
        assert client.get("/api/v1/favicon.ico").status_code == 200
        assert stops == []
    assert stops == [None]  # the host's shutdown reached the mounted gateway


def test_a_mount_without_lifespan_starts_lazily_and_says_so(
    stack_factory: Callable[[str, str], Stack], caplog: pytest.LogCaptureFixture
) -> None:
    stack = stack_factory("uvicorn", "loop")
    worker = stack.start_worker(worker_config())
    gateway = build_gateway(GatewayConfig(idl=IDL, backends={"*": (("127.0.0.1", worker.port),)}))
    app = Starlette(routes=[Mount("/api", app=ASGIApp(gateway))])
    with TestClient(app) as client, caplog.at_level(logging.WARNING, "offloop.gateway"):
        assert not gateway.started
        for _ in range(2):
            assert client.post("/api/rpc/TextLab/ping", json={"msg": "x"}).status_code == 200
        assert gateway.started
        # What the host's lifespan would have done, on the loop the gateway runs on.
        assert client.portal is not None
        client.portal.call(gateway.shutdown, 0)
    told = [r for r in caplog.records if "it stops only if" in r.getMessage()]
    assert len(told) == 1


def test_the_mount_point_wins_over_the_configured_root_path(
    stack_factory: Callable[[str, str], Stack],
) -> None:
    stack = stack_factory("uvicorn", "loop")
    worker = stack.start_worker(worker_config())
    config = GatewayConfig(
        idl=IDL,
        backends={"*": (("127.0.0.1", worker.port),)},
        front=FrontConfig(root_path="/proxy"),
    )
    gateway = build_gateway(config)
    api = ASGIApp(gateway)
    app = Starlette(routes=[Mount("/api", app=api)], lifespan=api.lifespan)
    with TestClient(app) as client:
        assert client.get("/api/openapi.json").json()["servers"] == [{"url": "/api"}]
        assert client.get("/api/", follow_redirects=False).headers["location"] == "/api/docs"
