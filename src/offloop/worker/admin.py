"""The worker's admin port: HTTP ``GET /livez``, ``/readyz``, ``/healthz`` and ``/metrics``,
on the loop.

A deliberately tiny HTTP/1.0 responder (one request per connection, request head capped at
8 KiB, 5 s to send it): the admin port serves probes and scrapes, nothing else.

- ``/livez``: 200 while the process and its pool are alive and not wedged, else 503
  (restart me); see :mod:`offloop.worker.health`.
- ``/readyz``: 200 while the worker should get calls (set up, a pool worker alive, not
  draining), else 503 with the reason.
- ``/healthz``: an alias of ``/readyz``, as it was before the two were apart (``ok``, or 503
  while draining or with no live worker).
- ``/metrics``: Prometheus text.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ssl
from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from offloop.tls import ServerTLS, WorkerTLSConfig
from offloop.worker.config import AdminConfig
from offloop.worker.health import Verdict, WorkerHealth

__all__ = ["AdminServer"]

#: A request head larger than this is not a probe or a scrape.
MAX_HEAD = 8192
#: Seconds a client has to send its request head.
HEAD_TIMEOUT = 5.0


class AdminServer:
    """Serves ``/livez`` (``live()``), ``/readyz`` and ``/healthz`` (``ready()``): 200 while
    the verdict is ok, else 503, its reason as the body; and ``/metrics`` from ``registry``."""

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        live: Callable[[], Verdict],
        ready: Callable[[], Verdict],
    ) -> None:
        self._registry = registry
        self._probes = {"/livez": live, "/readyz": ready, "/healthz": ready}
        self._server: asyncio.Server | None = None

    async def start(
        self,
        host: str,
        port: int,
        *,
        tls: ssl.SSLContext | None = None,
        handshake_timeout: float | None = None,
    ) -> int:
        """Listen (over TLS with ``tls``, each handshake within ``handshake_timeout``);
        returns the bound port."""
        self._server = await asyncio.start_server(
            self._handle,
            host,
            port,
            limit=MAX_HEAD,
            ssl=tls,
            ssl_handshake_timeout=handshake_timeout if tls is not None else None,
        )
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT)
            method, path, _ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
        except (asyncio.LimitOverrunError, asyncio.IncompleteReadError, TimeoutError, ValueError):
            status, ctype, body = 400, "text/plain", b"bad request\n"
        else:
            status, ctype, body = self._route(method, path.split("?", 1)[0])
        reason = {
            200: "OK",
            400: "Bad Request",
            404: "Not Found",
            405: "Method Not Allowed",
            503: "Service Unavailable",
        }[status]
        writer.write(
            f"HTTP/1.0 {status} {reason}\r\nContent-Type: {ctype}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
            + body
        )
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        writer.close()

    def _route(self, method: str, path: str) -> tuple[int, str, bytes]:
        probe = self._probes.get(path)
        if probe is None and path != "/metrics":
            return 404, "text/plain", b"not found\n"
        if method != "GET":
            return 405, "text/plain", b"method not allowed\n"
        if probe is None:
            return 200, CONTENT_TYPE_LATEST, generate_latest(self._registry)
        verdict = probe()
        return (200 if verdict.ok else 503), "text/plain", verdict.reason.encode() + b"\n"


async def start_admin(
    admin: AdminConfig, tls: WorkerTLSConfig, registry: CollectorRegistry, health: WorkerHealth
) -> tuple[AdminServer, int, ServerTLS | None]:
    """Start a worker's admin port as ``admin`` says: its metrics in ``registry``, its probes
    from ``health``. With ``admin.tls`` it serves the worker's certificate (``tls``) and asks
    for no client certificate (probes and scrapers present none).

    Returns:
        The server, its port, and the certificate source it uses (to close with the worker)
        or None.
    """
    server = AdminServer(registry, live=health.live, ready=health.ready)
    if not admin.tls:
        return server, await server.start(admin.host, admin.port or 0), None
    source = ServerTLS(dataclasses.replace(tls, client_ca=None), "admin")
    try:
        port = await server.start(
            admin.host,
            admin.port or 0,
            tls=source.front_door(),
            handshake_timeout=tls.handshake_timeout,
        )
    except BaseException:
        source.close()
        raise
    return server, port, source
