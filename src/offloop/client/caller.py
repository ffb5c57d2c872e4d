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
- a call that could not be *sent* (connect failed, connection already broken) is retried
  once on another backend;
- a call already sent is never retried, unless its method is declared idempotent.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from offloop.client.balancer import Backend, Balancer, HealthConfig
from offloop.client.config import ClientConfig
from offloop.client.errors import NotSentError
from offloop.client.network import TCP, Network
from offloop.client.pool import ConnectionPool
from offloop.errors import (
    BrokenError,
    ConnectError,
    DeadlineExceeded,
    NoBackendError,
    Overloaded,
    TransportError,
)
from offloop.idl import MethodInfo

__all__ = [
    "AsyncCaller",
    "BackendState",
    "Caller",
    "all_ready",
    "backend_states",
    "call_with_retries",
]


@dataclass(frozen=True)
class BackendState:
    """One backend as reported by ``/metrics`` and ``/readyz``."""

    service: str
    address: str
    up: bool
    in_flight: int


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


def all_ready(balancers: Mapping[str, Balancer]) -> bool:
    """Whether every service has a backend that is up (:meth:`Caller.ready`)."""
    return all(b.any_up() for b in balancers.values())


def backend_states(balancers: Mapping[str, Balancer]) -> list[BackendState]:
    """Each backend of each service, with its health and its target's calls in flight."""
    return [
        BackendState(service, b.address, b.up, b.target.in_flight)
        for service, balancer in balancers.items()
        for b in balancer.backends
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
) -> Any:
    """Run ``attempt(backend, remaining_timeout)`` on picked backends, by the retry policy
    in the module docstring."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    tried: list[Backend] = []
    overloaded = 0
    transport_retries = 1
    last: Exception | None = None
    while True:
        backend = balancer.pick(exclude=tried)
        if backend is None:
            if overloaded and overloaded == len(tried):
                err = Overloaded(
                    f"every backend of {service} refused the call: {last}",
                    public_message="overloaded: every backend is at its limit",
                )
                raise err from last
            if last is not None:
                raise last
            raise NoBackendError(f"no backend of {service} is reachable")
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise DeadlineExceeded(f"deadline of {timeout:.3g} s passed")
        tried.append(backend)
        try:
            return await attempt(backend, remaining)
        except Overloaded as exc:  # refused by the backend, or by our own limit: not run
            overloaded += 1
            last = exc
        except TransportError as exc:
            if isinstance(exc, ConnectError | BrokenError):
                balancer.mark_down(backend, str(exc))
            if transport_retries and (not _was_sent(exc) or idempotent):
                transport_retries -= 1
                last = exc
                continue
            raise


class AsyncCaller:
    """Event-loop mode: per backend a small pool of multiplexed async connections.

    Args:
        backends: service name -> backend addresses.
        client: connection settings, ``pool_size`` connections per backend among them.
        health: probe timings.
        network: how connections are opened (TCP by default).
    """

    def __init__(
        self,
        backends: Mapping[str, Sequence[tuple[str, int]]],
        client: ClientConfig | None = None,
        *,
        health: HealthConfig | None = None,
        network: Network = TCP,
    ) -> None:
        self._client = client or ClientConfig()
        pool_size = self._client.pool_size
        self._balancers = {
            service: Balancer(
                [
                    Backend(
                        host,
                        port,
                        ConnectionPool(host, port, self._client, size=pool_size, network=network),
                    )
                    for host, port in addrs
                ],
                health,
                network=network,
            )
            for service, addrs in backends.items()
        }

    async def start(self) -> None:
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
            balancer, attempt, service=service, timeout=timeout, idempotent=idempotent
        )

    def ready(self) -> bool:
        return all_ready(self._balancers)

    def backend_states(self) -> list[BackendState]:
        return backend_states(self._balancers)

    async def close(self) -> None:
        await asyncio.gather(*(b.close() for b in self._balancers.values()))
