"""How the gateway's calls reach the backends, and the event-loop implementation of it.

A :class:`Caller` makes one Thrift call somewhere in the worker tier and returns the method's
value (raising a declared exception as itself). The gateway core only knows this protocol;
the event-loop mode (:class:`AsyncCaller`, multiplexed async clients) and the actor mode
(:mod:`offloop.client.actors`, blocking clients owned by actors) are its two implementations.

Retry policy, shared by both through :func:`call_with_retries`:

- a backend that refused the call (:class:`~offloop.errors.Overloaded`, its
  :class:`~offloop.errors.ShuttingDown`, or a connection or actor at its limit) did not run
  it: try the next backend, each at most once; when every backend refused, raise
  :class:`~offloop.errors.Overloaded`;
- a backend at the limit the balancer learned from its refusals is not tried at all; when
  every backend that is up is at its limit, the call is refused at once, without a round
  trip (``NotSentOverloaded``, 503 with ``Retry-After``): see
  :mod:`offloop.client.balancer`. The outcome of each attempt teaches the balancer: a
  refusal by the backend itself lowers its limit, an answered call may raise it;
- a call that could not be *sent* (connect failed, connection already broken) is retried
  once on another backend;
- a call already sent is never retried, unless its method is declared idempotent;
- when no backend is up, one that is down is tried anyway (:meth:`Balancer.last_resort`):
  a worker restarted on its address answers before the next probe can say so.

A caller may also offer ``saturated(service)`` (:class:`Shedding`), which the gateway asks
before it even parses a request, so that a storm of calls nobody can take costs it as little
as possible.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, cast

from offloop import tracing
from offloop.client.balancer import Backend, Balancer, HealthConfig
from offloop.client.config import ClientConfig
from offloop.client.discovery import Discoveries, Resolver
from offloop.client.errors import NotSentError, NotSentOverloaded
from offloop.client.network import TCP, Network
from offloop.client.pool import ConnectionPool
from offloop.client.targets import DnsTarget, StaticTarget, TargetLike, as_target
from offloop.errors import (
    BrokenError,
    ConnectError,
    DeadlineExceeded,
    NoBackendError,
    OffloopError,
    Overloaded,
    RemoteApplicationError,
    ShuttingDown,
    TransportError,
)
from offloop.idl import MethodInfo

__all__ = [
    "AT_LIMIT",
    "AsyncCaller",
    "BackendState",
    "Caller",
    "Shedding",
    "all_ready",
    "backend_states",
    "call_with_retries",
    "saturated",
    "shedding",
]

#: What a client sees when a call is refused because every backend is full.
AT_LIMIT = "overloaded: every backend is at its limit"


@dataclass(frozen=True)
class BackendState:
    """One backend as reported by ``/metrics`` and ``/readyz``.

    Attributes:
        service: the service it serves.
        address: ``host:port``.
        up: whether it is in rotation.
        in_flight: calls in flight to it now.
        limit: the calls in flight it admits, as learned from its refusals; None: unknown.
        source: ``static``, or the DNS target that found it.
        state: ``up``, ``down`` or ``draining`` (see :mod:`offloop.client.balancer`).
    """

    service: str
    address: str
    up: bool
    in_flight: int
    limit: int | None = None
    source: str = "static"
    state: str = "up"


class Caller(Protocol):
    """Makes Thrift calls to the worker tier."""

    async def start(self) -> None: ...

    async def call(
        self, service: str, method: MethodInfo, args: Any, *, timeout: float, idempotent: bool
    ) -> Any:
        """Call ``method`` of ``service`` with its ``<method>_args`` struct.

        Returns the method's value (None for void and oneway methods).

        Raises:
            the method's declared exception, as itself;
            RemoteApplicationError: the backend answered with a TApplicationException;
            Overloaded: the gateway's or every backend's limit is reached;
            NoBackendError: no backend is reachable;
            DeadlineExceeded: ``timeout`` passed;
            TransportError: the connection failed after the call was sent.
        """

    def ready(self) -> bool:
        """Whether at least one backend of every service is reachable."""

    def backend_states(self) -> list[BackendState]: ...

    async def close(self) -> None: ...


class Shedding(Protocol):
    """What a :class:`Caller` may also offer: whether a call to ``service`` would be refused
    at once now. The gateway asks before parsing a request, to refuse it as cheaply as it can.
    """

    def saturated(self, service: str) -> bool:
        """Whether ``service`` has a backend up and every one that is up is at its learned
        limit (:meth:`Balancer.saturated`)."""


def all_ready(balancers: Mapping[str, Balancer]) -> bool:
    """Whether every service has a backend that is up (:meth:`Caller.ready`)."""
    return all(b.any_up() for b in balancers.values())


def shedding(caller: Caller) -> Callable[[str], bool]:
    """How to ask ``caller`` whether a call to a service would be refused at once now: its
    own ``saturated`` if it offers one (:class:`Shedding`), else the same answer read from
    its :meth:`~Caller.backend_states` (a little slower: a list per call)."""
    offered = getattr(caller, "saturated", None)
    if callable(offered):
        return cast(Callable[[str], bool], offered)

    def from_states(service: str) -> bool:
        up = [s for s in caller.backend_states() if s.service == service and s.up]
        return bool(up) and all(s.limit is not None and s.in_flight >= s.limit for s in up)

    return from_states


def saturated(balancers: Mapping[str, Balancer], service: str) -> bool:
    """:meth:`Shedding.saturated` for callers built on balancers (False for an unknown
    service: its call fails on its own)."""
    balancer = balancers.get(service)
    return balancer is not None and balancer.saturated()


def backend_states(balancers: Mapping[str, Balancer]) -> list[BackendState]:
    """Each backend of each service, with its health, its target's calls in flight, and its
    learned limit."""
    return [
        BackendState(
            service, b.address, b.up, b.target.in_flight, b.capacity.limit, b.source, b.state
        )
        for service, balancer in balancers.items()
        for b in (*balancer.backends, *balancer.draining)
    ]


def _was_sent(exc: TransportError) -> bool:
    return not isinstance(exc, NotSentError)


async def call_with_retries(
    balancer: Balancer,
    attempt: Callable[[Backend, float], Awaitable[Any]],
    *,
    service: str,
    timeout: float,
    idempotent: bool,
    method: str | None = None,
) -> Any:
    """Run ``attempt(backend, remaining_timeout)`` on picked backends, by the retry policy
    in the module docstring. With tracing on, each attempt is a client span
    (:func:`offloop.tracing.traced_attempt`; ``method`` names it).

    Raises:
        NotSentOverloaded: every backend that is up is at its learned limit (nothing tried).
        Overloaded: every backend tried refused the call, and no other one has room.
        NoBackendError: no backend is up, and none is down either (all draining).
        Exception: what the last attempt raised (see :meth:`Caller.call`); a connect error
            when no backend was up and the one tried anyway refused.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    tried: list[Backend] = []
    overloaded = 0
    transport_retries = 1
    last: Exception | None = None
    while True:
        backend = balancer.pick(exclude=tried)
        if backend is None and not tried and not balancer.any_up():
            backend = balancer.last_resort()
        if backend is None:
            if overloaded == len(tried) and (overloaded or balancer.saturated(tried)):
                if not tried:
                    raise NotSentOverloaded(
                        f"every backend of {service} is at its limit: call refused unsent",
                        public_message=AT_LIMIT,
                    )
                raise Overloaded(
                    f"every backend of {service} refused the call or is at its limit: {last}",
                    public_message=AT_LIMIT,
                ) from last
            if last is not None:
                raise last
            raise NoBackendError(f"no backend of {service} is reachable")
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise DeadlineExceeded(f"deadline of {timeout:.3g} s passed")
        tried.append(backend)
        ahead = backend.target.in_flight
        try:
            if tracing.ENABLED:
                value = await tracing.traced_attempt(
                    attempt(backend, remaining),
                    service,
                    method,
                    backend.host,
                    backend.port,
                    len(tried),
                )
            else:
                value = await attempt(backend, remaining)
        except Overloaded as exc:  # refused by the backend, or by our own limit: not run
            # Only the backend's own refusal tells its capacity: not our limits (not sent),
            # nor a worker that refuses everything because it is shutting down.
            if isinstance(exc, ShuttingDown):
                balancer.drain(backend, str(exc))
            elif not isinstance(exc, NotSentError):
                balancer.refused(backend, ahead)
            overloaded += 1
            last = exc
            continue
        except TransportError as exc:
            if isinstance(exc, ConnectError | BrokenError):
                balancer.mark_down(backend, str(exc))
            if transport_retries and (not _was_sent(exc) or idempotent):
                transport_retries -= 1
                last = exc
                continue
            raise
        except RemoteApplicationError:  # the backend took the call (and failed it)
            balancer.answered(backend)
            raise
        except OffloopError:  # a deadline, a local error: says nothing of its capacity
            raise
        except Exception:  # a declared exception of the method: answered
            balancer.answered(backend)
            raise
        balancer.answered(backend)
        return value


