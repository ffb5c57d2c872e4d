"""GatewayConfig: everything the HTTP gateway needs, as nested frozen dataclasses.

Each part is the config of one layer: where it listens (:class:`~offloop.listen.ListenConfig`),
what its HTTP front accepts (:class:`FrontConfig`), how its clients talk to workers
(:class:`~offloop.client.config.ClientConfig`), how backends are probed
(:class:`~offloop.client.balancer.HealthConfig`), actor mode (:class:`ActorsConfig`) and the
loop watchdog (:class:`~offloop.watchdog.WatchdogConfig`). Make variants with
:func:`dataclasses.replace`; nothing derived is stored.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from offloop.client.balancer import HealthConfig
from offloop.client.config import ClientConfig
from offloop.gateway.openapi import DEFAULT_API_VERSION
from offloop.listen import ListenConfig
from offloop.watchdog import WatchdogConfig

__all__ = ["ActorsConfig", "FrontConfig", "GatewayConfig", "Mode", "ServerKind", "parse_backend"]

Mode = Literal["loop", "actor"]
ServerKind = Literal["uvicorn", "tornado"]

#: The gateway's default HTTP port.
GATEWAY_PORT = 8080


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
class FrontConfig:
    """What the HTTP front accepts, and how it refuses.

    Attributes:
        server: the HTTP server, ``uvicorn`` (ASGI, the default) or ``tornado``.
        max_body: largest request body, in bytes; a larger one is refused with 413.
        timeout: default and largest per-call deadline, seconds; ``X-Request-Timeout`` may
            lower it for one request.
        max_inflight: calls in flight in the gateway; one more is refused at once with 503.
        retry_after: seconds advertised in ``Retry-After`` when a call is refused with 503.
        max_header_bytes: largest request head (request line and header fields), in bytes;
            a larger one is refused with 431 as soon as it is crossed, before more is read.
        max_url_bytes: longest request target (path and query), in bytes; a longer one is
            refused with 414 (and a head over ``max_header_bytes`` with 431, whatever its URL).
        max_header_count: most header fields in a request; more are refused with 431.
        max_body_chunks: most chunks a chunked request body may come in; more are refused
            with 413 (each chunk costs the front a parser turn, so this bounds the CPU a body
            of 1-byte chunks can take).
        idle_timeout: seconds a client connection may stay open with no request under way (a
            new one, or a kept-alive one between requests) before it is closed. Longer than
            the 60 s idle timeout of common load balancers, so that they close first.
        header_timeout: seconds from the first byte of a request to the end of its head; a
            slower head is answered 408 and its connection closed (slowloris).
        body_timeout: seconds from the end of a request's head to the end of its body; a
            slower body is answered 408 and its connection closed.
        max_connections: client connections held open at once. At the cap, a new connection
            closes the oldest idle one (then the oldest still sending its head); with none to
            close it is answered 503. Also held to the open-files limit less ``fd_reserve``.
        fd_reserve: file descriptors kept for the gateway's own use (its backend
            connections, health probes, logs): client connections are capped at the
            open-files limit less this, so that clients cannot starve the backends.
        raise_open_files_limit: at start, raise the soft open-files limit (``ulimit -n``) to
            the hard limit.
    """

    server: ServerKind = "uvicorn"
    max_body: int = 1024 * 1024
    timeout: float = 30.0
    max_inflight: int = 1024
    retry_after: int = 1
    max_header_bytes: int = 64 * 1024
    max_url_bytes: int = 8 * 1024
    max_header_count: int = 100
    max_body_chunks: int = 16 * 1024
    idle_timeout: float = 75.0
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    max_connections: int = 10_000
    fd_reserve: int = 256
    raise_open_files_limit: bool = True

    def __post_init__(self) -> None:
        if self.server not in ("uvicorn", "tornado"):
            raise ValueError(f"server must be 'uvicorn' or 'tornado', not {self.server!r}")
        if not 0 < self.max_body <= 1 << 30:
            raise ValueError("max_body must be between 1 byte and 1 GiB")
        if not self.timeout > 0:
            raise ValueError("timeout must be positive")
        if self.max_inflight < 1:
            raise ValueError("max_inflight must be at least 1")
        if self.retry_after < 0:
            raise ValueError("retry_after must be >= 0")
        if not 1024 <= self.max_header_bytes <= 1 << 24:
            raise ValueError("max_header_bytes must be between 1 KiB and 16 MiB")
        for name in ("max_url_bytes", "max_header_count", "max_body_chunks", "max_connections"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        for name in ("idle_timeout", "header_timeout", "body_timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive")
        if self.fd_reserve < 0:
            raise ValueError("fd_reserve must be >= 0")


@dataclass(frozen=True)
class ActorsConfig:
    """Actor mode (``mode = "actor"``).

    Attributes:
        count: actors in all, hence threads and blocking connections; spread over the
            backends (at least one each).
        mailbox: calls an actor may hold queued behind the one it runs; with every actor's
            mailbox full a call is refused at once with 503.
    """

    count: int = field(default=32, metadata={"flag": "actors"})
    mailbox: int = 4

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ValueError("actors must be at least 1")
        if self.mailbox < 0:
            raise ValueError("mailbox must be >= 0")


@dataclass(frozen=True)
class GatewayConfig:
    """Configuration of the HTTP gateway (``offloop gateway``).

    Attributes:
        idl: path of the ``.thrift`` file; every method of every service becomes a route.
        backends: service name -> worker addresses; the key ``"*"`` serves every service
            that has no addresses of its own.
        services: services to expose; empty for every service of the IDL.
        mode: ``loop`` (async clients, many calls in flight per connection) or ``actor``
            (Pykka actors with blocking clients).
        idempotent: ``Service.method`` names that may be retried after being sent.
        exception_status: HTTP status per declared exception type name (default 422).
        api_title: the title of the OpenAPI document and of ``/docs``; empty for the names of
            the services (``TextLab API``).
        api_version: the version of the API the OpenAPI document gives (``info.version``).
        grace: seconds to drain calls in flight on shutdown.
        listen: where the HTTP server listens.
        front: what the HTTP front accepts.
        client: how calls reach the workers.
        health: how backends are probed.
        actors: actor mode.
        watchdog: the loop watchdog.
    """

    idl: str
    backends: Mapping[str, tuple[tuple[str, int], ...]]
    services: tuple[str, ...] = ()
    mode: Mode = "loop"
    idempotent: frozenset[str] = frozenset()
    exception_status: Mapping[str, int] = field(default_factory=dict)
    api_title: str = ""
    api_version: str = DEFAULT_API_VERSION
    grace: float = 10.0
    listen: ListenConfig = field(default_factory=lambda: ListenConfig(port=GATEWAY_PORT))
    front: FrontConfig = field(default_factory=FrontConfig)
    client: ClientConfig = field(default_factory=ClientConfig)
    health: HealthConfig = field(default_factory=HealthConfig, metadata={"prefix": "health-"})
    actors: ActorsConfig = field(default_factory=ActorsConfig)
    watchdog: WatchdogConfig = field(default_factory=WatchdogConfig)

    def __post_init__(self) -> None:
        if not self.backends:
            raise ValueError("at least one backend is needed (--backend host:port)")
        if self.mode not in ("loop", "actor"):
            raise ValueError(f"mode must be 'loop' or 'actor', not {self.mode!r}")
        if self.grace < 0:
            raise ValueError("grace must be >= 0")
        if self.api_title != self.api_title.strip():
            raise ValueError("api_title must not start or end with white space")
        if not self.api_version.strip():
            raise ValueError("api_version must not be blank")
        for name, status in self.exception_status.items():
            if not 400 <= status <= 599:
                raise ValueError(f"status for {name} must be a 4xx or 5xx code, not {status}")
