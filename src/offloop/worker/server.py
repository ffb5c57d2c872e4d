"""The worker server: non-blocking Thrift I/O on one event loop, calls run in a pool.

Half-sync/half-async, like Java's THsHaServer: the loop accepts and reads any number of
connections, splits each byte stream into frames, reads each call's header and hands the
*call* (not the connection) to a bounded pool. Calls from one connection run at the same
time when workers are free, and each reply carries its request's seqid, so a multiplexing
client can keep many calls in flight on one connection; a plain client that sends one call at
a time still works.

How bad input is handled: a frame over the limit, an unframed message, bytes that are not a
Thrift message or a stream that ends inside a frame each close that connection with one log
line; an unknown method is answered with ``UNKNOWN_METHOD`` and the connection stays open. A
client that vanishes mid-call loses only its replies. Other clients never notice.

How resources are bounded: frames by ``max_frame_size``; calls by the pool's admission
(workers + ``max_queued``, beyond which a call is answered at once with ``overloaded``);
connections by ``max_connections``; a client that does not read its replies stops being read
(transport flow control).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from typing import Any, cast

from offloop.codec.faults import FaultKind
from offloop.codec.framing import FrameDecoder, FrameError, encode_frame
from offloop.codec.message import CALL, ONEWAY, Header, MessageCodec
from offloop.errors import ClosedError, DeadlineExceeded, Overloaded, RemoteProtocolError
from offloop.idl import ServiceInfo, load_idl, service_info
from offloop.runtime.base import JobFailed, Pool, WorkerCrashed
from offloop.runtime.processpool import ProcessPool
from offloop.runtime.threadpool import ThreadPool
from offloop.worker.admin import AdminServer
from offloop.worker.batcher import Batcher
from offloop.worker.config import WorkerConfig
from offloop.worker.dispatch import DispatcherFactory, Reply
from offloop.worker.metrics import WorkerMetrics

__all__ = ["WorkerServer", "build_pool"]

log = logging.getLogger("offloop.worker")


def build_pool(config: WorkerConfig, factory: DispatcherFactory) -> Pool:
    """The pool that ``config`` asks for, running ``factory``'s dispatcher."""
    if config.pool.kind == "thread":
        return ThreadPool(
            factory, workers=config.workers, max_queued=config.max_queued, nice=config.pool.nice
        )
    preload = ["offloop.worker.dispatch"]
    if isinstance(factory.handler, str):
        preload.append(factory.handler.partition(":")[0])
    return ProcessPool(
        factory,
        workers=config.workers,
        max_queued=config.max_queued,
        nice=config.pool.nice,
        preload=preload,
    )


