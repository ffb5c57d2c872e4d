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
connections by ``max_connections``; what each connection may make the worker hold by
:mod:`offloop.worker.connection` (calls in progress, replies not read) and
:mod:`offloop.worker.partial_frames` (frames not yet whole).

**Framed or THeader, per connection.** Its first frame decides: a THeader frame
(:mod:`offloop.codec.header`, the body opens with 0x0FFF) makes it a header connection, any
other a framed one, and every reply goes back in kind. A frame of the other kind later on the
same connection closes it (``protocol_errors{reason="mixed_framing"}``), as does a header
frame we refuse (``reason="header"``). A header frame names its payload's protocol, binary or
compact, and both are served whatever ``--protocol`` says (that setting is for framed
connections, which cannot tell). Its info headers become the call's
:class:`~offloop.context.CallContext`: the request id (echoed in the reply's headers, and in
the worker's log lines about the call), the deadline (``offloop-deadline-ms``, made absolute on
arrival) and the principal. A call whose deadline has passed is answered ``deadline
exceeded`` without running (outcome ``expired``), at once if it arrived so, or when a worker
takes it if it expired while queued; one that outlives it is treated as one past
``call_timeout`` (a process-pool child is killed). The call of
:data:`~offloop.codec.call.PROBE_METHOD` (a client asking whether this server speaks THeader)
is answered at once with an ``unknown method`` fault in a header frame, not logged.

**Cancellation** (issue 13). A oneway header-frame message of
:data:`~offloop.codec.call.CANCEL_METHOD` names, by its seqid, a call of the same connection
whose client gave up (:meth:`~offloop.worker.connection.Connection.cancel`): the call's task is
cancelled, so a queued call leaves the pool's queue or its forming batch unrun, a running
process-pool call's child is replaced, and a thread-pool handler sees
:func:`offloop.cancelled`; it is not answered (outcome ``cancelled``). Cancels are served as
soon as they are read, never held back by the call bound, and a header connection at its bound
is read on while what it holds back is under :data:`HOLD_BYTES`. A header connection that
closes cancels its calls in progress the same way."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import time
from collections.abc import Mapping
from typing import Any

from offloop import tracing
from offloop.codec.call import CANCEL_METHOD, PROBE_METHOD
from offloop.codec.faults import FaultKind
from offloop.codec.message import CALL, ONEWAY, Header
from offloop.context import REQUEST_ID, CallContext
from offloop.errors import ClosedError, DeadlineExceeded, Overloaded
from offloop.idl import ServiceInfo, load_idl, service_info
from offloop.runtime.base import JobFailed, Pool, WorkerCrashed
from offloop.runtime.limiter import Limiter
from offloop.runtime.processpool import ProcessPool
from offloop.runtime.threadpool import ThreadPool
from offloop.tls import ServerTLS, TLSConfigError
from offloop.worker.admin import AdminServer, start_admin
from offloop.worker.batcher import Batcher
from offloop.worker.call_reader import CallReader
from offloop.worker.config import WorkerConfig
from offloop.worker.connection import Call, Connection, PlainConnection
from offloop.worker.dispatch import Dispatcher, DispatcherFactory, Job, Reply, Timed
from offloop.worker.handshake import TLSListener, listening_socket
from offloop.worker.health import WorkerHealth
from offloop.worker.metrics import ConnectionStats, WorkerMetrics
from offloop.worker.partial_frames import PartialFrames
from offloop.worker.services import ServiceRouter, ServicesFactory, ServiceTable, rename

__all__ = ["CONNECTION_SHARE", "PARTIAL_FRAMES", "WorkerServer", "build_pool"]

log = logging.getLogger("offloop.worker")

_NO_CONTEXT = CallContext()

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


