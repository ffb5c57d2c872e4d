"""Handlers for the worker scenario: the TextLab demo handler with ``ping`` run on the
worker's loop, as ``@offloop.inline`` and as ``async def`` (issue 16's light calls)."""

from __future__ import annotations

from offloop import inline
from offloop.demo.textlab import Handler


class InlineHandler(Handler):
    """``ping`` marked ``@inline``: no pool hand-off."""

    @inline
    def ping(self, msg: str) -> str:
        return super().ping(msg)


class AsyncHandler(Handler):
    """``ping`` as ``async def``: no pool hand-off."""

    async def ping(self, msg: str) -> str:  # type: ignore[override]
        return super().ping(msg)