class _Connection(asyncio.Protocol):
    """One client connection: frames in, replies out (in completion order)."""

    def __init__(self, server: WorkerServer) -> None:
        self._server = server
        self._decoder = FrameDecoder(server.config.limits.max_frame_size)
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self.in_flight = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but quack alike.
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self._server._connection_made(self)

    def data_received(self, data: bytes) -> None:
        try:
            self._decoder.feed(data)
            for frame in self._decoder.frames():
                if self.transport is None or self.transport.is_closing():
                    return  # closed for an earlier frame of this chunk: one error, one log line
                self._server._on_frame(self, frame)
        except FrameError as exc:
            self._server._protocol_error(self, type(exc).__name__, str(exc))

    def eof_received(self) -> bool:
        try:
            self._decoder.close()
        except FrameError as exc:
            self._server._protocol_error(self, type(exc).__name__, str(exc))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._server._connection_lost(self)

    def pause_writing(self) -> None:
        # The client is not reading its replies: stop reading its calls until it does.
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None:
            self.transport.resume_reading()

    def send(self, message: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(encode_frame(message))

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class WorkerServer:
    """A Thrift server whose calls run in a thread or process pool.

    Start it with :meth:`start` (binds, starts the pool and the admin port), stop it with
    :meth:`shutdown` (stop accepting, drain in-flight calls within the grace period, close the
    pool).

    Args:
        config: the worker's configuration.
        handler: the handler object, instead of importing ``config.handler``: any object
            with one method per IDL method (for a process pool it must pickle).
        pool: a pool to use instead of the one ``config`` describes (tests, embedding).

    Raises:
        ValueError: neither ``handler`` nor ``config.handler`` names a handler.
    """

    def __init__(
        self, config: WorkerConfig, *, handler: object | None = None, pool: Pool | None = None
    ) -> None:
        if handler is None and not config.handler:
            raise ValueError("a worker needs a handler: set handler (module:Name) or pass one")
        self.config = config
        self.service: ServiceInfo = service_info(load_idl(config.idl), config.service)
        self._factory = DispatcherFactory(
            config.idl,
            config.service,
            config.handler if handler is None else handler,
            config.protocol,
            config.pool.kind,
            config.workers,
            config.limits.decode,
        )
        self.pool: Pool = pool if pool is not None else build_pool(config, self._factory)
        self.metrics = WorkerMetrics(self.pool.stats)
        self._codec = MessageCodec(config.protocol, config.limits.decode)
        self._connections: set[_Connection] = set()
        self._calls: set[asyncio.Task[None]] = set()
        self._batchers: dict[str, Batcher] = {}
        self._server: asyncio.Server | None = None
        self._admin: AdminServer | None = None
        self._draining = False
        self.port = config.listen.port
        self.admin_port: int | None = None

    async def start(self, *, listen: bool = True) -> None:
        """Start the pool, then listen.

        Args:
            listen: whether to bind the Thrift and admin ports; without them, connections
                come only through :meth:`connection` (an in-memory transport, in tests).

        Raises:
            OffloopError, ImportError: the handler cannot start.
            OSError: a port cannot be bound.
        """
        batched = self._factory.batch_methods() if self.config.pool.batching else {}
        for name, (max_batch, max_wait) in batched.items():
            if name in self.service.methods:
                self._batchers[name] = Batcher(
                    functools.partial(self._run_batch, name),
                    max_batch=max_batch,
                    max_wait=max_wait,
                )
        await self.pool.start()
        if not listen:
            log.info("serving %s in memory", self.service.name)
            return
        loop = asyncio.get_running_loop()
        where = self.config.listen
        self._server = await loop.create_server(
            lambda: _Connection(self), where.host, where.port, backlog=where.backlog
        )
        self.port = self._server.sockets[0].getsockname()[1]
        admin = self.config.admin
        if admin.port is not None:
            self._admin = AdminServer(self.metrics.registry, self._healthy)
            self.admin_port = await self._admin.start(admin.host, admin.port)
        log.info(
            "serving %s on %s:%d (%s pool, %d workers, %s protocol)",
            self.service.name,
            where.host,
            self.port,
            self.config.pool.kind,
            self.config.workers,
            self.config.protocol,
        )

    def connection(self) -> asyncio.Protocol:
        """A new server-side connection protocol, for a transport made elsewhere (the
        in-memory pair of :mod:`offloop.testing`); listening sockets make their own."""
        return _Connection(self)

    def _healthy(self) -> bool:
        return not self._draining and self.pool.stats().alive > 0

    async def shutdown(self, grace: float | None = None) -> None:
        """Stop accepting, let in-flight calls finish within ``grace`` seconds (default the
        configured grace), then close connections, the pool and the admin port."""
        grace = self.config.grace if grace is None else grace
        self._draining = True
        if self._server is not None:
            self._server.close()
        # Forming batches leave now; their calls drain within the grace period like the rest.
        for batcher in self._batchers.values():
            batcher.flush()
        if self._calls:
            log.info("draining %d calls in flight (grace %.1f s)", len(self._calls), grace)
            _, pending = await asyncio.wait(set(self._calls), timeout=grace)
            if pending:
                log.warning("%d calls still running after the grace period", len(pending))
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
        for batcher in self._batchers.values():
            await batcher.close()  # cancels the batches of calls given up above
        for conn in list(self._connections):
            conn.close()
        await self.pool.close()
        if self._admin is not None:
            await self._admin.close()
        log.info("worker stopped")

    # -- connections ---------------------------------------------------------------------

    def _connection_made(self, conn: _Connection) -> None:
        if len(self._connections) >= self.config.limits.max_connections:
            log.warning(
                "refusing connection from %s: %d connections open (max_connections)",
                conn.peer,
                len(self._connections),
            )
            conn.close()
            return
        self._connections.add(conn)
        self.metrics.connections.set(len(self._connections))

    def _connection_lost(self, conn: _Connection) -> None:
        self._connections.discard(conn)
        self.metrics.connections.set(len(self._connections))
        if conn.in_flight:
            log.info(
                "client %s disconnected with %d calls in flight; their replies are dropped",
                conn.peer,
                conn.in_flight,
            )

    def _protocol_error(self, conn: _Connection, reason: str, message: str) -> None:
        log.warning("closing connection from %s: %s", conn.peer, message)
        self.metrics.protocol_errors.labels(reason).inc()
        conn.close()

    # -- calls ---------------------------------------------------------------------------

    def _on_frame(self, conn: _Connection, frame: bytes) -> None:
        started = time.perf_counter()
        try:
            header = self._codec.read_header(frame)
        except RemoteProtocolError as exc:
            self._protocol_error(conn, "garbage", str(exc))
            return
        if header.type not in (CALL, ONEWAY):
            self._protocol_error(
                conn, "message_type", f"expected a call, got message type {header.type}"
            )
            return
        if header.name not in self.service.methods:
            log.warning("unknown method %r called by %s", header.name, conn.peer)
            self.metrics.observe("<unknown>", "bad_request", time.perf_counter() - started)
            conn.send(
                self._codec.fault(
                    header.name,
                    header.seqid,
                    FaultKind.UNKNOWN_METHOD,
                    f"{header.name!r} is not a method of service {self.service.name}",
                )
            )
            return
        if self._draining:
            self.metrics.observe(header.name, "overloaded", time.perf_counter() - started)
            conn.send(
                self._codec.fault(
                    header.name, header.seqid, FaultKind.SHUTTING_DOWN, "the worker is draining"
                )
            )
            return
        conn.in_flight += 1
        task = asyncio.get_running_loop().create_task(
            self._serve_call(conn, header, frame, started)
        )
        self._calls.add(task)
        task.add_done_callback(self._calls.discard)

    async def _serve_call(
        self, conn: _Connection, header: Header, frame: bytes, started: float
    ) -> None:
        try:
            outcome, reply = await self._dispatch(header, frame)
        finally:
            conn.in_flight -= 1
        self.metrics.observe(header.name, outcome, time.perf_counter() - started)
        if reply is not None and header.type == CALL:
            conn.send(reply)

    async def _run_batch(self, method: str, frames: list[bytes]) -> list[Any]:
        self.metrics.batch_size.labels(method).observe(len(frames))
        return list(await self.pool.run(frames, timeout=self.config.limits.call_timeout))

    async def _dispatch(self, header: Header, frame: bytes) -> Reply:
        def fault(outcome: str, kind: FaultKind, detail: str) -> Reply:
            return outcome, self._codec.fault(header.name, header.seqid, kind, detail)

        try:
            batcher = self._batchers.get(header.name)
            if batcher is not None:
                reply: Reply = await batcher.submit(frame)
                return reply
            (reply,) = await self.pool.run([frame], timeout=self.config.limits.call_timeout)
            return reply
        except Overloaded as exc:
            return fault("overloaded", FaultKind.OVERLOADED, str(exc))
        except DeadlineExceeded as exc:
            log.warning("%s: %s", header.name, exc)
            return fault("timeout", FaultKind.DEADLINE_EXCEEDED, str(exc))
        except WorkerCrashed as exc:
            return fault("crashed", FaultKind.CRASHED, str(exc))
        except ClosedError as exc:
            return fault("overloaded", FaultKind.SHUTTING_DOWN, str(exc))
        except JobFailed as exc:  # the dispatcher itself failed: a bug, still answer the call
            log.error("%s failed in the pool: %s\n%s", header.name, exc, exc.traceback_text)
            return fault("error", FaultKind.INTERNAL, str(exc))
