"""The gateway behind Tornado, the classic single-threaded server.

Same core as the ASGI app. The body limit is enforced while streaming the body in, so that an
oversized request gets a 413 (Tornado's own ``max_body_size`` just drops the connection).

The front's limits (``FrontConfig``) hold as on uvicorn, with the same answers:

- Each accepted socket is wrapped in :class:`_GuardedStream`, which reports the connection's
  phase to the :class:`~offloop.gateway.connections.FrontGuard` (cap, idle and slow
  connections), answers 431 (or 414) where Tornado would drop a head over
  ``max_header_bytes`` without a word, counts a chunked body's chunks (413 over
  ``max_body_chunks``: Tornado spends about a microsecond of CPU on each), and gives Tornado's
  bare ``400 Bad Request`` the JSON error body.
- A delegate in front of the application refuses a request target over ``max_url_bytes``
  (414) and more than ``max_header_count`` header fields (431) before any handler runs.
- Errors Tornado raises itself (405 for a method it does not route, 500 for a handler that
  failed) get the JSON error body, and 405 its ``Allow``, from the core.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import sys
from collections.abc import Awaitable
from typing import Any

import tornado.httpserver
import tornado.httputil
import tornado.iostream
import tornado.web

from offloop.context import request_id_for
from offloop.gateway.connections import FrontGuard, Phase
from offloop.gateway.core import (
    Gateway,
    Request,
    Response,
    error_response,
    strip_root,
    with_request_id,
)

__all__ = ["make_application", "make_server"]

#: Tornado's own body limit while a request streams in: none that a client could reach, so
#: that this handler, not Tornado, refuses a body over ``max_body`` (with 413, not 400).
_NO_LIMIT = 1 << 62
#: What Tornado's HTTP1Connection writes for any malformed request (then it closes).
_TORNADO_400 = b"HTTP/1.1 400 Bad Request\r\n\r\n"


class _GuardedStream(tornado.iostream.IOStream):
    """An IOStream that keeps the :class:`FrontGuard` informed and enforces its limits.

    It sees what Tornado's HTTP1Connection does on a server connection: each request head is
    one ``read_until_regex`` (with ``max_header_size``), each chunk of a chunked body one
    ``read_until`` of its size line; bytes come in through ``read_from_fd``.
    """

    def __init__(self, sock: socket.socket, guard: FrontGuard, **kwargs: Any) -> None:
        super().__init__(sock, **kwargs)
        self._guard = guard
        self._phase = Phase.IDLE
        self._in_head = False
        self._line_done = False  # the request line of the head being read has ended
        self._chunks = 0
        self._answered = False  # something was written for the current request

    def abort(self, response: bytes | None) -> None:
        """Close now; write ``response`` first unless something is being written."""
        if self.closed():
            return
        if response is not None and not self._answered and not self.writing():
            with contextlib.suppress(OSError):
                self.socket.send(response)  # small: the socket buffer takes it at once
        self.close()

    def _move(self, phase: Phase) -> None:
        if phase is not self._phase:
            self._phase = phase
            self._guard.move(self, phase)

    def busy(self) -> None:
        """The request is read; the application is answering it."""
        self._move(Phase.BUSY)

    # -- what HTTP1Connection calls ------------------------------------------------------

    def read_until_regex(self, regex: bytes, max_bytes: int | None = None) -> Awaitable[bytes]:
        # The head of the next request: the connection is idle until its first byte.
        self._in_head = True
        self._line_done = False
        self._chunks = 0
        self._answered = False
        self._move(Phase.IDLE)
        future = super().read_until_regex(regex, max_bytes)
        if isinstance(future, asyncio.Future):
            future.add_done_callback(self._head_read)
        return future

    def _head_read(self, future: asyncio.Future[bytes]) -> None:
        if not future.cancelled() and future.exception() is None:
            self._in_head = False
            self._move(Phase.BODY)

    def read_until(self, delimiter: bytes, max_bytes: int | None = None) -> Awaitable[bytes]:
        # On a server connection, only a chunked body's size lines are read so.
        self._chunks += 1
        limit = self._guard.front.max_body_chunks
        if self._chunks > limit + 1:  # the last chunk, of size 0, is free
            message = f"request body in more than {limit} chunks (max_body_chunks)"
            self.abort(self._guard.refusal(413, message))
        return super().read_until(delimiter, max_bytes)  # closed: raises StreamClosedError

    def read_from_fd(self, buf: bytearray | memoryview) -> int | None:
        n = super().read_from_fd(buf)
        if n and self._in_head:
            if self._phase is Phase.IDLE:
                self._move(Phase.HEAD)
            if not self._line_done:
                if isinstance(buf, bytearray):
                    self._line_done = buf.find(b"\n", 0, n) >= 0
                else:
                    with buf[:n] as view:  # released at once: Tornado resizes its buffer
                        self._line_done = b"\n" in view.tobytes()
        return n

    def write(self, data: bytes | memoryview) -> asyncio.Future[None]:
        if data == _TORNADO_400:
            data = self._guard.refusal(400, "malformed HTTP request")
        if bytes(data[:13]) != b"HTTP/1.1 100 ":  # "Continue" answers nothing yet
            self._answered = True
        return super().write(data)

    def close(self, exc_info: Any = False) -> None:
        if not self.closed():
            self._guard.closed(self)
            error = exc_info
            if error is True:
                error = sys.exc_info()[1]
            elif isinstance(error, tuple):
                error = error[1]
            if isinstance(error, tornado.iostream.UnsatisfiableReadError):
                self.abort(self._unsatisfiable())
                return  # abort closed it, with this very method
        super().close(exc_info)

    def _unsatisfiable(self) -> bytes:
        """The answer to a read Tornado gives up: a head, or a chunk-size line, too long."""
        front = self._guard.front
        if not self._in_head:
            return self._guard.refusal(400, "malformed chunked body: a chunk-size line too long")
        if not self._line_done and front.max_url_bytes < front.max_header_bytes:
            limit = front.max_url_bytes
            return self._guard.refusal(414, f"request target over {limit} bytes (max_url_bytes)")
        limit = front.max_header_bytes
        return self._guard.refusal(431, f"request head over {limit} bytes (max_header_bytes)")


class _HeadLimits(tornado.httputil.HTTPMessageDelegate):
    """Refuses a request whose target or header count is over its limit before the
    application sees it; passes everything else through."""

    def __init__(
        self,
        delegate: tornado.httputil.HTTPMessageDelegate,
        stream: tornado.iostream.IOStream | None,
        guard: FrontGuard,
    ) -> None:
        self._delegate = delegate
        self._stream = stream
        self._guard = guard
        self._passed = False

    def headers_received(
        self,
        start_line: tornado.httputil.RequestStartLine | tornado.httputil.ResponseStartLine,
        headers: tornado.httputil.HTTPHeaders,
    ) -> Awaitable[None] | None:
        front = self._guard.front
        refusal = None
        target = (
            start_line.path if isinstance(start_line, tornado.httputil.RequestStartLine) else ""
        )
        if len(target) > front.max_url_bytes:
            limit = front.max_url_bytes
            refusal = self._guard.refusal(414, f"request target over {limit} bytes (max_url_bytes)")
        elif sum(1 for _ in headers.get_all()) > front.max_header_count:
            limit = front.max_header_count
            refusal = self._guard.refusal(
                431, f"more than {limit} header fields (max_header_count)"
            )
        if refusal is None:
            self._passed = True
            return self._delegate.headers_received(start_line, headers)
        if isinstance(self._stream, _GuardedStream):
            self._stream.abort(refusal)
        elif self._stream is not None:
            self._stream.close()
        return None

    def data_received(self, chunk: bytes) -> Awaitable[None] | None:
        return self._delegate.data_received(chunk) if self._passed else None

    def finish(self) -> None:
        if self._passed:
            self._delegate.finish()

    def on_connection_close(self) -> None:
        if self._passed:
            self._delegate.on_connection_close()


class _GuardedSSLStream(_GuardedStream, tornado.iostream.SSLIOStream):
    """A :class:`_GuardedStream` over TLS (HTTPS on the front)."""


class _GatewayServer(tornado.httpserver.HTTPServer):
    """An HTTPServer whose connections are held to a :class:`FrontGuard` (set ``guard``)."""

    guard: FrontGuard
    #: The HTTPS context; None for plain HTTP.
    tls: ssl.SSLContext | None = None

    def handle_stream(self, stream: tornado.iostream.IOStream, address: tuple[Any, ...]) -> None:
        # The accepted socket, wrapped anew: nothing has been read or written on ``stream``
        # (over TLS, not even the handshake: it is done on the first read or write).
        # With HTTPS, the socket is wrapped here rather than by Tornado, whose SSL stream would
        # already watch the socket for its handshake.
        sock: socket.socket = stream.socket
        tls: dict[str, Any] = {}
        cls = _GuardedStream
        if self.tls is not None:
            sock = self.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
            cls, tls = _GuardedSSLStream, {"ssl_options": self.tls}
        guarded = cls(
            sock,
            self.guard,
            max_buffer_size=stream.max_buffer_size,
            read_chunk_size=stream.read_chunk_size,
            **tls,
        )
        if self.guard.opened(guarded):
            super().handle_stream(guarded, address)

    def start_request(
        self, server_conn: object, request_conn: tornado.httputil.HTTPConnection
    ) -> tornado.httputil.HTTPMessageDelegate:
        delegate = super().start_request(server_conn, request_conn)
        return _HeadLimits(delegate, getattr(request_conn, "stream", None), self.guard)


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

    def _request(self) -> Request:
        return Request(
            self.request.method or "GET",
            # Behind a proxy that keeps the prefix (front.root_path), the path loses it here.
            strip_root(self.request.path, self.gateway.config.front.root_path),
            {k.lower(): v for k, v in self.request.headers.get_all()},
            b"".join(self._chunks),
            self.request.remote_ip or "",
        )

    def _busy(self) -> None:
        stream = getattr(self.request.connection, "stream", None)
        if isinstance(stream, _GuardedStream):
            stream.busy()

    async def _serve(self) -> None:
        self._busy()
        if self._finished:
            return
        request = self._request()
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

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        # Tornado's own errors, in the gateway's format: a method it does not route (the
        # core says 405 and what is allowed, or 404), a handler that failed (logged already).
        self._busy()
        if status_code == 405:
            response = self.gateway.refuse_method(self._request())
        else:
            if status_code >= 500:
                exc = kwargs.get("exc_info", (None, None, None))[1]
                response = error_response(status_code, f"internal error ({type(exc).__name__})")
            else:
                response = error_response(status_code, self._reason)
            rid = request_id_for(self.request.headers.get("X-Request-Id"))
            response = with_request_id(response, rid)
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


def make_server(
    gateway: Gateway, guard: FrontGuard, *, tls: ssl.SSLContext | None = None
) -> tornado.httpserver.HTTPServer:
    """An HTTPServer for the gateway, its connections held to ``guard`` (which the caller
    starts and stops).

    Its body limit sits just above ``max_body`` so that the handler, not Tornado, answers
    oversized bodies (with 413). Tornado's own head and body timeouts are set to twice the
    guard's, as a backstop: the guard closes slow connections first, with a 408.
    """
    front = gateway.config.front
    server = _GatewayServer(
        make_application(gateway),
        max_body_size=front.max_body + 1,
        max_header_size=front.max_header_bytes,
        idle_connection_timeout=2 * (front.idle_timeout + front.header_timeout),
        body_timeout=2 * front.body_timeout,
    )
    server.guard = guard
    server.tls = tls
    return server
