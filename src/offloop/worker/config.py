"""WorkerConfig: everything a worker server needs, validated once."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

from offloop.codec.framing import DEFAULT_MAX_FRAME_SIZE
from offloop.codec.message import ProtocolName
from offloop.runtime.base import check_pool_bounds

__all__ = ["PoolKind", "WorkerConfig"]

PoolKind = Literal["process", "thread"]


@dataclass(frozen=True)
class WorkerConfig:
    """Configuration of one worker server (``offloop worker``).

    Attributes:
        idl: path of the ``.thrift`` file.
        service: the service of the IDL the handler implements.
        handler: ``package.module:Name``; a class is instantiated once per worker process
            (process pool) or once (thread pool).
        pool: ``process`` for pure-Python CPU work, ``thread`` for work that releases the GIL.
        workers: pool size; default the number of cores.
        host: address to listen on.
        port: Thrift port (0 picks a free one).
        protocol: ``binary`` (default) or ``compact``, over framed transport.
        max_frame_size: largest frame accepted, in bytes; a larger one closes the connection.
        max_queued: calls that may wait for a worker; default four per worker. A call that
            finds the queue full is answered at once with ``overloaded``.
        call_timeout: seconds a call may run; a process-pool call past it is killed.
        grace: seconds in-flight calls get to finish on shutdown.
        nice: niceness added to pool processes and threads.
        admin_host: address of the admin HTTP port.
        admin_port: HTTP port for ``/healthz`` and ``/metrics``; None for none.
        max_connections: connections served at once; more are closed on accept.
        batching: whether calls of ``@batched`` handler methods are merged into batches;
            when off, each call is a batch of one.
    """

    idl: str
    service: str
    handler: str
    pool: PoolKind = "process"
    workers: int = 0
    host: str = "127.0.0.1"
    port: int = 9090
    protocol: ProtocolName = "binary"
    max_frame_size: int = DEFAULT_MAX_FRAME_SIZE
    max_queued: int = -1
    call_timeout: float = 30.0
    grace: float = 10.0
    nice: int = 10
    admin_host: str = "127.0.0.1"
    admin_port: int | None = None
    max_connections: int = 10_000
    batching: bool = True

    def __post_init__(self) -> None:
        if self.workers == 0:
            object.__setattr__(self, "workers", os.cpu_count() or 1)
        if self.pool not in ("process", "thread"):
            raise ValueError(f"pool must be 'process' or 'thread', not {self.pool!r}")
        if self.protocol not in ("binary", "compact"):
            raise ValueError(f"protocol must be 'binary' or 'compact', not {self.protocol!r}")
        max_queued = None if self.max_queued == -1 else self.max_queued
        object.__setattr__(self, "max_queued", check_pool_bounds(self.workers, max_queued))
        if not 0 < self.max_frame_size <= 1 << 30:
            raise ValueError("max_frame_size must be between 1 byte and 1 GiB")
        if self.call_timeout <= 0:
            raise ValueError("call_timeout must be positive")
        if self.grace < 0:
            raise ValueError("grace must be >= 0")
        if not 0 <= self.nice <= 19:
            raise ValueError("nice must be between 0 and 19")
        if not 0 <= self.port <= 65535:
            raise ValueError("port must be between 0 and 65535")
        if self.admin_port is not None and not 0 <= self.admin_port <= 65535:
            raise ValueError("admin_port must be between 0 and 65535")
        if self.max_connections < 1:
            raise ValueError("max_connections must be at least 1")