def build_pool(config: WorkerConfig, factory: DispatcherFactory | ServicesFactory) -> Pool:
    """The pool that ``config`` asks for, running ``factory``'s dispatcher."""
    if config.pool.kind == "thread":
        return ThreadPool(
            factory,
            workers=config.workers,
            max_queued=config.max_queued,
            nice=config.pool.nice,
        )
    preload = ["offloop.worker.dispatch"]
    handlers = factory.handler if isinstance(factory, ServicesFactory) else (factory.handler,)
    preload += dict.fromkeys(h.partition(":")[0] for h in handlers if isinstance(h, str))
    return ProcessPool(
        factory,
        workers=config.workers,
        max_queued=config.max_queued,
        nice=config.pool.nice,
        sched_idle=config.pool.sched_idle,
        preload=preload,
        call_timeout=config.limits.call_timeout,
        early_kills_per_minute=config.pool.early_kills_per_minute,
    )


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
        handlers: handler objects by service name, for the services of
            ``config.services`` (and ``config.service``), instead of importing theirs.

    Raises:
        ValueError: a service has no handler (none named in ``config``, none given).
        IdlError: the IDL does not load, or lacks a service.
    """

    def __init__(
        self,
        config: WorkerConfig,
        *,
        handler: object | None = None,
        pool: Pool | None = None,
        handlers: Mapping[str, object] | None = None,
    ) -> None:
        objects = dict(handlers or {})
        if handler is not None:
            objects.setdefault(config.service, handler)
        specs: dict[str, str | object] = {
            name: objects.get(name) or spec for name, spec in config.handlers.items()
        }
        missing = [name for name, spec in specs.items() if not spec]
        if missing:
            raise ValueError(
                f"a worker needs a handler for {', '.join(missing)}: set handler "
                "(module:Name) or pass one"
            )
        self.config = config
        module = load_idl(config.idl)
        #: The services served, and what each name a call may use means.
        self.services = ServiceTable([service_info(module, name) for name in specs])
        self.service: ServiceInfo = self.services.services[config.service]
        factories = tuple(
            DispatcherFactory(
                config.idl,
                name,
                spec,
                config.protocol,
                config.pool.kind,
                config.workers,
                config.limits.decode,
                config.app_dir,
            )
            for name, spec in specs.items()
        )
        self._factories = factories
        self._factory: DispatcherFactory | ServicesFactory = (
            ServicesFactory(factories) if self.services.several else factories[0]
        )
        self.pool: Pool = pool if pool is not None else build_pool(config, self._factory)
        limits = config.limits
        #: Calls one connection may have in progress before it stops being read.
        self.calls_per_connection = limits.max_calls_per_connection or (
            default_calls_per_connection(config.workers, config.max_queued)
        )
        self.metrics = WorkerMetrics(self.pool.stats, connections=self._connection_stats)
        #: Reads each frame's call (framed or THeader, its context) off a connection.
        self.reader = CallReader(
            config.protocol,
            config.limits.decode,
            config.limits.max_frame_size,
            trust_principal=config.trusts_principal,
            protocol_error=self.protocol_error,
        )
        self._connections: set[Connection] = set()
        #: Frames not yet whole, of all connections: counted, timed and shed.
        self.partials = PartialFrames(
            limits.max_partial_bytes or PARTIAL_FRAMES * limits.max_frame_size,
            limits.frame_timeout,
            self.metrics.connections_shed,
            lambda conn, message: self.protocol_error(conn, "frame_timeout", message),
        )
        self._calls: set[asyncio.Task[None]] = set()
        self._batchers: dict[str, Batcher] = {}
        # Issue 16: async def and @inline methods run on this loop, on a handler instance of
        # this process, under an admission bound of the pool's size (see docs/worker.md).
        self._local: Dispatcher | ServiceRouter | None = None
        self._loop_methods: frozenset[str] = frozenset()  # async def ones (a task each)
        self._inline_methods: frozenset[str] = frozenset()  # @inline ones (answered in place)
        self._loop_admission = Limiter(
            config.workers + config.max_queued, name="calls on the worker's loop"
        )
        self._server: asyncio.Server | None = None
        #: The TLS port's listener and certificates, and the admin port's (tls settings).
        self._tls_listener: TLSListener | None = None
        self._tls: list[ServerTLS] = []
        self._admin: AdminServer | None = None
        self._draining = False
        #: What the admin port's probes report; the pool is wedged once it is seen stuck
        #: for twice the longest a call may run (see offloop.worker.health).
        self.health = WorkerHealth(self.pool.stats, stuck_after=2 * config.limits.call_timeout)
        self.port = config.listen.port
        self.admin_port: int | None = None

    async def start(self, *, listen: bool = True) -> None:
        """Start the pool, then listen.

        Args:
            listen: whether to bind the Thrift and admin ports; without them, connections
                come only through :meth:`connection` (an in-memory transport, in tests).

        Raises:
            OffloopError, ImportError: the handler cannot start.
            TLSConfigError: a TLS file is missing or unreadable, or its key does not match.
            OSError: a port cannot be bound.
        """
        tls = self.config.tls
        tls.check()
        if self.config.admin.tls and not tls.enabled:
            raise TLSConfigError("admin_tls needs tls_cert: the admin port uses its certificate")
        if listen and tls.enabled:
            # Read and check the certificate files before anything starts: a bad one fails
            # start-up with the file's name and nothing to clean up.
            self._tls.append(ServerTLS(tls, "worker"))
        # Batchers and loop methods by key (services.py: the method's name, or with several
        # services Service:method).
        on_loop: dict[str, str] = {}
        for factory in self._factories:
            keys = self.services.methods_of(factory.service)
            batched = factory.batch_methods() if self.config.pool.batching else {}
            for name, (max_batch, max_wait) in batched.items():
                if name in keys:
                    self._batchers[keys[name]] = Batcher(
                        functools.partial(self._run_batch, keys[name]),
                        max_batch=max_batch,
                        max_wait=max_wait,
                        slots=self.pool.workers,
                        ready=self._pool_idle,
                    )
            # Issue 16: methods that run on the loop need the handler in this process too.
            found = factory.loop_methods([m for m in keys if keys[m] not in self._batchers])
            on_loop.update((keys[name], kind) for name, kind in found.items())
        self._loop_methods = frozenset(m for m, kind in on_loop.items() if kind == "async")
        self._inline_methods = frozenset(m for m, kind in on_loop.items() if kind == "inline")
        if on_loop:
            self._local = self._factory()
        await self.pool.start()
        if not listen:
            self.health.started = True
            log.info("serving %s in memory", ", ".join(self.services.services))
            return
        try:
            await self._listen()
        except BaseException:
            # Item 20: a port that cannot be bound leaves no certificate watcher behind.
            for source in self._tls:
                source.close()
            self._tls.clear()
            raise
        self.health.started = True
        if self.config.admin.port is not None:
            self._admin, self.admin_port, admin_tls = await start_admin(
                self.config.admin, self.config.tls, self.metrics.registry, self.health
            )
            if admin_tls is not None:
                self._tls.append(admin_tls)
        where = self.config.listen
        tls_on = self.config.tls
        log.info(
            "serving %s on %s:%d (%s pool, %d workers, %s protocol%s)",
            ", ".join(self.services.services),
            where.host,
            self.port,
            self.config.pool.kind,
            self.config.workers,
            self.config.protocol,
            (", mutual TLS" if tls_on.client_ca else ", TLS") if tls_on.enabled else "",
        )

    async def _listen(self) -> None:
        """Bind the Thrift port: plain TCP, or TLS through a :class:`TLSListener` (which
        tells plaintext clients apart and answers them with a clear fault)."""
        where = self.config.listen
        tls = self.config.tls
        if not tls.enabled:
            loop = asyncio.get_running_loop()
            self._server = await loop.create_server(
                lambda: PlainConnection(self), where.host, where.port, backlog=where.backlog
            )
            self.port = self._server.sockets[0].getsockname()[1]
            return
        source = self._tls[0]  # made by start()
        sock = listening_socket(where.host, where.port, where.backlog)
        self._tls_listener = TLSListener(
            sock,
            source,
            tls,
            lambda: Connection(self),
            plaintext_reply=self.reader.plaintext_reply,
            max_frame_size=self.config.limits.max_frame_size,
            on_error=lambda reason: self.metrics.protocol_errors.labels(reason).inc(),
        )
        self._tls_listener.start()
        self.port = sock.getsockname()[1]

    def connection(self) -> asyncio.Protocol:
        """A new server-side connection protocol, for a transport made elsewhere (the
        in-memory pair of :mod:`offloop.testing`); listening sockets make their own."""
        return Connection(self)

    def begin_drain(self) -> None:
        """Fail ``/readyz`` from now on while still serving every call: the first step of a
        graceful stop, while load balancers and DNS stop sending calls here (the drain
        delay, :func:`offloop.app.signals.drain_delay`). :meth:`shutdown` then stops
        accepting and drains."""
        self.health.draining = True

    async def shutdown(self, grace: float | None = None) -> None:
        """Stop accepting, let in-flight calls finish within ``grace`` seconds (default the
        configured grace), then close connections, the pool and the admin port."""
        grace = self.config.grace if grace is None else grace
        self.health.draining = True
        self._draining = True
        if self._server is not None:
            self._server.close()
        if self._tls_listener is not None:
            await self._tls_listener.close()
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
        for source in self._tls:
            source.close()
        log.info("worker stopped")

    # -- connections ---------------------------------------------------------------------

    def add_connection(self, conn: Connection) -> None:
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

    def remove_connection(self, conn: Connection) -> None:
        self._connections.discard(conn)
        self.metrics.connections.set(len(self._connections))
        if conn.calls:
            # Issue 13: a header connection's client that goes away has given up on its calls
            # (offloop's actor-mode client resets its socket when it gives up on a call).
            log.info(
                "client %s disconnected with %d calls in progress: they are cancelled",
                conn.peer,
                len(conn.calls),
            )
            for seqid in list(conn.calls):
                conn.cancel(seqid)
        elif conn.in_flight:
            log.info(
                "client %s disconnected with %d calls in flight; their replies are dropped",
                conn.peer,
                conn.in_flight,
            )

    def protocol_error(self, conn: Connection, reason: str, message: str) -> None:
        log.warning("closing connection from %s: %s", conn.peer, message)
        self.metrics.protocol_errors.labels(reason).inc()
        conn.close()

    def _connection_stats(self) -> ConnectionStats:
        return ConnectionStats(
            partial_bytes=self.partials.total,
            throttled=sum(1 for c in self._connections if c.throttled),
        )

    # -- calls ---------------------------------------------------------------------------

    def admission_full(self) -> bool:
        """Whether the pool would refuse a call now (every worker busy, the queue full)."""
        admission = self.pool.stats().admission
        return admission is not None and admission.borrowed >= admission.limit

    def on_frame(self, conn: Connection, body: bytes, *, refuse: bool = False) -> None:
        started = time.perf_counter()
        call = self.reader.read(conn, body)
        if call is None:
            return
        header = call.header
        if header.type not in (CALL, ONEWAY):
            self.protocol_error(
                conn, "message_type", f"expected a call, got message type {header.type}"
            )
            return
        if header.name == CANCEL_METHOD and call.frame is not None and header.type == ONEWAY:
            conn.cancel(header.seqid)
            return
        route = self.services.resolve(header.name)
        if conn.early_cancels and header.seqid in conn.early_cancels:
            conn.early_cancels.discard(header.seqid)  # cancelled while it was held back
            key = "<unknown>" if route is None else route.key
            self.metrics.observe(key, "cancelled", time.perf_counter() - started)
            return
        if route is None:
            detail = self.services.unknown(header.name)
            if header.name != PROBE_METHOD or call.frame is None:
                log.warning("unknown method %r called by %s", header.name, conn.peer)
                self.metrics.observe("<unknown>", "bad_request", time.perf_counter() - started)
            if header.type == CALL:  # item 27: a oneway call is never answered
                conn.send(call.fault(FaultKind.UNKNOWN_METHOD, detail), call)
            return
        if header.name != route.key:  # several services, or Service:method (services.py)
            if not self.services.several:  # the dispatcher knows plain names only
                call.job = _renamed(call.job, route.method, self.reader.codec.protocol)
            call.header = header = Header(route.key, header.type, header.seqid)
        if self._draining:
            self.metrics.observe(header.name, "overloaded", time.perf_counter() - started)
            if header.type == CALL:  # item 27: a oneway call is never answered
                conn.send(call.fault(FaultKind.SHUTTING_DOWN, "the worker is draining"), call)
            return
        if refuse:
            self.metrics.observe(header.name, "overloaded", time.perf_counter() - started)
            if header.type == CALL:
                conn.send(
                    call.fault(
                        FaultKind.OVERLOADED,
                        f"the pool is full and this connection holds its share "
                        f"({self.calls_per_connection} calls)",
                    ),
                    call,
                )
            return
        if header.name in self._inline_methods:
            self._answer_inline(conn, call, started)
            return
        conn.in_flight += 1
        task = asyncio.get_running_loop().create_task(self._serve_call(conn, call, started))
        self._calls.add(task)
        task.add_done_callback(self._calls.discard)
        if call.frame is not None and header.type == CALL:
            conn.calls[header.seqid] = (call, task)  # issue 13: a cancel may name it

    async def _serve_call(self, conn: Connection, call: Call, started: float) -> None:
        if call.context.request_id is not None:
            REQUEST_ID.set(call.context.request_id)  # this task's own context: its log lines
        call.started = True
        trace: tracing.CallSpan | None = None
        outcome = "error"
        try:
            # Issue 13: the call's server span (offloop.tracing), continuing its client's
            # trace; made inside the try, so that a failing tracer cannot leak the call.
            trace = self._call_span(conn, call, started) if tracing.ENABLED else None
            if call.cancelled:  # cancelled before its task began
                raise asyncio.CancelledError
            outcome, reply = await self._dispatch(call, trace)
            self.metrics.observe(call.header.name, outcome, time.perf_counter() - started)
            if reply is not None and call.header.type == CALL:
                conn.send(reply, call)
        except asyncio.CancelledError:
            outcome = "cancelled"
            if not call.cancelled:
                raise
            # Issue 13: its client gave up; nobody waits for an answer.
            self.metrics.observe(call.header.name, "cancelled", time.perf_counter() - started)
        finally:
            if trace is not None:
                trace.end(outcome)
            if call.frame is not None:
                entry = conn.calls.get(call.header.seqid)
                if entry is not None and entry[0] is call:
                    del conn.calls[call.header.seqid]
            conn.call_done()  # may dispatch this connection's next frame

    def _answer_inline(self, conn: Connection, call: Call, started: float) -> None:
        """Run an ``@inline`` method's call right here, on the loop (issue 16): no task, no
        hand-off; it holds no admission slot, as it ends before anything else runs."""
        assert self._local is not None
        trace = self._call_span(conn, call, started) if tracing.ENABLED else None
        ran = time.time_ns() if trace is not None else 0
        outcome, reply = self._local.call_one(call.job)
        if trace is not None:
            trace.running(ran)
        self.metrics.observe(call.header.name, outcome, time.perf_counter() - started)
        if reply is not None and call.header.type == CALL:
            conn.send(reply, call)
        if trace is not None:
            trace.end(outcome)

    def _pool_idle(self) -> bool:
        """Whether a pool worker is idle: fewer jobs admitted than workers."""
        stats = self.pool.stats()
        if stats.admission is not None:
            return stats.admission.borrowed < stats.workers
        return stats.busy + stats.queued < stats.workers

    async def _run_on_loop(self, call: Call, timeout: float) -> Reply:
        """Run an ``async def`` method's call on this loop, as a task (issue 16)."""
        assert self._local is not None
        if not self._loop_admission.try_acquire():
            raise Overloaded(f"{self._loop_admission.limit} calls already run on the worker's loop")
        try:
            async with asyncio.timeout(timeout):
                return await self._local.call_on_loop(call.job)
        except TimeoutError:
            raise DeadlineExceeded(
                f"{call.header.name} did not finish within {timeout:.3g} s"
            ) from None
        finally:
            self._loop_admission.release()

    async def _run_batch(self, method: str, frames: list[Any]) -> list[Any]:
        self.metrics.batch_size.labels(method).observe(len(frames))
        if tracing.ENABLED or type(frames[0]) is tracing.Traced:
            return await self._run_traced_batch(method, frames)
        return list(await self.pool.run(frames, timeout=self.config.limits.call_timeout))

    # -- issue 13: trace context (offloop.tracing) -----------------------------------------

    def _rpc_names(self, name: str) -> tuple[str, str]:
        """The service and plain method a call's (or batcher's) name means, for spans."""
        route = self.services.resolve(name)
        return (self.service.name, name) if route is None else (route.service, route.method)

    def _call_span(self, conn: Connection, call: Call, started: float) -> tracing.CallSpan:
        context = call.context
        service, method = self._rpc_names(call.header.name)
        return tracing.call_span(
            service, method, context.headers, started, conn.peer, context.request_id
        )

    async def _run_traced_batch(self, method: str, items: list[Any]) -> list[Any]:
        """A batch whose calls have spans (:class:`tracing.Traced`): the batch gets a span
        of its own, linked to each call's; each call's span gets the batch's run time."""
        jobs = [i.payload if type(i) is tracing.Traced else i for i in items]
        spans = [i.span if type(i) is tracing.Traced else None for i in items]
        batch = tracing.batch_span(*self._rpc_names(method), spans)
        try:
            replies = await self.pool.run(Timed(jobs), timeout=self.config.limits.call_timeout)
        except BaseException as exc:
            batch.end(exc)
            raise
        batch.running(replies.started, replies.ended)
        for span in spans:
            if span is not None:
                span.running(replies.started, replies.ended)
        batch.end()
        return list(replies)

    async def _dispatch(self, call: Call, trace: tracing.CallSpan | None = None) -> Reply:
        header = call.header

        def fault(outcome: str, kind: FaultKind, detail: str) -> Reply:
            return outcome, call.fault(kind, detail)

        timeout = self.config.limits.call_timeout
        at = call.context.deadline
        if at is not None:
            left = at - time.monotonic()
            if left <= 0:
                return fault(
                    "expired",
                    FaultKind.DEADLINE_EXCEEDED,
                    "the call's deadline had passed when it arrived; it did not run",
                )
            timeout = min(timeout, left)
        try:
            if header.name in self._loop_methods:
                if trace is not None:
                    ran = time.time_ns()
                    try:
                        return await self._run_on_loop(call, timeout)
                    finally:
                        trace.running(ran)
                return await self._run_on_loop(call, timeout)
            batcher = self._batchers.get(header.name)
            if batcher is not None:
                job = call.job if trace is None else tracing.Traced(call.job, trace)
                reply: Reply = await batcher.submit(job)
                return reply
            if trace is not None:  # the pool says when the call started running
                replies = await self.pool.run(Timed([call.job]), timeout=timeout)
                trace.running(replies.started, replies.ended)
                (reply,) = replies
                return reply
            (reply,) = await self.pool.run([call.job], timeout=timeout)
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


def _renamed(job: Job, name: str, protocol: str) -> Job:
    """``job`` with its method renamed ``name`` (a ``Service:method`` call of a one-service
    worker, whose dispatcher knows the plain name; see :mod:`offloop.worker.services`)."""
    if isinstance(job, bytes):
        return rename(job, protocol, name)  # type: ignore[arg-type]
    return dataclasses.replace(job, message=rename(job.message, job.protocol, name))
