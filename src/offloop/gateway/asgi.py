"""The gateway as an ASGI application: served by uvicorn by default, mountable in any ASGI app.

Reads the body with the ``max_body`` limit enforced while reading (a declared
``Content-Length`` over it is refused before any body is read), runs the core, and cancels
the call when the client disconnects, which frees its slot in the gateway and its backend.
Lifespan events start and stop the core; when mounted in an app that does not forward them,
the core starts on the first request, and stops only if the host enters
:meth:`ASGIApp.lifespan` (a Starlette ``lifespan=``). The path is taken relative to the
``root_path`` of the scope (a mount point), or else to the gateway's ``front.root_path``.
Every response is the core's, in its JSON error format for errors, even should the core fail.
Limits on connections and request heads are the server's:
:mod:`offloop.gateway.uvicorn_protocol` sets them for uvicorn.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any

from offloop.context import request_id_for
from offloop.gateway.core import Gateway, Request, Response, strip_root, with_request_id

__all__ = ["ASGIApp"]

log = logging.getLogger("offloop.gateway")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class _BodyTooLarge(Exception):
    def __init__(self, response: Response) -> None:
        self.response = response


class _Disconnected(Exception):
    """The client went away before it had sent its whole body."""


class ASGIApp:
    """ASGI 3 application serving a :class:`Gateway`."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self._started_lazily = False

    @contextlib.asynccontextmanager
    async def lifespan(self, app: object = None) -> AsyncIterator[None]:
        """Start the gateway; on exit, drain its calls in flight and close its connections.

        A host application does not forward its lifespan events to an app it mounts
        (Starlette's ``Mount`` does not), so a mounted gateway would start on its first
        request and never stop. Give this to the host, ``Starlette(lifespan=api.lifespan)``,
        or enter it from the host's own: ``async with api.lifespan(): yield``.

        Args:
            app: the host application (a lifespan's argument); not used.
        """
        await self.gateway.startup()
        try:
            yield
        finally:
            await self.gateway.shutdown()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)
        # websockets are not served: returning without accepting makes the server refuse.

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.gateway.startup()
                except Exception as exc:
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.gateway.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _read_body(self, receive: Receive) -> bytes:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _Disconnected
            chunk = message.get("body", b"")
            size += len(chunk)
            too_large = self.gateway.body_too_large(size)
            if too_large is not None:
                raise _BodyTooLarge(too_large)
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _answer(self, request: Request) -> Response:
        """The core's response; a 500 in the JSON error format should the core fail (the
        server's own 500 is plain text, and blames nobody)."""
        try:
            return await self.gateway.handle(request)
        except Exception as exc:
            failed = self.gateway.error(exc, f"{request.method} {request.path}")
            rid = request_id_for(request.headers.get("x-request-id"))
            return with_request_id(failed, rid)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        gateway = self.gateway
        if not gateway.started:
            if not self._started_lazily:
                self._started_lazily = True
                log.warning(
                    "the gateway starts on its first request: no lifespan event reached it (a "
                    "host app does not forward them to an app it mounts), so it stops only if "
                    "gateway.shutdown() is called; give the host lifespan=ASGIApp.lifespan"
                )
            await gateway.startup()
        # A host app's mount point (or an ASGI server's --root-path), else the gateway's own
        # front.root_path; the path keeps it by the ASGI spec, and loses it here.
        root: str = scope.get("root_path") or gateway.config.front.root_path
        path = strip_root(scope["path"], root)
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        declared = headers.get("content-length", "")
        too_large = gateway.body_too_large(int(declared)) if declared.isdigit() else None
        if too_large is not None:
            await _send(send, too_large, close=True)
            return
        try:
            body = await self._read_body(receive)
        except _BodyTooLarge as exc:
            await _send(send, exc.response, close=True)
            return
        except _Disconnected:
            return  # nobody to answer
        client = scope.get("client")
        request = Request(
            scope["method"], path, headers, body, client[0] if client else "", root_path=root
        )
        if not path.startswith("/rpc/"):
            await _send(send, await self._answer(request))
            return
        task = asyncio.current_task()
        assert task is not None
        # Most calls end within milliseconds: watching for a disconnect costs a task, so it
        # starts only once a call has run for WATCH_AFTER seconds.
        watch = _DisconnectWatch(receive, task)
        timer = asyncio.get_running_loop().call_later(WATCH_AFTER, watch.start)
        try:
            response = await self._answer(request)
        except asyncio.CancelledError:
            if watch.disconnected:
                return  # the client disconnected: nobody to answer
            raise
        finally:
            timer.cancel()
            watch.stop()
        await _send(send, response)


#: Seconds a call runs before the app starts watching for its client's disconnect: a client
#: that goes away frees its call's slot at most this much later than it could.
WATCH_AFTER = 0.02


class _DisconnectWatch:
    """Cancels ``task`` when the client disconnects; started late, stopped when done."""

    __slots__ = ("_receive", "_task", "_watcher", "disconnected")

    def __init__(self, receive: Receive, task: asyncio.Task[Any]) -> None:
        self._receive = receive
        self._task = task
        self._watcher: asyncio.Task[None] | None = None
        self.disconnected = False

    def start(self) -> None:
        self._watcher = asyncio.get_running_loop().create_task(self._watch())

    def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()

    async def _watch(self) -> None:
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                self.disconnected = True
                self._task.cancel()
                return


async def _send(send: Send, response: Response, *, close: bool = False) -> None:
    headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in response.headers]
    headers.append((b"content-length", str(len(response.body)).encode()))
    if close:
        headers.append((b"connection", b"close"))
    with contextlib.suppress(OSError):
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        await send({"type": "http.response.body", "body": response.body})
