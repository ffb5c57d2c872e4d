"""The gateway behind Tornado, the classic single-threaded server.

Same core as the ASGI app. The body limit is enforced while streaming the body in, so that an
oversized request gets a 413 (Tornado's own ``max_body_size`` just drops the connection).
"""

from __future__ import annotations

import asyncio
from typing import Any

import tornado.httpserver
import tornado.web

from offloop.gateway.core import Gateway, Request, Response, error_response

__all__ = ["make_application", "make_server"]


@tornado.web.stream_request_body
class _GatewayHandler(tornado.web.RequestHandler):
    gateway: Gateway

    def initialize(self, gateway: Gateway) -> None:  # type: ignore[override]
        self.gateway = gateway
        self._chunks: list[bytes] = []
        self._size = 0
        self._too_large = False
        self._task: asyncio.Task[Any] | None = None

    def set_default_headers(self) -> None:
        self.clear_header("Content-Type")
        self.clear_header("Server")

    def compute_etag(self) -> None:
        return None

    def check_xsrf_cookie(self) -> None:
        return None

    def prepare(self) -> None:
        limit = self.gateway.config.max_body
        declared = self.request.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > limit:
            self._write(error_response(413, f"body of {declared} bytes is over the limit of "
                                             f"{limit} bytes"))
            return
        self.request.connection.set_max_body_size(limit + 1)  # type: ignore[union-attr]

    def data_received(self, chunk: bytes) -> None:
        self._size += len(chunk)
        if self._size > self.gateway.config.max_body:
            self._too_large = True
            self._chunks.clear()
        elif not self._too_large:
            self._chunks.append(chunk)

    def _write(self, response: Response) -> None:
        self.set_status(response.status)
        for name, value in response.headers:
            self.set_header(name, value)
        self.finish(response.body)

    async def _serve(self) -> None:
        if self._finished:
            return
        if self._too_large:
            self._write(error_response(413, f"body is over the limit of "
                                             f"{self.gateway.config.max_body} bytes"))
            return
        request = Request(
            self.request.method or "GET",
            self.request.path,
            {k.lower(): v for k, v in self.request.headers.get_all()},
            b"".join(self._chunks),
        )
        if not self.gateway._started:
            await self.gateway.startup()
        self._task = asyncio.current_task()
        try:
            response = await self.gateway.handle(request)
        except asyncio.CancelledError:
            if self.request.connection is None or self._finished:
                return
            raise
        self._task = None
        if not self._finished:
            self._write(response)

    def on_connection_close(self) -> None:
        if self._task is not None:
            self._task.cancel()  # the client went away: free its call's slot

    get = post = put = delete = patch = head = options = _serve  # type: ignore[assignment]


def make_application(gateway: Gateway) -> tornado.web.Application:
    """A Tornado application that routes every path to the gateway core."""
    # No access log: the gateway's metrics count every request, and a log line per request
    # would cost more than the request itself.
    return tornado.web.Application(
        [(r"/.*", _GatewayHandler, {"gateway": gateway})], log_function=lambda handler: None
    )


def make_server(gateway: Gateway) -> tornado.httpserver.HTTPServer:
    """An HTTPServer for the gateway; its body limit sits just above ``max_body`` so that
    the handler, not Tornado, answers oversized bodies (with 413)."""
    return tornado.httpserver.HTTPServer(
        make_application(gateway),
        max_body_size=gateway.config.max_body + 1,
        idle_connection_timeout=60.0,
    )
