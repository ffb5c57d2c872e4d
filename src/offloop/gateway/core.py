"""The gateway core: routes, JSON mapping, calls, errors and metrics, independent of any
HTTP server.

A server adapter (:mod:`offloop.gateway.asgi` for uvicorn or any ASGI server,
:mod:`offloop.gateway.tornado` for Tornado) turns each HTTP request into a :class:`Request`,
awaits :meth:`Gateway.handle`, and writes the :class:`Response` back. The adapter also calls
:meth:`Gateway.startup` and :meth:`Gateway.shutdown` on the serving loop.

Routes:

- ``POST /rpc/{Service}/{method}``: a JSON object of named arguments; ``200 {"result": ...}``,
  or ``202`` for a oneway method.
- ``GET /healthz`` (liveness, answered on the loop), ``GET /readyz`` (200 while every service
  has a reachable backend), ``GET /metrics`` (Prometheus), ``GET /openapi.json``,
  ``GET /docs`` (an interactive page; its assets are served here, no CDN), ``GET /`` (a
  redirect to it), ``GET /favicon.ico``.

Under a path prefix (a mount point: ``Request.root_path``; behind a proxy:
``front.root_path``) the docs page works as it is, since it names every URL relative to
itself; the prefix goes into the OpenAPI document's ``servers`` entry and the redirects.

Errors are ``{"error": {"code", "message", ...}}`` with the status of the table in
``docs/gateway.md``. What a client sees is the error's public message; the log gets the rest.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from offloop import tracing
from offloop.client.caller import AT_LIMIT, Caller, shedding
from offloop.codec.jsonmap import JsonMappingError, args_from_json, parse_json, result_to_json
from offloop.context import REQUEST_ID, request_id_for
from offloop.errors import (
    LocalProtocolError,
    OffloopError,
    PayloadTooLarge,
    RemoteApplicationError,
)
from offloop.gateway.auth import document_security
from offloop.gateway.config import GatewayConfig
from offloop.gateway.door import Door
from offloop.gateway.metrics import GatewayMetrics
from offloop.gateway.openapi import build_openapi, with_root_path
from offloop.gateway.statuses import status_for
from offloop.identity import CALLER
from offloop.idl import MethodInfo, ServiceInfo
from offloop.logs import log_access
from offloop.runtime.limiter import Limiter
from offloop.watchdog import LoopWatchdog

__all__ = ["Gateway", "Request", "Response"]

log = logging.getLogger("offloop.gateway")

_JSON = "application/json"
_STATIC_TYPES = {
    ".js": "text/javascript",
    ".css": "text/css",
    ".html": "text/html",
    ".svg": "image/svg+xml",
}
# Root paths (of mounts: each host app has a few) whose OpenAPI document is kept made.
_MAX_ROOTS = 8
# Routes of requests no route matched (metrics' labels): no ``http.route`` in their span.
_UNROUTED = ("unknown", "/rpc/unknown")
# Probes and scrapes, every few seconds from each prober: no span (docs/tracing.md).
_UNTRACED = frozenset({"/healthz", "/readyz", "/metrics"})


@dataclass(frozen=True, slots=True)
class Request:
    """An HTTP request as the core sees it.

    Attributes:
        method: ``GET``, ``POST``...
        path: the URL path, without the query string.
        headers: header names in lower case.
        body: the whole body (the adapter enforces ``max_body`` while reading it).
        client: the client's address (host), when the adapter knows it.
        root_path: the prefix the gateway is reached under (an ASGI ``root_path``: a mount
            point), already stripped from ``path``; ``None`` for ``front.root_path``.
    """

    method: str
    path: str
    headers: Mapping[str, str]
    body: bytes = b""
    client: str = ""
    root_path: str | None = None


def strip_root(path: str, root: str) -> str:
    """``path`` without the prefix ``root`` (``/api/docs`` -> ``/docs``), if it starts with
    that prefix as a whole segment; else ``path`` as it is."""
    if root and path.startswith(root):
        rest = path[len(root) :]
        if not rest or rest[0] == "/":
            return rest or "/"
    return path


@dataclass(frozen=True, slots=True)
class Response:
    """An HTTP response: status, headers and the whole body."""

    status: int
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)


#: One encoder for every body: ``json.dumps`` with arguments builds a new encoder per call.
_encode_json = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode


def json_response(
    status: int, payload: Any, headers: list[tuple[str, str]] | None = None
) -> Response:
    body = _encode_json(payload).encode()
    if headers:
        return Response(status, body, [("content-type", _JSON), *headers])
    return Response(status, body, [("content-type", _JSON)])


def _load_assets() -> dict[str, Response]:
    """The files of the ``/docs`` page, read once at start-up so that serving them never
    reads the disk on the loop, and a path can only name one of them."""
    assets: dict[str, Response] = {}
    for entry in resources.files("offloop.gateway").joinpath("static").iterdir():
        name = entry.name
        if name.startswith(".") or not entry.is_file():
            continue
        ctype = _STATIC_TYPES.get(name[name.rfind(".") :], "application/octet-stream")
        headers = [("content-type", ctype), ("cache-control", "max-age=3600")]
        assets[name] = Response(200, entry.read_bytes(), headers)
    return assets


def error_response(
    status: int, message: str, headers: list[tuple[str, str]] | None = None, **extra: Any
) -> Response:
    """The error body every route uses: ``{"error": {"code", "message", ...}}``."""
    return json_response(status, {"error": {"code": status, "message": message, **extra}}, headers)


#: How every error body opens (compact, or as ``json.dumps`` writes it by default).
_ERROR_OPENINGS = (b'{"error":{', b'{"error": {')


def with_request_id(response: Response, rid: str) -> Response:
    """``response`` with an ``X-Request-Id`` header, and ``request_id`` first in its error
    body if it has one (a copy: responses may be shared, like the one for shedding). The id
    holds no character JSON escapes (:func:`~offloop.context.valid_request_id`), so it is
    spliced in as it is."""
    body = response.body
    if response.status >= 400:
        for opening in _ERROR_OPENINGS:
            if body.startswith(opening):
                field = b'"request_id":"' + rid.encode() + b'",'
                body = opening + field + body[len(opening) :]
                break
    return Response(response.status, body, [*response.headers, ("x-request-id", rid)])


class Gateway:
    """Serves the routes of the module docstring for the services of ``services``.

    Args:
        config: the gateway's configuration.
        services: the services to expose, by name.
        caller: how calls reach the worker tier (event-loop or actor mode).
    """

    def __init__(
        self, config: GatewayConfig, services: Mapping[str, ServiceInfo], caller: Caller
    ) -> None:
        self.config = config
        self.services = dict(services)
        self.caller = caller
        #: Called at the end of :meth:`shutdown`, after the caller is closed: what the
        #: gateway's builder made for the caller and must stop (item 20: the backends' TLS
        #: watcher thread).
        self.closers: list[Callable[[], None]] = []
        self.metrics = GatewayMetrics(caller.backend_states)
        self.watchdog: LoopWatchdog | None = None
        if config.watchdog.enabled:
            self.watchdog = LoopWatchdog(config.watchdog, registry=self.metrics.registry)
        self._openapi_doc = build_openapi(
            list(self.services.values()),
            title=config.api_title or None,
            version=config.api_version,
            exception_status=config.exception_status,
            root_path=config.front.root_path,
        )
        document_security(self._openapi_doc, config.auth)  # how to send a credential
        self._openapi = {config.front.root_path: json.dumps(self._openapi_doc).encode()}
        self._assets = _load_assets()
        self._door = Door(config, Response)  # CORS, authentication, limits per caller
        self._calls = Limiter(config.front.max_inflight, name="gateway calls in flight")
        # While every backend is at its learned limit, a call is refused before its body is
        # parsed, with one response made here (offloop.client.caller.Shedding).
        self._saturated = shedding(caller)
        retry = self._retry_after = [("retry-after", str(config.front.retry_after))]
        self._shed = error_response(503, AT_LIMIT, retry)
        self.metrics.track_inflight(lambda: self._calls.borrowed)
        self._idle = asyncio.Event()
        self._idle.set()
        self._closing = False
        #: Set at SIGTERM: /readyz fails while calls are still served (the drain delay).
        self.draining = False
        self._startup: asyncio.Task[None] | None = None

    # -- life cycle ----------------------------------------------------------------------

    async def startup(self) -> None:
        """Start the caller and the watchdog; call on the serving loop."""
        if self._startup is not None:
            await asyncio.shield(self._startup)
            return
        # Concurrent first requests (an app mounted without lifespan events) all wait for
        # the one start-up; only the first runs it.
        self._startup = asyncio.get_running_loop().create_task(self._start())
        await asyncio.shield(self._startup)

    async def _start(self) -> None:
        await self.caller.start()
        if self.watchdog is not None:
            self.watchdog.start()

    async def shutdown(self, grace: float | None = None) -> None:
        """Refuse new calls, wait up to ``grace`` seconds for calls in flight, close the
        caller's connections and stop the watchdog."""
        grace = self.config.grace if grace is None else grace
        self._closing = True
        if self._calls.borrowed:
            log.info("draining %d calls in flight (grace %.1f s)", self._calls.borrowed, grace)
            try:
                await asyncio.wait_for(self._idle.wait(), grace)
            except TimeoutError:
                log.warning("%d calls still in flight after the grace period", self._calls.borrowed)
        await self.caller.close()
        if self.watchdog is not None:
            self.watchdog.stop()
        for close in self.closers:
            close()
        self.closers.clear()

    @property
    def started(self) -> bool:
        """Whether :meth:`startup` has completed."""
        return self._startup is not None and self._startup.done()

    @property
    def inflight(self) -> int:
        """Calls in flight now."""
        return self._calls.borrowed

    def body_too_large(self, size: int) -> Response | None:
        """The 413 response for a body of ``size`` bytes (declared or received so far), or
        None while it is within ``front.max_body``. The fronts call it while reading."""
        limit = self.config.front.max_body
        if size <= limit:
            return None
        return self.error(PayloadTooLarge("body", size, limit))

    def error(self, exc: BaseException, where: str = "") -> Response:
        """The response for ``exc`` by the status table (:mod:`offloop.gateway.statuses`):
        its public message for the client, the detail for the log."""
        row = status_for(exc)
        headers = [("retry-after", str(self.config.front.retry_after))] if row.retry_after else []
        prefix = f"{where}: " if where else ""
        if isinstance(exc, OffloopError):
            if row.status >= 500:
                log.warning("%s%s", prefix, exc)
            extra: dict[str, str] = {}
            if isinstance(exc, JsonMappingError):
                extra["path"] = exc.path
            elif isinstance(exc, RemoteApplicationError):
                extra["type"] = "TApplicationException"
            return error_response(row.status, prefix + exc.public_message, headers, **extra)
        log.error("%sfailed unexpectedly", prefix, exc_info=exc)
        return error_response(row.status, f"{prefix}internal error ({type(exc).__name__})", headers)

    # -- routing -------------------------------------------------------------------------

    async def handle(self, request: Request) -> Response:
        """Answer one request. Never raises (but for cancellation).

        The request's id (its ``X-Request-Id`` if :func:`~offloop.context.valid_request_id`
        accepts it, else a new one) is :data:`~offloop.context.REQUEST_ID` while it is
        served, so it goes to the worker and into every log line about it; it comes back in
        the response's ``X-Request-Id`` and as ``request_id`` in an error body.
        """
        started = time.perf_counter()
        rid = request_id_for(request.headers.get("x-request-id"))
        token = REQUEST_ID.set(rid)
        trace: tracing.HttpSpan | None = None
        try:
            # Issue 13: the request's server span (offloop.tracing), current while it is
            # served; made inside the try, so that a failing tracer is answered like a bug.
            if tracing.ENABLED and request.path not in _UNTRACED:
                trace = tracing.http_span(
                    request.method, request.path, request.headers, request.client, rid
                )
            if self._door.active:
                route, response, caller = await self._door.serve(request, self._route)
            else:  # no authentication, caller limits or CORS: one await less per request
                route, response = await self._route(request)
                caller = None
        except Exception as exc:  # a bug of ours: still a JSON answer, counted like any other
            route, response, caller = "unknown", self.error(exc), None
        except BaseException as exc:  # cancelled (the client went away): no answer
            if trace is not None:
                trace.end(None, None, exc)
            raise
        finally:
            REQUEST_ID.reset(token)
            if trace is not None:
                trace.detach()
        took = time.perf_counter() - started
        self.metrics.observe(route, response.status, took)
        who = None if caller is None else str(caller)
        log_access(
            request.method, request.path, response.status, took * 1000, caller=who, request_id=rid
        )
        if trace is not None:
            trace.end(None if route in _UNROUTED else route, response.status)
        return with_request_id(response, rid)

    def refuse_method(self, request: Request) -> Response:
        """The answer to a request whose method the HTTP server would not route to the core
        (Tornado routes seven): 405 with ``Allow`` where a route is, 404 where none is.
        Counted like any request."""
        started = time.perf_counter()
        if self.config.auth.enabled:
            # Item 11: no credential is checked here (the answer is made synchronously), so
            # with authentication on it is the same for every path: 404 against 405 would
            # tell an anonymous client which methods exist.
            self.metrics.observe("unknown", 405, time.perf_counter() - started)
            response = self._not_allowed(request, "GET, HEAD, POST")
        else:
            route, target = self._lookup(request)
            if not isinstance(target, Response):
                target = self._not_allowed(request, "POST")
            response = target
            self.metrics.observe(route, response.status, time.perf_counter() - started)
        rid = request_id_for(request.headers.get("x-request-id"))
        return with_request_id(response, rid)

    async def _route(self, request: Request) -> tuple[str, Response]:
        route, target = self._lookup(request)
        if isinstance(target, Response):
            return route, target
        info, method = target
        return route, await self._rpc(request, info, method)

    def _lookup(self, request: Request) -> tuple[str, Response | tuple[ServiceInfo, MethodInfo]]:
        """The route of ``request`` and its answer, or for a call, what it calls."""
        path = request.path
        if path.startswith("/rpc/"):
            parts = path[5:].split("/")
            if len(parts) != 2:
                return "/rpc/unknown", error_response(404, f"no route for {path}")
            info = self.services.get(parts[0])
            method = info.methods.get(parts[1]) if info is not None else None
            if info is None or method is None:
                what = f"service {parts[0]!r}" if info is None else f"method {parts[1]!r}"
                return "/rpc/unknown", error_response(404, f"unknown {what}", path=path)
            route = f"/rpc/{info.name}/{method.name}"
            if request.method != "POST":
                return route, self._not_allowed(request, "POST")
            return route, (info, method)
        if path.startswith("/docs/"):
            if request.method not in ("GET", "HEAD"):
                return "/docs", self._not_allowed(request, "GET")
            if path == "/docs/":
                return "/docs", self._to_docs(request)
            return "/docs", self._static(path[6:])
        getter = {
            "/healthz": self._healthz,
            "/readyz": self._readyz,
            "/metrics": self._metrics,
            "/docs": self._docs,
            "/favicon.ico": self._favicon,
        }.get(path)
        if getter is None and path not in ("/", "/openapi.json"):
            return "unknown", error_response(404, f"no route for {path}")
        if request.method not in ("GET", "HEAD"):
            return path, self._not_allowed(request, "GET")
        if getter is not None:
            return path, getter()
        if path == "/":
            return path, self._to_docs(request)
        return path, self._openapi_json(request)

    @staticmethod
    def _not_allowed(request: Request, allowed: str) -> Response:
        return error_response(
            405, f"{request.method} is not allowed here; use {allowed}", [("allow", allowed)]
        )

    # -- plain routes --------------------------------------------------------------------

    def _healthz(self) -> Response:
        return Response(200, b'{"status":"ok"}', [("content-type", _JSON)])

    def _readyz(self) -> Response:
        ready = self.caller.ready() and not (self._closing or self.draining)
        if self.config.auth.enabled and CALLER.get() is None:
            # Item 10: open to probes, but the backends' addresses only to a caller who
            # authenticated (or with authentication off).
            return json_response(200 if ready else 503, {"ready": ready})
        states = self.caller.backend_states()
        body = {
            "ready": ready,
            "backends": [
                {
                    "service": s.service,
                    "address": s.address,
                    "up": s.up,
                    "in_flight": s.in_flight,
                    "source": s.source,
                    "state": s.state,
                }
                for s in states
            ],
        }
        return json_response(200 if ready else 503, body)

    def _metrics(self) -> Response:
        return Response(
            200, generate_latest(self.metrics.registry), [("content-type", CONTENT_TYPE_LATEST)]
        )

    def _root(self, request: Request) -> str:
        return self.config.front.root_path if request.root_path is None else request.root_path

    def _openapi_json(self, request: Request) -> Response:
        """The document, its ``servers`` entry at the request's root path."""
        root = self._root(request)
        body = self._openapi.get(root)
        if body is None:
            body = json.dumps(with_root_path(self._openapi_doc, root)).encode()
            if len(self._openapi) < _MAX_ROOTS:
                self._openapi[root] = body
        return Response(200, body, [("content-type", _JSON)])

    def _docs(self) -> Response:
        return self._static("index.html")

    def _to_docs(self, request: Request) -> Response:
        """``GET /`` (and ``/docs/``): a redirect to the docs page, under the root path."""
        location = self._root(request) + "/docs"
        return Response(307, b"", [("location", location)])

    def _favicon(self) -> Response:
        return self._static("favicon.svg")

    def _static(self, name: str) -> Response:
        response = self._assets.get(name)
        if response is None:
            return error_response(404, f"no such asset: {name!r}")
        return response

    # -- calls ---------------------------------------------------------------------------

    def _timeout(self, headers: Mapping[str, str]) -> float:
        cap = self.config.front.timeout
        raw = headers.get("x-request-timeout")
        if raw is None:
            return cap
        try:
            value = float(raw)
        except ValueError:
            value = math.nan
        if not (value > 0 and math.isfinite(value)):
            raise LocalProtocolError(
                f"X-Request-Timeout must be a positive number of seconds, got {raw!r}"
            )
        return min(value, cap)

    async def _rpc(self, request: Request, info: ServiceInfo, method: MethodInfo) -> Response:
        if self._saturated(info.name):
            return self._shed  # the cheapest refusal: nothing parsed, nothing sent
        ctype = request.headers.get("content-type", "")
        # No body and no type is a call with no arguments (the schema's body is optional).
        untyped_empty = not ctype and not request.body
        if ctype.split(";", 1)[0].strip().lower() != _JSON and not untyped_empty:
            return error_response(415, f"content-type must be {_JSON}, got {ctype or 'none'!r}")
        too_large = self.body_too_large(len(request.body))
        if too_large is not None:
            return too_large
        try:
            timeout = self._timeout(request.headers)
            payload = parse_json(request.body) if request.body.strip() else {}
            args = args_from_json(method, payload)
        except LocalProtocolError as exc:
            return self.error(exc)
        if self._closing:
            return error_response(503, "gateway is shutting down", self._retry_after)
        calls = self._calls
        if not calls.try_acquire():
            return error_response(
                503,
                f"overloaded: {calls.borrowed} calls in flight (max_inflight)",
                self._retry_after,
            )
        self._idle.clear()
        try:
            value = await self.caller.call(
                info.name,
                method,
                args,
                timeout=timeout,
                idempotent=f"{info.name}.{method.name}" in self.config.idempotent,
            )
        except Exception as exc:
            return self._call_error(info, method, exc)
        finally:
            calls.release()
            if not calls.borrowed:
                self._idle.set()
        if method.oneway:
            return Response(202, b'{"result":null}', [("content-type", _JSON)])
        result = method.result_cls()
        if not method.returns_void:
            result.success = value
        try:
            outcome = result_to_json(method, result)
        except OffloopError as exc:
            return self.error(exc, f"{info.name}.{method.name}")
        return json_response(200, {"result": outcome.value})

    def _call_error(self, info: ServiceInfo, method: MethodInfo, exc: Exception) -> Response:
        where = f"{info.name}.{method.name}"
        for field_name, exc_cls in method.exceptions:
            if isinstance(exc, exc_cls):
                result = method.result_cls()
                setattr(result, field_name, exc)
                name = type(exc).__name__
                try:
                    outcome = result_to_json(method, result)
                except OffloopError as json_exc:  # the backend's exception, not shown as JSON
                    return self.error(json_exc, f"{where}: {name} from the backend")
                status = self.config.exception_status.get(name, 422)
                return error_response(
                    status,
                    f"{where} raised {name}",
                    type=name,
                    fields=outcome.value,
                )
        return self.error(exc, where)