class AsyncCaller:
    """Event-loop mode: per backend a small pool of multiplexed async connections.

    Args:
        backends: service name -> backend targets (:mod:`offloop.client.targets`): static
            addresses, and DNS targets followed by :mod:`offloop.client.discovery`.
        client: connection settings, ``pool_size`` connections per backend among them.
        health: probe timings.
        network: how connections are opened (TCP by default).
        resolver: makes the resolver of a DNS target (DNS itself by default).
    """

    def __init__(
        self,
        backends: Mapping[str, Sequence[TargetLike]],
        client: ClientConfig | None = None,
        *,
        health: HealthConfig | None = None,
        network: Network = TCP,
        resolver: Callable[[DnsTarget], Resolver] | None = None,
    ) -> None:
        self._client = client or ClientConfig()
        self._network = network
        self._discoveries = Discoveries(resolver)
        self._balancers: dict[str, Balancer] = {}
        for service, targets in backends.items():
            found = [as_target(t) for t in targets]
            static = [t for t in found if isinstance(t, StaticTarget)]
            balancer = Balancer(
                [Backend(t.host, t.port, self._pool(t.host, t.port)) for t in static],
                health,
                network=network,
                on_up=_open_connections,
                on_down=self._discoveries.on_down,
                empty_ok=len(static) < len(found),
            )
            for target in found:
                if isinstance(target, DnsTarget):
                    self._discoveries.follow(target, balancer, self._pool)
            self._balancers[service] = balancer

    def _pool(self, host: str, port: int) -> ConnectionPool:
        size = self._client.pool_size
        return ConnectionPool(host, port, self._client, size=size, network=self._network)

    async def start(self) -> None:
        """Resolve the DNS targets once, then start probing; each backend's pool opens its
        connections in the background (and again whenever the backend is seen up), so that
        a first burst finds them open."""
        await self._discoveries.start()
        for balancer in self._balancers.values():
            balancer.start()

    async def call(
        self, service: str, method: MethodInfo, args: Any, *, timeout: float, idempotent: bool
    ) -> Any:
        balancer = self._balancers.get(service)
        if balancer is None:
            raise NoBackendError(f"no backend is configured for service {service}")

        async def attempt(backend: Backend, remaining: float) -> Any:
            pool: ConnectionPool = backend.target  # type: ignore[assignment]
            return await pool.call(method, args, timeout=remaining)

        return await call_with_retries(
            balancer,
            attempt,
            service=service,
            timeout=timeout,
            idempotent=idempotent,
            method=method.name,
        )

    def ready(self) -> bool:
        return all_ready(self._balancers)

    def saturated(self, service: str) -> bool:
        """Whether a call to ``service`` would be refused at once now (:class:`Shedding`)."""
        return saturated(self._balancers, service)

    def backend_states(self) -> list[BackendState]:
        return backend_states(self._balancers)

    async def close(self) -> None:
        await self._discoveries.close()
        await asyncio.gather(*(b.close() for b in self._balancers.values()))


def _open_connections(backend: Backend) -> None:
    pool: ConnectionPool = backend.target  # type: ignore[assignment]
    pool.warm()
