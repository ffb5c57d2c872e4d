"""Multiplexed backends: calls named ``Service:method``, as Apache's ``TMultiplexedProtocol``
names them, for servers that serve several services on one port.

A server built on Apache's ``TMultiplexedProcessor`` finds the service of a call by the
prefix of its name, and refuses a plain ``method``; an offloop worker serving several
services accepts both, but a plain name only when one of its services has the method. The
gateway's ``backend_multiplexed`` setting names the services whose backends are called so.

:class:`MultiplexedCaller` wraps any :class:`~offloop.client.caller.Caller` (loop or actor
mode): it hands the caller a copy of the method whose ``name`` is ``Service:method``, so that
both clients, which encode ``method.name``, send the prefixed name with no change of their own;
:meth:`offloop.codec.call.CallCodec.outcome` takes the plain name the server answers with.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection
from typing import Any

from offloop.client.caller import BackendState, Caller, shedding
from offloop.codec.call import SERVICE_SEPARATOR
from offloop.idl import MethodInfo

__all__ = ["ALL_SERVICES", "MultiplexedCaller", "wire_method"]

#: In ``backend_multiplexed``: every service.
ALL_SERVICES = "*"


def wire_method(service: str, method: MethodInfo) -> MethodInfo:
    """``method`` as a multiplexing client calls it: named ``Service:method``."""
    return dataclasses.replace(method, name=f"{service}{SERVICE_SEPARATOR}{method.name}")


class MultiplexedCaller:
    """A :class:`~offloop.client.caller.Caller` whose calls of ``services`` are named
    ``Service:method`` on the wire; calls of other services go through unchanged.

    Args:
        inner: the caller that makes the calls.
        services: the services whose backends are multiplexed; ``*`` for all.
    """

    def __init__(self, inner: Caller, services: Collection[str]) -> None:
        self._inner = inner
        self._all = ALL_SERVICES in services
        self._services = frozenset(services)
        # (service, method name) -> its renamed MethodInfo, made once per method.
        self._renamed: dict[tuple[str, str], MethodInfo] = {}
        #: :class:`~offloop.client.caller.Shedding`: the inner caller's answer.
        self.saturated = shedding(inner)

    @property
    def inner(self) -> Caller:
        """The caller that makes the calls."""
        return self._inner

    def multiplexed(self, service: str) -> bool:
        """Whether calls of ``service`` are named ``Service:method``."""
        return self._all or service in self._services

    async def start(self) -> None:
        await self._inner.start()

    async def call(
        self,
        service: str,
        method: MethodInfo,
        args: Any,
        *,
        timeout: float,
        idempotent: bool,
        **options: Any,
    ) -> Any:
        """:meth:`Caller.call <offloop.client.caller.Caller.call>`, the method renamed
        ``Service:method`` if ``service`` is multiplexed."""
        if self.multiplexed(service):
            key = (service, method.name)
            renamed = self._renamed.get(key)
            if renamed is None:
                renamed = self._renamed[key] = wire_method(service, method)
            method = renamed
        return await self._inner.call(
            service, method, args, timeout=timeout, idempotent=idempotent, **options
        )

    def ready(self) -> bool:
        return self._inner.ready()

    def backend_states(self) -> list[BackendState]:
        return self._inner.backend_states()

    async def close(self) -> None:
        await self._inner.close()
