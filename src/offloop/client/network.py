"""The network seam of the async clients: how a connection to ``host:port`` is opened.

Everything above this (the connection's protocol, pools, health probes) sees only an
:class:`asyncio.Protocol` and its transport, so the same code runs over TCP
(:data:`TCP`, the default), over TLS (:class:`TlsNetwork`) or over an in-memory transport pair
(:class:`offloop.testing.MemoryNetwork`), which runs client and worker in one process
without sockets. Shaped after httpcore's ``_backends`` (a tiny stream interface).
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Callable
from typing import Protocol

from offloop.tls import ClientTLS, TLSHandshakeError, describe_handshake_error

__all__ = ["TCP", "Network", "ProtocolFactory", "TcpNetwork", "TlsNetwork"]

ProtocolFactory = Callable[[], asyncio.Protocol]


class Network(Protocol):
    """Opens client connections."""

    async def connect(self, factory: ProtocolFactory, host: str, port: int) -> None:
        """Open a connection to ``host:port`` and hand it to a protocol from ``factory``
        (whose ``connection_made`` has run when this returns).

        Raises:
            OSError: the connection was refused or failed (``TimeoutError`` included).
        """


class TcpNetwork:
    """TCP with ``TCP_NODELAY`` (asyncio's default for TCP transports), via the running loop."""

    async def connect(self, factory: ProtocolFactory, host: str, port: int) -> None:
        transport, _ = await asyncio.get_running_loop().create_connection(factory, host, port)
        _no_delay(transport)


class TlsNetwork:
    """TLS over TCP: each connection takes the current context of ``tls`` (so rotated
    certificates apply to new connections) and verifies the server's certificate against
    ``tls``'s name for the host (:meth:`~offloop.tls.ClientTLS.server_name`).

    The handshake runs within the caller's connect timeout. A failed one raises
    :class:`~offloop.tls.TLSHandshakeError` (an ``OSError``), whose message says why in words:
    the certificate refused and why, no client certificate, the peer not speaking TLS.
    """

    def __init__(self, tls: ClientTLS) -> None:
        self.tls = tls

    async def connect(self, factory: ProtocolFactory, host: str, port: int) -> None:
        try:
            transport, _ = await asyncio.get_running_loop().create_connection(
                factory,
                host,
                port,
                ssl=self.tls.current(),
                server_hostname=self.tls.server_name(host),
            )
        except (ssl.SSLError, ConnectionResetError, BrokenPipeError) as exc:
            raise TLSHandshakeError(
                f"TLS handshake failed: {describe_handshake_error(exc)}"
            ) from exc
        _no_delay(transport)


def _no_delay(transport: asyncio.BaseTransport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


#: The default network.
TCP = TcpNetwork()
