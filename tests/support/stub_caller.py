"""A stand-in for the gateway's caller: the gateway core tested without sockets or workers."""

from __future__ import annotations

from typing import Any

from offloop.client.caller import BackendState
from offloop.idl import MethodInfo

__all__ = ["StubCaller"]


class StubCaller:
    """A :class:`~offloop.client.caller.Caller` that raises what the test gives it."""

    def __init__(self) -> None:
        self.error: BaseException | None = None

    async def start(self) -> None:
        return None

    async def call(
        self, service: str, method: MethodInfo, args: Any, *, timeout: float, idempotent: bool
    ) -> Any:
        if self.error is not None:
            raise self.error
        return args.msg

    def ready(self) -> bool:
        return True

    def backend_states(self) -> list[BackendState]:
        return []

    async def close(self) -> None:
        return None
