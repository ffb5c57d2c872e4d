"""The gateway as an ASGI application: served by uvicorn by default, mountable in any ASGI app.

Reads the body with the ``max_body`` limit enforced while reading (a declared
``Content-Length`` over it is refused before any body is read), runs the core, and cancels
the call when the client disconnects, which frees its slot in the gateway and its backend.
Lifespan events start and stop the core; when mounted in an app that does not forward them,
the core starts on the first request.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from offloop.gateway.core import Gateway, Request, Response, error_response

__all__ = ["ASGIApp"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class _BodyTooLarge(Exception):
    pass


class ASGIApp:
    """ASGI 3 application serving a :class:`Gateway`."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

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

    async def _read_body(self, receive: Receive, limit: int) -> bytes:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise asyncio.CancelledError
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise _BodyTooLarge
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        gateway = self.gateway
        if not gateway._started:
            await gateway.startup()
        path: str = scope["path"]
        root = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root) :] or "/"
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        limit = gateway.config.max_body
        response: Response
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            response = error_response(
                413, f"body of {declared} bytes is over the limit of {limit} bytes"
            )
            await _send(send, response, close=True)
            return
        try:
            body = await self._read_body(receive, limit)
        except _BodyTooLarge:
            await _send(
                send, error_response(413, f"body is over the limit of {limit} bytes"), close=True
            )
            return
        except asyncio.CancelledError:
            return  # the client went away before sending its body
        request = Request(scope["method"], path, headers, body)
        if not path.startswith("/rpc/"):
            await _send(send, await gateway.handle(request))
            return
        task = asyncio.current_task()
        assert task is not None
        watcher = asyncio.get_running_loop().create_task(_cancel_on_disconnect(receive, task))
        try:
            response = await gateway.handle(request)
        except asyncio.CancelledError:
            if watcher.done() and not watcher.cancelled():
                return  # the client disconnected: nobody to answer
            raise
        finally:
            watcher.cancel()
        await _send(send, response)


async def _cancel_on_disconnect(receive: Receive, task: asyncio.Task[Any]) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            task.cancel()
            return


async def _send(send: Send, response: Response, *, close: bool = False) -> None:
    headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in response.headers]
    headers.append((b"content-length", str(len(response.body)).encode()))
    if close:
        headers.append((b"connection", b"close"))
    with contextlib.suppress(OSError):
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        await send({"type": "http.response.body", "body": response.body})
