"""uvicorn's httptools protocol, held to the front's limits (``FrontConfig``).

uvicorn's :class:`~uvicorn.protocols.http.httptools_impl.HttpToolsProtocol` bounds no request
head (httptools gathers a header value in memory until its end, whatever its size: 128 MiB of
header grew the gateway by 252 MiB), times out no connection before its first request, and
caps no connection count. :class:`GatewayHttpProtocol`:

- feeds the parser no more of a request head than ``max_header_bytes``: a longer head is
  refused with 431 as soon as it crosses the limit, and no more of it is read. (A pipelined
  request whose head starts in the same read as the end of the one before may run one read
  past it before being refused.)
- counts the request target's bytes (414 over ``max_url_bytes``), the header fields (431 over
  ``max_header_count``) and a chunked body's chunks (413 over ``max_body_chunks``);
- reports its phase (idle, head, body, busy) to the :class:`~offloop.gateway.connections.
  FrontGuard`, which caps the connections and closes idle and slow ones;
- answers malformed requests with the JSON error body (uvicorn's is plain text), and a failure
  of its own callbacks with 500 rather than blaming the client.

Each refusal closes the connection. Use :func:`protocol_class` to get the class for one guard,
and pass it as ``http=`` to :class:`uvicorn.Config`.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, ClassVar

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from offloop.gateway.connections import FrontGuard, Phase

__all__ = ["GatewayHttpProtocol", "protocol_class"]

log = logging.getLogger("offloop.gateway")


class _OneWrite:
    """A response cycle's transport: the head of its response is held until its body comes,
    so that the response is one write, one system call, not two (issue 16: uvicorn writes the
    head and the body apart). One per cycle, for a request that is not ``HEAD``: uvicorn then
    always writes the body after the head (an empty one too), and anything else done to the
    transport (close, abort, ...) writes a held head first. An interim ``100 Continue`` is
    never held."""

    __slots__ = ("_head", "_hold", "_transport")

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._head: bytes | None = None
        self._hold = True

    def write(self, data: bytes) -> None:
        if self._hold and data[9:10] != b"1":  # not "HTTP/1.1 100 Continue": the head
            self._hold = False
            self._head = data
            return
        head = self._head
        if head is not None:
            self._head = None
            data = head + data
        self._transport.write(data)

    def flush(self) -> None:
        head = self._head
        if head is not None:
            self._head = None
            self._transport.write(head)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        self.flush()
        return getattr(self._transport, name)


class _Refused(Exception):
    """Raised in a parser callback to stop parsing; the refusal is on the protocol."""


class GatewayHttpProtocol(HttpToolsProtocol):
    """:class:`HttpToolsProtocol` with the limits of the module docstring.

    ``guard`` is a class attribute: uvicorn builds protocols with its own arguments only (see
    :func:`protocol_class`).
    """

    guard: ClassVar[FrontGuard]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        front = self.guard.front
        self._max_head = front.max_header_bytes
        self._max_url = front.max_url_bytes
        self._max_fields = front.max_header_count
        self._max_chunks = front.max_body_chunks
        self._in_head = True  # waiting for, or reading, a request head
        self._in_body = False
        self._head_fed = 0  # bytes of the current head given to the parser
        self._url_bytes = 0
        self._chunks = 0
        self._refusal: bytes | None = None
        self._phase = Phase.IDLE

    # -- the connection ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.guard.opened(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.guard.closed(self)
        super().connection_lost(exc)

    def abort(self, response: bytes | None) -> None:
        """Close now; write ``response`` first unless a response is being written."""
        self.guard.closed(self)
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        cycle = self.cycle
        answering = cycle is not None and cycle.response_started and not cycle.response_complete
        if response is not None and not answering:
            transport.write(response)
        if transport.get_write_buffer_size():
            transport.abort()  # a client that does not read gets no say in when we close
        else:
            transport.close()

    def data_received(self, data: bytes) -> None:
        self._unset_keepalive_if_required()
        try:
            over = self._feed(data)
        except httptools.HttpParserUpgrade:
            # Websockets are not served: the request is answered as plain HTTP, and the
            # connection closed after it (what follows on it is not HTTP).
            if self.cycle is not None:
                self.cycle.keep_alive = False
            over = False
        except httptools.HttpParserCallbackError as exc:
            self.abort(self._refusal or self._callback_failed(exc.__context__))
            return
        except httptools.HttpParserError as exc:
            self.abort(self.guard.refusal(400, f"malformed HTTP request: {exc}"))
            return
        if over:
            self.abort(
                self.guard.refusal(
                    431, f"request head over {self._max_head} bytes (max_header_bytes)"
                )
            )
            return
        self._report()

    def _callback_failed(self, exc: BaseException | None) -> bytes:
        """The answer when a parser callback raised something other than a refusal."""
        if isinstance(exc, httptools.HttpParserError | ValueError):
            # uvicorn's own parsing of the head (a URL it cannot parse, a path not ASCII).
            return self.guard.refusal(400, f"malformed HTTP request: {exc}")
        log.error("the HTTP front failed on a request", exc_info=exc)
        return self.guard.refusal(500, "internal error in the HTTP front")

    def _feed(self, data: bytes) -> bool:
        """Feed ``data`` to the parser, no more of a head than its limit; True when a head
        has reached the limit unfinished (and the rest of ``data`` was not fed)."""
        parser = self.parser
        start, end = 0, len(data)
        while start < end:
            if not self._in_head:
                parser.feed_data(data[start:] if start else data)
                return False
            stop = min(end, start + self._max_head - self._head_fed)
            self._head_fed += stop - start
            parser.feed_data(data if stop - start == end else data[start:stop])
            start = stop
            if self._in_head and self._head_fed >= self._max_head:
                return True
        return False

    def _report(self) -> None:
        """Tell the guard what the connection is doing now."""
        if self._in_body:
            phase = Phase.BODY
        elif (self.cycle is not None and not self.cycle.response_complete) or self.pipeline:
            phase = Phase.BUSY
        elif self._in_head and self._head_fed:
            phase = Phase.HEAD
        else:
            phase = Phase.IDLE
        if phase is not self._phase:
            self._phase = phase
            self.guard.move(self, phase)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._report()

    # -- parser callbacks ----------------------------------------------------------------

    def _refuse(self, status: int, message: str) -> None:
        self._refusal = self.guard.refusal(status, message)
        raise _Refused

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._url_bytes = self._chunks = 0

    def on_url(self, url: bytes) -> None:
        self._url_bytes += len(url)
        if self._url_bytes > self._max_url:
            self._refuse(414, f"request target over {self._max_url} bytes (max_url_bytes)")
        super().on_url(url)

    def on_headers_complete(self) -> None:
        # Counted once the head is whole, not per field: the head's byte limit already
        # bounds what the fields cost to parse, and a callback per field costs every request.
        if len(self.headers) > self._max_fields:
            self._refuse(431, f"more than {self._max_fields} header fields (max_header_count)")
        self._in_head = False
        self._in_body = True
        super().on_headers_complete()
        cycle = self.cycle
        if (
            cycle is not None
            and cycle.transport is self.transport
            and cycle.scope["method"] != "HEAD"
        ):
            cycle.transport = _OneWrite(self.transport)  # type: ignore[assignment]

    def on_chunk_header(self) -> None:
        self._chunks += 1
        if self._chunks > self._max_chunks + 1:  # the last chunk, of size 0, is free
            self._refuse(
                413, f"request body in more than {self._max_chunks} chunks (max_body_chunks)"
            )

    def on_message_complete(self) -> None:
        self._in_body = False
        self._in_head = True
        self._head_fed = 0
        super().on_message_complete()


def protocol_class(guard: FrontGuard) -> type[GatewayHttpProtocol]:
    """A :class:`GatewayHttpProtocol` class bound to ``guard``, for ``uvicorn.Config(http=)``."""
    return type("GatewayHttpProtocol", (GatewayHttpProtocol,), {"guard": guard})
