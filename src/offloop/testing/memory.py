"""Gateway, clients and workers in one process, without sockets: an in-memory transport pair.

The way grpclib's ``ChannelFor`` serves a test, :class:`WorkerFor` starts a
:class:`~offloop.worker.server.WorkerServer` that binds no port and gives back a
:class:`MemoryNetwork` on which it answers at an address of its own. Anything built on the
async clients takes that network in place of TCP, so the real client, pool, balancer, gateway
core and worker run end to end with nothing on the network::

    async with WorkerFor(worker_config, handler=MyHandler()) as worker:
        gateway = build_gateway(gateway_config_for(worker.address), network=worker.network)
        await gateway.startup()
        response = await gateway.handle(Request("POST", "/rpc/Svc/ping", headers, body))

What it keeps of a real connection: bytes move in order, each ``write`` reaches the peer in a
later loop iteration (never re-entrantly), ``close`` reaches the peer as end of stream and
then ``connection_lost``, ``abort`` at once, and ``pause_reading`` holds delivery until
``resume_reading``. What it leaves out: partial reads of a write, and write-side flow control
(nothing is ever buffered but the loop's own callbacks). Actor mode's blocking clients use
real sockets and cannot run over it.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from types import TracebackType
from typing import Any

from offloop.client.network import ProtocolFactory
from offloop.worker.config import WorkerConfig
from offloop.worker.server import WorkerServer

__all__ = ["MemoryNetwork", "MemoryTransport", "WorkerFor"]

#: Host name of the in-memory addresses, so that logs say where a connection went.
MEMORY_HOST = "memory"


class MemoryTransport(asyncio.Transport):
    """One end of an in-memory connection. Make pairs with :meth:`pair`."""

    def __init__(self, loop: asyncio.AbstractEventLoop, protocol: asyncio.Protocol, name: str):
        super().__init__()
        self._loop = loop
        self._protocol = protocol
        self._name = name
        self._peer: MemoryTransport | None = None
        self._closing = False
        self._lost = False
        self._paused = False
        self._held: deque[bytes] = deque()  # delivered while reading is paused
        self._info: dict[str, Any] = {}

    @classmethod
    def pair(
        cls,
        loop: asyncio.AbstractEventLoop,
        client: asyncio.Protocol,
        server: asyncio.Protocol,
        *,
        address: tuple[str, int],
        client_port: int,
    ) -> tuple[MemoryTransport, MemoryTransport]:
        """Connect ``client`` and ``server``; both ``connection_made`` have run on return."""
        a = cls(loop, client, f"{address[0]}:{address[1]}")
        b = cls(loop, server, f"{MEMORY_HOST}:{client_port}")
        a._peer, b._peer = b, a
        a._info = {"peername": address, "sockname": (MEMORY_HOST, client_port)}
        b._info = {"peername": (MEMORY_HOST, client_port), "sockname": address}
        server.connection_made(b)
        client.connection_made(a)
        return a, b

    # -- writing ---------------------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing or self._peer is None:
            return
        self._loop.call_soon(self._peer._receive, bytes(data))

    def writelines(self, list_of_data: Any) -> None:
        self.write(b"".join(list_of_data))

    def can_write_eof(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return 0

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        return None

    # -- reading ---------------------------------------------------------------------------

    def _receive(self, data: bytes) -> None:
        if self._lost:
            return
        if self._paused:
            self._held.append(data)
            return
        self._protocol.data_received(data)

    def pause_reading(self) -> None:
        self._paused = True

    def resume_reading(self) -> None:
        if not self._paused:
            return
        self._paused = False
        while self._held and not self._paused and not self._lost:
            self._protocol.data_received(self._held.popleft())

    def is_reading(self) -> bool:
        return not self._paused

    # -- closing ---------------------------------------------------------------------------

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        """End of stream for the peer, then both ends are lost (after what was written)."""
        if self._closing:
            return
        self._closing = True
        peer = self._peer
        self._loop.call_soon(self._finish, None)
        if peer is not None:
            self._loop.call_soon(peer._peer_closed)

    def abort(self) -> None:
        """Both ends are lost at once; nothing more is delivered."""
        self._closing = True
        self._finish(None)
        if self._peer is not None:
            self._peer._closing = True
            self._peer._finish(ConnectionResetError("connection reset by peer"))

    def _peer_closed(self) -> None:
        if self._lost:
            return
        self._held.clear()
        keep_open = self._protocol.eof_received()
        if not keep_open:
            self._closing = True
            self._finish(None)

    def _finish(self, exc: Exception | None) -> None:
        if self._lost:
            return
        self._lost = True
        self._closing = True
        self._protocol.connection_lost(exc)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._info.get(name, default)

    def __repr__(self) -> str:
        state = "closing" if self._closing else "open"
        return f"<MemoryTransport to {self._name} {state}>"


class MemoryNetwork:
    """Addresses served by in-memory workers; a :class:`~offloop.client.network.Network`.

    Connecting to an address nobody serves is refused (``ConnectionRefusedError``), as on
    TCP, so health probes and retries behave as they do over a network.
    """

    def __init__(self) -> None:
        self._servers: dict[tuple[str, int], WorkerServer] = {}
        self._ports = itertools.count(1)
        self.transports: list[MemoryTransport] = []

    def serve(self, server: WorkerServer) -> tuple[str, int]:
        """Serve ``server`` at a new address; returns it."""
        address = (MEMORY_HOST, next(self._ports))
        self._servers[address] = server
        return address

    def unserve(self, address: tuple[str, int]) -> None:
        """Stop serving ``address``: new connections are refused, open ones are aborted."""
        self._servers.pop(address, None)
        for transport in list(self.transports):
            if transport.get_extra_info("peername") == address:
                transport.abort()

    async def connect(self, factory: ProtocolFactory, host: str, port: int) -> None:
        """Connect a protocol from ``factory`` to the worker at ``host:port``.

        Raises:
            ConnectionRefusedError: nothing is served at that address.
        """
        server = self._servers.get((host, port))
        if server is None:
            raise ConnectionRefusedError(f"nothing is served in memory at {host}:{port}")
        loop = asyncio.get_running_loop()
        client, _ = MemoryTransport.pair(
            loop, factory(), server.connection(), address=(host, port), client_port=0
        )
        self.transports = [t for t in self.transports if not t.is_closing()]
        self.transports.append(client)


class WorkerFor:
    """An async context manager: a worker serving in memory, and the network to reach it.

    Args:
        config: the worker's configuration (its ports are not bound).
        handler: the handler object, instead of importing ``config.handler``.
        network: serve on this network (several workers on one network), else a new one.

    Attributes:
        server: the running :class:`~offloop.worker.server.WorkerServer`.
        network: the :class:`MemoryNetwork` to hand to clients and gateways.
        address: ``(host, port)`` the worker answers at on that network.
    """

    def __init__(
        self,
        config: WorkerConfig,
        *,
        handler: object | None = None,
        network: MemoryNetwork | None = None,
    ) -> None:
        self.server = WorkerServer(config, handler=handler)
        self.network = network or MemoryNetwork()
        self.address: tuple[str, int] = ("", 0)

    async def __aenter__(self) -> WorkerFor:
        await self.server.start(listen=False)
        self.address = self.network.serve(self.server)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.network.unserve(self.address)
        await self.server.shutdown(0)
