"""GatewayConfig: everything the HTTP gateway needs, validated once."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

__all__ = ["GatewayConfig", "parse_backend"]

Mode = Literal["loop", "actor"]
ServerKind = Literal["uvicorn", "tornado"]


def parse_backend(text: str) -> tuple[str | None, str, int]:
    """Parse ``[Service=]host:port``.

    Raises:
        ValueError: the text is not of that form.
    """
    service, sep, addr = text.rpartition("=")
    host, colon, port = addr.rpartition(":")
    if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"backend must look like [Service=]host:port, got {text!r}")
    return (service if sep else None), host.strip("[]"), int(port)


@dataclass(frozen=True)
class GatewayConfig:
    """Configuration of the HTTP gateway (``offloop gateway``).

    Attributes:
        idl: path of the ``.thrift`` file; every method of every service becomes a route.
        backends: service name -> worker addresses; the key ``"*"`` serves every service
            that has no addresses of its own.
        services: services to expose; empty for all services of the IDL that have backends.
        host: address to listen on.
        port: HTTP port (0 picks a free one).
        server: ``uvicorn`` (default) or ``tornado``.
        mode: ``loop`` (async multiplexed clients) or ``actor`` (Pykka actors with blocking
            clients).
        max_body: largest request body, bytes; larger is 413.
        timeout: default and largest per-call deadline, seconds; ``X-Request-Timeout`` may
            lower it for one request.
        max_inflight: calls in flight in the gateway; beyond it, 503 at once.
        pool_size: connections per backend (loop mode).
        actors: actors, hence blocking connections (actor mode).
        mailbox: calls queued per actor before 503 (actor mode).
        idempotent: ``Service.method`` names that may be retried after being sent.
        exception_status: HTTP status per declared exception type name (default 422).
        grace: seconds to drain in-flight calls on shutdown.
        max_frame_size: largest Thrift reply accepted, bytes.
        watchdog: whether the loop watchdog runs.
        stall_threshold: seconds without a loop turn that count as a stall.
        retry_after: seconds advertised in ``Retry-After`` on 503 overloaded.
    """

    idl: str
    backends: Mapping[str, tuple[tuple[str, int], ...]]
    services: tuple[str, ...] = ()
    host: str = "127.0.0.1"
    port: int = 8080
    server: ServerKind = "uvicorn"
    mode: Mode = "loop"
    max_body: int = 1024 * 1024
    timeout: float = 30.0
    max_inflight: int = 1024
    pool_size: int = 4
    actors: int = 32
    mailbox: int = 4
    idempotent: frozenset[str] = frozenset()
    exception_status: Mapping[str, int] = field(default_factory=dict)
    grace: float = 10.0
    max_frame_size: int = 16 * 1024 * 1024
    watchdog: bool = True
    stall_threshold: float = 0.1
    retry_after: int = 1

    def __post_init__(self) -> None:
        if not self.backends:
            raise ValueError("at least one backend is needed (--backend host:port)")
        if self.server not in ("uvicorn", "tornado"):
            raise ValueError(f"server must be 'uvicorn' or 'tornado', not {self.server!r}")
        if self.mode not in ("loop", "actor"):
            raise ValueError(f"mode must be 'loop' or 'actor', not {self.mode!r}")
        if not 0 < self.max_body <= 1 << 30:
            raise ValueError("max_body must be between 1 byte and 1 GiB")
        if self.timeout <= 0:
            raise ValueError("timeout must be positive")
        for name in ("max_inflight", "pool_size", "actors", "mailbox", "max_frame_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.grace < 0:
            raise ValueError("grace must be >= 0")
        if self.stall_threshold <= 0:
            raise ValueError("stall_threshold must be positive")
        for name, status in self.exception_status.items():
            if not 400 <= status <= 599:
                raise ValueError(f"status for {name} must be a 4xx or 5xx code, not {status}")
        if not 0 <= self.port <= 65535:
            raise ValueError("port must be between 0 and 65535")
