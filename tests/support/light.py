"""The faulty handler's ``ping`` and ``parse`` run on the worker's loop (issue 16's light
calls): ``InlineHandler`` marks them ``@offloop.inline``, ``AsyncHandler`` makes them
``async def``. Same commands as :mod:`faulty`, plus, on ``AsyncHandler``, ``agate:PATH``:
wait without blocking the loop until the :class:`gates.Gate` at PATH opens."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from faulty import Handler
from gates import GATE_POLL

from offloop import inline


class InlineHandler(Handler):
    @inline
    def ping(self, msg: str) -> str:
        return super().ping(msg)

    @inline
    def parse(self, sentence: str) -> Any:
        return super().parse(sentence)


class AsyncHandler(Handler):
    async def ping(self, msg: str) -> str:  # type: ignore[override]
        if msg.startswith("agate:"):
            while not os.path.exists(msg.removeprefix("agate:")):
                await asyncio.sleep(GATE_POLL)  # a wait that yields: the loop serves on
            return "opened"
        await asyncio.sleep(0)  # a real suspension, as an async handler's I/O would be
        return super().ping(msg)

    async def parse(self, sentence: str) -> Any:
        await asyncio.sleep(0)
        return super().parse(sentence)
