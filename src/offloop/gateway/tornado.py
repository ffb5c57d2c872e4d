"""The gateway behind Tornado, the classic single-threaded server.

Same core as the ASGI app. The body limit is enforced while streaming the body in, so that an
oversized request gets a 413 (Tornado's own ``max_body_size`` just drops the connection).
"""

from __future__ import annotations

import asyncio
from typing import Any

import tornado.httpserver
import tornado.web

from offloop.gateway.core import Gateway, Request, Response

__all__ = ["make_application", "make_server"]

#: Tornado's own body limit while a request streams in: none that a client could reach, so
#: that this handler, not Tornado, refuses a body over ``max_body`` (with 413, not 400).
_NO_LIMIT = 1 << 62


@tornado.web.stream_request_body
class _GatewayHandler(tornado.web.RequestHandler):
    gateway: Gateway

    def initialize(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self._chunks: list[bytes] = []
        self._size = 0
        self._task: asyncio.Task[Any] | None = None

    def set_default_headers(self) -> None:
        self.clear_header("Content-Type")
        self.clear_header("Server")

    def compute_etag(self) -> None:
        return None

    def check_xsrf_cookie(self) -> None:
        return None

    def prepare(self) -> None:
        declared = self.request.headers.get("Content-Length", "")
        too_large = self.gateway.body_too_large(int(declared)) if declared.isdigit() else None
        if too_large is not None:
            self._refuse_body(too_large)
            return
        # Tornado answers a chunked body over its own limit with a 400, before the handler
        # sees the chunk that crosses it; so its limit is lifted here (a declared length is
        # checked above) and data_received answers 413 as soon as the body crosses ours.
        self.request.connection.set_max_body_size(_NO_LIMIT)  # type: ignore[union-attr]

    def data_received(self, chunk: bytes) -> None:
        if self._finished:
            return  # answered already; Tornado closes the connection after the answer
        self._size += len(chunk)
        too_large = self.gateway.body_too_large(self._size)
        if too_large is not None:
            self._chunks.clear()
            self._refuse_body(too_large)
            return
        self._chunks.append(chunk)

    def _refuse_body(self, response: Response) -> None:
        # Answered before the body is read, so Tornado closes the connection afterwards; say
        # so, or a client reuses the connection and its next request is lost.
        self.set_header("Connection", "close")
        self._write(response)

    def _write(self, response: Response) -> None:
        self.set_status(response.status)
        for name, value in response.headers:
            self.set_header(name, value)
        self.finish(response.body)

    async def _serve(self) -> None:
        if self._finished:
            return
        request = Request(
            self.request.method or "GET",
            self.request.path,
            {k.lower(): v for k, v in self.request.headers.get_all()},
            b"".join(self._chunks),
        )
        if not self.gateway.started:
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
        # The base class fails the body future of a streamed request: without it, a client
        # that goes away mid-body leaves this handler waiting for the body forever.
        super().on_connection_close()
        if self._task is not None:
            self._task.cancel()  # the client went away: free its call's slot

    get = post = put = delete = patch = head = options = _serve


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
        max_body_size=gateway.config.front.max_body + 1,
        idle_connection_timeout=60.0,
    )
