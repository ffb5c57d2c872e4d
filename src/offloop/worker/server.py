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
connections by ``max_connections``. Each connection, by what it may make the worker hold:

- *Calls in progress* (a task each, from its frame's arrival until its reply is written) by
  ``max_calls_per_connection``. At the bound the connection stops being read; frames
  already read wait (at most one read's worth) and the rest of its backlog stays in the
  kernel's socket buffers, not in this process. A pipelining client thereby
  holds at most its share of the pool's admission, and others keep theirs.
- *A frame not yet whole* by ``frame_timeout`` from its first byte (the connection is closed,
  one log line, ``protocol_errors{reason="frame_timeout"}``), and all connections' such
  bytes together by ``max_partial_bytes`` (past it the connections whose partial frame began
  longest ago are closed: a slow sender, not one at network speed). While the worker holds a
  connection back at its call bound, its frame clock stops: the wait is the worker's doing.
- *Replies not read*: a client that does not read its replies stops being read and its
  frames already read are not dispatched (transport flow control), so its replies are
  bounded by its calls in progress.

A connection's reading state is one decision (:meth:`_Connection._update_reading`): read
unless it is at its call bound or its client is not reading replies.
"""

from __future__ import annotations

import asyncio
import collections
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
from offloop.worker.metrics import ConnectionStats, WorkerMetrics

__all__ = ["CONNECTION_SHARE", "PARTIAL_FRAMES", "WorkerServer", "build_pool"]

log = logging.getLogger("offloop.worker")

#: By default one connection may hold at most 1/CONNECTION_SHARE of the pool's admission
#: slots: 4 is the connections per backend of offloop's gateway (``pool_size``), so one
#: gateway alone can still fill the pool, while one connection alone leaves 3/4 of it to
#: others.
CONNECTION_SHARE = 4
#: By default all connections together may hold this many frames of ``max_frame_size``
#: that are not yet whole: a few large calls arriving at once fit; a crowd of idle partial
#: frames (32 of 16 MiB held 512 MiB) does not.
PARTIAL_FRAMES = 8


def default_calls_per_connection(workers: int, max_queued: int) -> int:
    """The default of ``max_calls_per_connection``: a share of the pool's admission
    (:data:`CONNECTION_SHARE`), and at least ``workers`` so that one client pipelining
    calls alone keeps every worker busy."""
    return max(workers, -(-(workers + max_queued) // CONNECTION_SHARE))


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
    """One client connection: frames in, replies out (in completion order).

    Whole frames are taken out of the decoder as soon as they are read, and dispatched while
    the connection has fewer than the server's ``calls_per_connection`` calls in progress
    and its client reads its replies. At the call bound the connection is *throttled*, the
    worker's doing; when its client does not read replies, the client's. Either way it is not
    read, and the frames already read wait (at most what one read brought). What the decoder
    still holds is then exactly one partial frame, which the server times and bounds
    (:meth:`WorkerServer._account`).
    """

    def __init__(self, server: WorkerServer) -> None:
        self._server = server
        self._decoder = FrameDecoder(server.config.limits.max_frame_size)
        self._pending: collections.deque[bytes] = collections.deque()
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        #: Calls of this connection in progress: dispatched, reply not yet written.
        self.in_flight = 0
        #: Bytes of the partial frame the decoder holds, as counted in the server's total.
        self.partial = 0
        #: Loop time the partial frame began arriving; None while none is timed.
        self.partial_since: float | None = None
        #: At its call bound: the worker, not the client, holds it back.
        self.throttled = False
        self.timer: asyncio.TimerHandle | None = None
        #: Its client does not read its replies: the client holds it back.
        self.writes_paused = False
        self._reading = True

    @property
    def closing(self) -> bool:
        return self.transport is None or self.transport.is_closing()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but quack alike.
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self._server._connection_made(self)

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return  # closed by us a moment ago: what still arrives is dropped
        try:
            self._decoder.feed(data)
        except FrameError as exc:
            self._server._protocol_error(self, type(exc).__name__, str(exc))
            return
        self.pump()

    def pump(self) -> None:
        """Take the whole frames read out of the decoder, dispatch those the call bound
        allows, then account for what is held and decide whether to read on."""
        server = self._server
        error: FrameError | None = None
        completed = False
        try:
            for frame in self._decoder.frames():
                self._pending.append(frame)
                completed = True
        except FrameError as exc:
            error = exc  # after the frames before it, as they came
        bound = server.calls_per_connection
        while self._pending and not self.writes_paused:
            if self.in_flight < bound:
                server._on_frame(self, self._pending.popleft())
            elif server.admission_full():
                # Past its share while the pool has no room for anyone: refused at once,
                # without a slot, as any call to a full pool is, so that clients (a gateway
                # learning a backend's capacity) hear "overloaded" instead of waiting unread.
                server._on_frame(self, self._pending.popleft(), refuse=True)
            else:
                break  # past its share while others may use the room: wait, unread
            if self.closing:
                return  # closed for an earlier frame of this read: one error, one log line
        if error is not None:
            server._protocol_error(self, type(error).__name__, str(error))
            return
        throttled = self.in_flight >= bound
        if throttled and not self.throttled:
            server.metrics.throttles.inc()
        self.throttled = throttled
        server._account(self, self._decoder.buffered, completed)
        self._update_reading()

    def call_done(self) -> None:
        """One call of this connection finished and its reply, if any, is written."""
        self.in_flight -= 1
        if (self.throttled or self._pending) and not self.closing:
            self.pump()

    def _update_reading(self) -> None:
        want = not (self.throttled or self.writes_paused)
        if want == self._reading or self.closing:
            return
        self._reading = want
        assert self.transport is not None
        if want:
            self.transport.resume_reading()  # an in-memory transport may deliver right here
        else:
            self.transport.pause_reading()

    def eof_received(self) -> bool:
        try:
            self._decoder.close()
        except FrameError as exc:
            self._server._protocol_error(self, type(exc).__name__, str(exc))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._server._account(self, 0, False)
        self._server._connection_lost(self)

    def pause_writing(self) -> None:
        # The client is not reading its replies: dispatch and read nothing more until it
        # does. Its frame clock keeps running: that wait is the client's doing.
        self.writes_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self.writes_paused = False
        if not self.closing:
            self.pump()

    def send(self, message: bytes) -> None:
        if not self.closing:
            assert self.transport is not None
            self.transport.write(encode_frame(message))

    def close(self) -> None:
        """Close the connection and let go of the frames it holds. Replies already written
        are sent first, unless the client is not reading them: then the connection is
        aborted, or it and its replies would stay until the client reads."""
        if self.transport is not None:
            if self.writes_paused:
                self.transport.abort()
            else:
                self.transport.close()
        self._decoder = FrameDecoder(self._server.config.limits.max_frame_size)
        self._pending.clear()
        self._server._account(self, 0, False)


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
        limits = config.limits
        #: Calls one connection may have in progress before it stops being read.
        self.calls_per_connection = limits.max_calls_per_connection or (
            default_calls_per_connection(config.workers, config.max_queued)
        )
        #: Bytes of partial frames all connections together may hold.
        self.max_partial_bytes = limits.max_partial_bytes or (
            PARTIAL_FRAMES * limits.max_frame_size
        )
        self.metrics = WorkerMetrics(self.pool.stats, connections=self._connection_stats)
        self._codec = MessageCodec(config.protocol, config.limits.decode)
        self._connections: set[_Connection] = set()
        self._partial_bytes = 0
        # Connections holding a timed partial frame, the one that began longest ago first
        # (dicts keep insertion order; a connection re-enters at the end for a new frame).
        self._timed: dict[_Connection, None] = {}
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

    def _connection_stats(self) -> ConnectionStats:
        return ConnectionStats(
            partial_bytes=self._partial_bytes,
            throttled=sum(1 for c in self._connections if c.throttled),
        )

    # -- partial frames ------------------------------------------------------------------

    def _account(self, conn: _Connection, partial: int, completed: bool) -> None:
        """Account for the ``partial`` bytes of a frame not yet whole that ``conn`` holds
        now, after a read that ``completed`` a frame or not; time that frame; shed partial
        frames over the bound.

        A partial frame is timed from the read that brought its first byte (the one that
        completed the frame before it, or the first after none was held), except while the
        worker throttles the connection: then the clock stops, and starts afresh when the
        connection is read again.
        """
        grew = partial > conn.partial
        self._partial_bytes += partial - conn.partial
        conn.partial = partial
        if conn.closing:
            conn.partial_since = None
            self._timed.pop(conn, None)
            if conn.timer is not None:
                conn.timer.cancel()
                conn.timer = None
        elif partial == 0 or conn.throttled:
            conn.partial_since = None  # its timer, if any, finds nothing to do when it fires
            self._timed.pop(conn, None)
        elif completed or conn.partial_since is None:
            loop = asyncio.get_running_loop()
            conn.partial_since = loop.time()
            self._timed.pop(conn, None)
            self._timed[conn] = None
            if conn.timer is None:
                timeout = self.config.limits.frame_timeout
                conn.timer = loop.call_later(timeout, self._frame_clock, conn)
        if grew and self._partial_bytes > self.max_partial_bytes:
            self._shed()

    def _frame_clock(self, conn: _Connection) -> None:
        """``conn``'s frame timer fired: close it if its partial frame is overdue, else
        wait for what is left of the frame's time (one timer per connection, re-armed at
        most once per frame_timeout, whatever the read rate)."""
        conn.timer = None
        if conn.partial_since is None or conn.closing:
            return
        timeout = self.config.limits.frame_timeout
        loop = asyncio.get_running_loop()
        left = conn.partial_since + timeout - loop.time()
        if left > 0:
            conn.timer = loop.call_later(left, self._frame_clock, conn)
            return
        self._protocol_error(
            conn,
            "frame_timeout",
            f"a frame did not arrive whole within {timeout:g} s of its first byte "
            f"(frame_timeout; {conn.partial} bytes of it received"
            f"{', while the client did not read its replies' if conn.writes_paused else ''})",
        )

    def _shed(self) -> None:
        """Close the connections whose partial frame began longest ago until partial frames
        are within ``max_partial_bytes``. A throttled connection is not a candidate: the
        worker holds it back, and its partial frame came in the read that throttled it."""
        loop = asyncio.get_running_loop()
        while self._partial_bytes > self.max_partial_bytes and self._timed:
            conn = next(iter(self._timed))
            age = loop.time() - (conn.partial_since or loop.time())
            log.warning(
                "closing connection from %s: partial frames of all connections hold %d bytes, "
                "over max_partial_bytes (%d); its frame began longest ago (%.3g s, %d bytes)",
                conn.peer,
                self._partial_bytes,
                self.max_partial_bytes,
                age,
                conn.partial,
            )
            self.metrics.connections_shed.labels("partial_bytes").inc()
            conn.close()

    # -- calls ---------------------------------------------------------------------------

    def admission_full(self) -> bool:
        """Whether the pool would refuse a call now (every worker busy, the queue full)."""
        admission = self.pool.stats().admission
        return admission is not None and admission.borrowed >= admission.limit

    def _on_frame(self, conn: _Connection, frame: bytes, *, refuse: bool = False) -> None:
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
        if refuse:
            self.metrics.observe(header.name, "overloaded", time.perf_counter() - started)
            if header.type == CALL:
                conn.send(
                    self._codec.fault(
                        header.name,
                        header.seqid,
                        FaultKind.OVERLOADED,
                        f"the pool is full and this connection holds its share "
                        f"({self.calls_per_connection} calls)",
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
            self.metrics.observe(header.name, outcome, time.perf_counter() - started)
            if reply is not None and header.type == CALL:
                conn.send(reply)
        finally:
            conn.call_done()  # may dispatch this connection's next frame

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
