"""GatewayConfig: everything the HTTP gateway needs, as nested frozen dataclasses.

Each part is the config of one layer: where it listens (:class:`~offloop.listen.ListenConfig`),
what its HTTP front accepts (:class:`FrontConfig`), how its clients talk to workers
(:class:`~offloop.client.config.ClientConfig`), how backends are probed
(:class:`~offloop.client.balancer.HealthConfig`), actor mode (:class:`ActorsConfig`) and the
loop watchdog (:class:`~offloop.watchdog.WatchdogConfig`). Make variants with
:func:`dataclasses.replace`; nothing derived is stored.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from offloop.client.balancer import HealthConfig
from offloop.client.config import ClientConfig
from offloop.client.targets import Target, TargetLike, parse_target
from offloop.gateway.openapi import DEFAULT_API_VERSION
from offloop.listen import ListenConfig
from offloop.tls import ClientTLSConfig, ServerTLSConfig
from offloop.watchdog import WatchdogConfig

__all__ = [
    "ActorsConfig",
    "AuthConfig",
    "CallerLimits",
    "CorsConfig",
    "FrontConfig",
    "GatewayConfig",
    "Mode",
    "ServerKind",
    "parse_backend",
    "parse_scope",
]

Mode = Literal["loop", "actor"]
ServerKind = Literal["uvicorn", "tornado"]

#: The gateway's default HTTP port.
GATEWAY_PORT = 8080


def parse_backend(text: str) -> tuple[str | None, Target]:
    """Parse ``[Service=]TARGET``, a target as :func:`~offloop.client.targets.parse_target`
    reads it (``host:port``, ``dns:///name:port``, ``dns+srv:///_thrift._tcp.name``...).

    Raises:
        ValueError: the text is not of that form; the message names the part at fault.
    """
    service, sep, rest = text.partition("=")
    if not sep or not service.isidentifier():
        service, rest = "", text
    try:
        return (service or None), parse_target(rest)
    except ValueError as exc:
        detail = str(exc).removeprefix(f"{rest.strip()!r}: ")
        raise ValueError(
            f"backend must look like [Service=]TARGET, got {text!r}: {detail}"
        ) from None


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
        root_path: the path prefix the gateway is reached under when a proxy in front of it
            strips that prefix (``/api``; empty for none), as uvicorn's ``--root-path``: the
            OpenAPI document's ``servers`` entry, and where ``GET /`` redirects. A request
            whose path still holds the prefix is served too. An ASGI server's or a host app's
            ``root_path`` (a Starlette ``Mount``) takes precedence.
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
    root_path: str = ""

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
        if self.root_path and (
            not self.root_path.startswith("/")
            or self.root_path.endswith("/")
            or any(c in self.root_path for c in "?#% \t\r\n")
        ):
            raise ValueError(
                f"root_path must be a path like /api (no trailing /), not {self.root_path!r}"
            )


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


#: JWT signature algorithms the gateway can check: public-key ones only, so that a public key
#: can never be misused as an HMAC secret (the "key confusion" attack), and never ``none``.
JWT_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)


def parse_scope(text: str) -> tuple[str, str]:
    """Parse ``SCOPE=PATTERN`` (``read=TextLab.*``).

    Raises:
        ValueError: the text is not of that form.
    """
    scope, sep, pattern = text.partition("=")
    if not sep or not scope.strip() or not pattern.strip():
        raise ValueError(f"a scope must look like SCOPE=Service.method, got {text!r}")
    return scope.strip(), pattern.strip()


@dataclass(frozen=True)
class AuthConfig:
    """Who may call the gateway (``docs/security.md``). Off unless ``api_keys``,
    ``jwt_key_file`` or ``jwks_url`` is given; then every route but ``/healthz``, ``/readyz``
    and the page ``/docs`` needs a credential (``/metrics`` and ``/openapi.json`` only with
    ``close_metrics`` and ``close_docs``), and a call needs the right to call its method.

    Attributes:
        api_keys: path of the file of hashed API keys, one ``NAME HASH METHODS`` line per key
            (``offloop hash-key NAME`` makes one); read at start. Empty for no API keys.
        jwt_key_file: path of a PEM file of the public key(s) that sign JWT bearer tokens;
            read at start. Empty for none.
        jwks_url: URL of the JSON Web Key Set that signs JWT bearer tokens, fetched off the
            loop, cached, and fetched again for a token whose ``kid`` it lacks. Empty for none.
        algorithms: JWT signature algorithms accepted (public-key ones only; never ``none``).
        issuer: the ``iss`` claim a JWT must have; needed with JWT.
        audience: the value the ``aud`` claim of a JWT must hold; needed with JWT.
        leeway: seconds of clock skew allowed when checking ``exp`` and ``nbf``.
        scopes: ``SCOPE=PATTERN``: a JWT with that scope (``scope`` or ``scp`` claim) may
            call the methods of the pattern (``Service.method``, ``Service.*`` or ``*``);
            give it once per pair.
        jwks_min_interval: least seconds between two fetches of the JWKS; a token with an
            unknown ``kid`` sooner than that is refused without a fetch.
        jwks_max_age: seconds a fetched JWKS is used before it is fetched again.
        jwks_timeout: seconds a fetch of the JWKS may take.
        close_metrics: ``/metrics`` needs a credential too.
        close_docs: ``/openapi.json`` needs a credential too. The page ``/docs`` stays
            open (it holds nothing of the API) and sends the credential typed in it.
        realm: the realm named in ``WWW-Authenticate``.
    """

    api_keys: str = ""
    jwt_key_file: str = ""
    jwks_url: str = ""
    algorithms: tuple[str, ...] = field(default=("RS256",), metadata={"flag": "algorithm"})
    issuer: str = ""
    audience: str = ""
    leeway: float = 0.0
    scopes: tuple[str, ...] = field(default=(), metadata={"flag": "scope"})
    jwks_min_interval: float = 10.0
    jwks_max_age: float = 600.0
    jwks_timeout: float = 5.0
    close_metrics: bool = False
    close_docs: bool = False
    realm: str = "offloop"

    @property
    def enabled(self) -> bool:
        """Whether any credential is accepted, hence needed."""
        return bool(self.api_keys or self.jwt)

    @property
    def jwt(self) -> bool:
        """Whether JWT bearer tokens are accepted."""
        return bool(self.jwt_key_file or self.jwks_url)

    def __post_init__(self) -> None:
        if self.jwt_key_file and self.jwks_url:
            raise ValueError("give jwt_key_file or jwks_url, not both")
        if not self.algorithms:
            raise ValueError("algorithms must name at least one algorithm")
        for alg in self.algorithms:
            if alg not in JWT_ALGORITHMS:
                known = ", ".join(sorted(JWT_ALGORITHMS))
                raise ValueError(f"algorithm {alg!r} is not accepted (one of {known})")
        if self.jwt and not (self.issuer and self.audience):
            raise ValueError("JWT needs an issuer and an audience to check")
        if self.jwks_url and not self.jwks_url.startswith(("https://", "http://")):
            raise ValueError(f"jwks_url must be an http(s) URL, got {self.jwks_url!r}")
        for scope in self.scopes:
            parse_scope(scope)
        if self.leeway < 0:
            raise ValueError("leeway must be >= 0")
        for name in ("jwks_min_interval", "jwks_max_age", "jwks_timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive")
        if not self.realm or '"' in self.realm or "\\" in self.realm:
            raise ValueError("realm must be non-empty, without quotes or backslashes")


@dataclass(frozen=True)
class CallerLimits:
    """Limits per caller: the API key's name, the JWT's subject, or with authentication off
    the client's address. Each applies to calls (``/rpc/...``); past it a call is refused at
    once with 429 and ``Retry-After``.

    Attributes:
        rate: calls per second each caller may make on average (a token bucket); 0 for no
            limit.
        burst: calls a caller may make at once on top of its rate (the bucket's size); 0 for
            the rate rounded up (at least 1).
        max_inflight: calls of one caller in flight at once; 0 for no limit.
        max_tracked: callers whose state is kept at once; a new caller past it takes the place
            of the one idle longest (with none idle: 503).
    """

    rate: float = 0.0
    burst: int = 0
    max_inflight: int = 0
    max_tracked: int = 10_000

    @property
    def enabled(self) -> bool:
        """Whether any limit is set."""
        return self.rate > 0 or self.max_inflight > 0

    @property
    def bucket(self) -> float:
        """The token bucket's size."""
        return float(self.burst or max(1, math.ceil(self.rate)))

    def __post_init__(self) -> None:
        if self.rate < 0 or not math.isfinite(self.rate):
            raise ValueError("rate must be >= 0")
        if self.burst < 0:
            raise ValueError("burst must be >= 0")
        if self.max_inflight < 0:
            raise ValueError("max_inflight must be >= 0")
        if self.max_tracked < 1:
            raise ValueError("max_tracked must be at least 1")


@dataclass(frozen=True)
class CorsConfig:
    """Cross-origin requests from browsers (CORS). Off while ``origins`` is empty.

    Attributes:
        origins: origins allowed to call from a browser (``https://app.example.com``), or
            ``*`` for any; give it once per origin.
        max_age: seconds a browser may cache the answer to a preflight request.
        credentials: allow requests with the browser's credentials (cookies, HTTP
            authentication); not with ``*``.
    """

    origins: tuple[str, ...] = field(default=(), metadata={"flag": "origin"})
    max_age: int = 600
    credentials: bool = False

    def __post_init__(self) -> None:
        for origin in self.origins:
            if origin != "*" and (
                not origin.startswith(("https://", "http://")) or origin.endswith("/")
            ):
                raise ValueError(
                    f"an origin is scheme://host[:port] with no path, or *; got {origin!r}"
                )
        if self.credentials and "*" in self.origins:
            raise ValueError("credentials cannot be allowed for every origin (*)")
        if self.max_age < 0:
            raise ValueError("max_age must be >= 0")


@dataclass(frozen=True)
class GatewayConfig:
    """Configuration of the HTTP gateway (``offloop gateway``).

    Attributes:
        idl: path of the ``.thrift`` file; every method of every service becomes a route.
        backends: service name -> backend targets: static ``(host, port)`` addresses and
            DNS targets (:mod:`offloop.client.targets`); the key ``"*"`` serves every
            service that has no targets of its own.
        services: services to expose; empty for every service of the IDL.
        mode: ``loop`` (async clients, many calls in flight per connection) or ``actor``
            (Pykka actors with blocking clients).
        idempotent: ``Service.method`` names that may be retried after being sent.
        exception_status: HTTP status per declared exception type name (default 422).
        api_title: the title of the OpenAPI document and of ``/docs``; empty for the names of
            the services (``TextLab API``).
        api_version: the version of the API the OpenAPI document gives (``info.version``).
        grace: seconds to drain calls in flight on shutdown.
        drain_delay: seconds the gateway keeps serving after SIGTERM, with ``/readyz``
            failing, before it stops accepting and drains within ``grace``: time for load
            balancers to stop sending it requests. SIGINT (Ctrl-C) skips it.
        listen: where the HTTP server listens.
        front: what the HTTP front accepts.
        client: how calls reach the workers.
        health: how backends are probed.
        actors: actor mode.
        watchdog: the loop watchdog.
        auth: who may call (authentication), off by default.
        callers: limits per caller.
        cors: cross-origin requests from browsers, off by default.
        tls: HTTPS on the front, both servers (mutual TLS with ``tls_client_ca``); see
            docs/security.md.
        backend_tls: TLS to the workers, in both modes; see docs/security.md.
        backend_multiplexed: services whose backends serve several services on one port
            (Apache's ``TMultiplexedProtocol``): their calls are named ``Service:method``;
            ``*`` for every service. Needed for Apache's ``TMultiplexedProcessor``, and for
            an offloop worker serving several services that share a method name.
    """

    idl: str
    backends: Mapping[str, tuple[TargetLike, ...]]
    services: tuple[str, ...] = ()
    mode: Mode = "loop"
    idempotent: frozenset[str] = frozenset()
    exception_status: Mapping[str, int] = field(default_factory=dict)
    api_title: str = ""
    api_version: str = DEFAULT_API_VERSION
    grace: float = 10.0
    drain_delay: float = 5.0
    listen: ListenConfig = field(default_factory=lambda: ListenConfig(port=GATEWAY_PORT))
    front: FrontConfig = field(default_factory=FrontConfig)
    client: ClientConfig = field(default_factory=ClientConfig)
    health: HealthConfig = field(default_factory=HealthConfig, metadata={"prefix": "health-"})
    actors: ActorsConfig = field(default_factory=ActorsConfig)
    watchdog: WatchdogConfig = field(default_factory=WatchdogConfig)
    auth: AuthConfig = field(default_factory=AuthConfig, metadata={"prefix": "auth-"})
    callers: CallerLimits = field(default_factory=CallerLimits, metadata={"prefix": "caller-"})
    cors: CorsConfig = field(default_factory=CorsConfig, metadata={"prefix": "cors-"})
    tls: ServerTLSConfig = field(default_factory=ServerTLSConfig, metadata={"prefix": "tls-"})
    backend_tls: ClientTLSConfig = field(
        default_factory=ClientTLSConfig, metadata={"prefix": "backend-tls-"}
    )
    backend_multiplexed: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if not self.backends:
            raise ValueError("at least one backend is needed (--backend host:port)")
        if self.mode not in ("loop", "actor"):
            raise ValueError(f"mode must be 'loop' or 'actor', not {self.mode!r}")
        if self.grace < 0:
            raise ValueError("grace must be >= 0")
        if self.drain_delay < 0:
            raise ValueError("drain_delay must be >= 0")
        if self.api_title != self.api_title.strip():
            raise ValueError("api_title must not start or end with white space")
        if not self.api_version.strip():
            raise ValueError("api_version must not be blank")
        for name, status in self.exception_status.items():
            if not 400 <= status <= 599:
                raise ValueError(f"status for {name} must be a 4xx or 5xx code, not {status}")
