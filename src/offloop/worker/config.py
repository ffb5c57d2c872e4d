"""WorkerConfig: everything a worker server needs, as nested frozen dataclasses.

The parts: where it listens (:class:`~offloop.listen.ListenConfig`), its pool
(:class:`PoolConfig`), its limits (:class:`WorkerLimits`) and its admin port
(:class:`AdminConfig`). Values that depend on others (the pool size when ``workers`` is 0, the
queue bound when ``max_queued`` is unset) are computed when read, never stored, so
``dataclasses.replace(config, pool=replace(config.pool, workers=8))`` gets a queue bound for 8.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from offloop.codec.framing import DEFAULT_MAX_FRAME_SIZE
from offloop.codec.guard import DecodeLimits
from offloop.codec.message import ProtocolName
from offloop.listen import ListenConfig
from offloop.runtime.base import check_pool_bounds
from offloop.tls import WorkerTLSConfig

__all__ = ["AdminConfig", "PoolConfig", "PoolKind", "WorkerConfig", "WorkerLimits"]

PoolKind = Literal["process", "thread"]

#: The worker's default Thrift port, Thrift's customary one.
WORKER_PORT = 9090


@dataclass(frozen=True)
class PoolConfig:
    """The pool that runs the handler.

    Attributes:
        kind: ``process`` for pure-Python CPU work, ``thread`` for work that releases the
            GIL (numpy, torch, I/O).
        workers: pool size; 0 for one per core.
        nice: niceness added to pool processes and threads (0 to 19).
        sched_idle: process pool: run pool processes under Linux's ``SCHED_IDLE`` policy
            instead of ``nice`` (once their handler is built): they get a core only when the
            worker's loop (and anything else on the host at a normal policy) does not want
            it, and give it up the moment it does. Stronger than nice 19; a pool on a host
            busy with other work may starve. Not for the thread pool: its threads share the
            GIL with the loop, which would wait on a thread the kernel starves.
        batching: whether calls of ``@batched`` handler methods are merged into batches;
            when off, each call is a batch of one.
        early_kills_per_minute: process pool: how often a child may be killed (and
            restarted) for a call its caller gave up before ``call_timeout`` (a shorter
            deadline, a cancellation), in a burst of ``workers``; past it such a call runs
            on, unread, until ``call_timeout``. A call past ``call_timeout`` is always killed.
    """

    kind: PoolKind = field(default="process", metadata={"flag": "pool"})
    workers: int = 0
    nice: int = 10
    sched_idle: bool = False
    batching: bool = True
    early_kills_per_minute: float = 6.0

    def __post_init__(self) -> None:
        if self.kind not in ("process", "thread"):
            raise ValueError(f"pool must be 'process' or 'thread', not {self.kind!r}")
        if self.workers < 0:
            raise ValueError("workers must be >= 0 (0: one per core)")
        if not 0 <= self.nice <= 19:
            raise ValueError("nice must be between 0 and 19")
        if self.sched_idle and self.kind == "thread":
            raise ValueError(
                "sched_idle is for the process pool: thread-pool threads share the GIL with "
                "the worker's loop, which would wait on a thread the kernel starves"
            )
        if not 0 <= self.early_kills_per_minute <= 60_000:
            raise ValueError("early_kills_per_minute must be between 0 and 60000")

    @property
    def size(self) -> int:
        """Workers in the pool: ``workers``, or the number of cores when it is 0."""
        return self.workers or os.cpu_count() or 1


@dataclass(frozen=True)
class WorkerLimits:
    """What bounds a worker's resources.

    Attributes:
        max_frame_size: largest frame accepted, in bytes; a larger one closes the connection.
        max_queued: calls that may wait for a pool worker beyond those running; unset for
            four per worker. A call that finds the queue full is answered at once with
            ``overloaded``.
        call_timeout: seconds a call may run; a process-pool call past it is killed.
        max_connections: connections served at once; more are closed on accept.
        decode: what one call may cost to decode beyond its length (nesting depth,
            container elements); see docs/limits.md.
        frame_timeout: seconds a frame may take to arrive whole, from its first byte; a
            connection still short of the rest then is closed. Not counted while the worker
            itself holds the connection back (max_calls_per_connection).
        max_partial_bytes: bytes of frames not yet whole that all connections together may
            hold; past it, the connections whose partial frame began longest ago are closed.
            Unset for eight frames of max_frame_size (below one, a larger frame arriving in
            several reads cannot be received).
        max_calls_per_connection: calls one connection may have in progress (running,
            queued, waiting in a batch, or their reply not yet written); at the bound the
            worker stops reading it, so the rest wait in the kernel's buffers. Unset for the
            larger of workers and a quarter of workers + max_queued (see docs/worker.md).
    """

    max_frame_size: int = DEFAULT_MAX_FRAME_SIZE
    max_queued: int | None = None
    call_timeout: float = 30.0
    max_connections: int = 10_000
    decode: DecodeLimits = field(default_factory=DecodeLimits, metadata={"prefix": "decode-"})
    frame_timeout: float = 10.0
    max_partial_bytes: int | None = None
    max_calls_per_connection: int | None = None

    def __post_init__(self) -> None:
        if not 0 < self.max_frame_size <= 1 << 30:
            raise ValueError("max_frame_size must be between 1 byte and 1 GiB")
        if self.max_queued is not None and self.max_queued < 0:
            raise ValueError("max_queued must be >= 0")
        if not self.call_timeout > 0:
            raise ValueError("call_timeout must be positive")
        if self.max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        if not self.frame_timeout > 0:
            raise ValueError("frame_timeout must be positive")
        if self.max_partial_bytes is not None and self.max_partial_bytes < 1:
            raise ValueError("max_partial_bytes must be at least 1")
        if self.max_calls_per_connection is not None and self.max_calls_per_connection < 1:
            raise ValueError("max_calls_per_connection must be at least 1")


@dataclass(frozen=True)
class AdminConfig:
    """The admin HTTP port (``/livez``, ``/readyz``, ``/healthz``, ``/metrics``).

    Attributes:
        host: address of the admin port.
        port: its TCP port; unset for no admin port, 0 for a free one.
        tls: serve it over TLS with the Thrift port's certificate (``tls_cert``), without
            asking for client certificates (probes and scrapers present none).
    """

    host: str = "127.0.0.1"
    port: int | None = None
    tls: bool = False

    def __post_init__(self) -> None:
        if self.port is not None and not 0 <= self.port <= 65535:
            raise ValueError("admin port must be between 0 and 65535")


@dataclass(frozen=True)
class WorkerConfig:
    """Configuration of one worker server (``offloop worker``).

    Attributes:
        idl: path of the ``.thrift`` file.
        service: the service of the IDL the handler implements (with ``services``, the
            first of several).
        handler: ``package.module:Name`` of the handler of ``service`` (and of the
            ``services`` named without one); a class is instantiated with no arguments once
            per pool process (process pool) or once (thread pool). A handler object can be
            given to :class:`~offloop.worker.server.WorkerServer` instead.
        protocol: ``binary`` (default) or ``compact``, over framed transport.
        app_dir: the directory the handler's module is imported from, put first on the
            import path of the worker and of its pool processes (as uvicorn's ``--app-dir``);
            the current directory by default, empty for the import path as it is.
        grace: seconds in-flight calls get to finish on shutdown.
        drain_delay: seconds the worker keeps serving after SIGTERM, with ``/readyz``
            failing, before it stops accepting and drains within ``grace``: time for load
            balancers and DNS to stop sending it calls. SIGINT (Ctrl-C) skips it.
        listen: where the Thrift port listens.
        pool: the pool that runs the handler.
        limits: what bounds the worker's resources.
        admin: the admin HTTP port.
        tls: TLS on the Thrift port (mutual TLS with ``tls_client_ca``); see
            docs/security.md.
        trust_principal: take the ``offloop-principal`` header of calls (who the gateway
            authenticated) even though the Thrift port does not require mutual TLS; with
            ``tls_client_ca`` set it is always taken, otherwise (the default) ignored and
            handlers see no principal, as any client that reaches the port could send one.
        services: more services of the IDL served on the same port, each by its own
            handler: service name -> ``package.module:Name`` (empty: ``handler``). Calls
            name a method ``method`` when one service has it, or ``Service:method`` (Apache's
            ``TMultiplexedProtocol``); see docs/worker.md.
    """

    idl: str
    service: str
    handler: str = ""
    protocol: ProtocolName = "binary"
    app_dir: str = "."
    grace: float = 10.0
    drain_delay: float = 5.0
    listen: ListenConfig = field(
        default_factory=lambda: ListenConfig(port=WORKER_PORT, backlog=1024)
    )
    pool: PoolConfig = field(default_factory=PoolConfig)
    limits: WorkerLimits = field(default_factory=WorkerLimits)
    admin: AdminConfig = field(default_factory=AdminConfig, metadata={"prefix": "admin-"})
    tls: WorkerTLSConfig = field(default_factory=WorkerTLSConfig, metadata={"prefix": "tls-"})
    trust_principal: bool = False
    services: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.service:
            raise ValueError("service must name a service of the IDL")
        if self.service in self.services:
            raise ValueError(f"service {self.service} is given twice")
        if self.protocol not in ("binary", "compact"):
            raise ValueError(f"protocol must be 'binary' or 'compact', not {self.protocol!r}")
        if self.grace < 0:
            raise ValueError("grace must be >= 0")
        if self.drain_delay < 0:
            raise ValueError("drain_delay must be >= 0")

    @property
    def handlers(self) -> dict[str, str]:
        """Every service served, in order, with its handler's ``package.module:Name``
        (empty where none is named: a handler object is given instead)."""
        return {self.service: self.handler} | {
            name: spec or self.handler for name, spec in self.services.items()
        }

    @property
    def trusts_principal(self) -> bool:
        """Whether calls' ``offloop-principal`` header is believed: ``trust_principal``, or a
        Thrift port that requires mutual TLS (``tls.client_ca``)."""
        return self.trust_principal or bool(self.tls.cert and self.tls.client_ca)

    @property
    def workers(self) -> int:
        """The pool's size (see :attr:`PoolConfig.size`)."""
        return self.pool.size

    @property
    def max_queued(self) -> int:
        """The queue bound: ``limits.max_queued``, or four per worker when unset."""
        return check_pool_bounds(self.workers, self.limits.max_queued)
