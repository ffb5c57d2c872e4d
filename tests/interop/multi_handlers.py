"""Handlers of ``two_services.thrift`` (imported by pool processes too): ``Calc`` and
``Echo``, both with a ``ping`` that says which service answered.

``Echo.upper`` is batched (up to 4 calls, and it tells each call its batch's size:
``"ABC/4"``); ``Echo.later`` is an ``async def`` and ``Echo.shout`` an ``@inline`` method
(both run on the worker's loop; ``shout`` says in which process);
``Calc.hold(gate)`` waits until the file ``gate`` exists (a ``gates.Gate`` of the tests;
this module imports nothing of the tests, so that docs/worker.md's command runs it).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import offloop

IDL = str(Path(__file__).resolve().parent / "two_services.thrift")
_t = offloop.load_idl(IDL)
#: Seconds ``hold`` waits for its gate at most.
HOLD_TIMEOUT = 60.0


class Calc:
    def ping(self, msg: str) -> str:
        return f"calc:{msg}"

    def add(self, a: int, b: int) -> int:
        return a + b

    def divide(self, a: int, b: int) -> int:
        if b == 0:
            raise _t.Refused(reason="division by zero")
        return a // b

    def hold(self, gate: str) -> str:
        deadline = time.monotonic() + HOLD_TIMEOUT
        while not os.path.exists(gate):
            if time.monotonic() > deadline:
                return f"gate timeout in {os.getpid()}"
            time.sleep(0.005)
        return f"opened in {os.getpid()}"


class Echo:
    def ping(self, msg: str) -> str:
        return f"echo:{msg}"

    def echo(self, text: str) -> str:
        return text

    # A long wait: a batch leaves when full (or when the pool is idle), never on the timer.
    @offloop.batched(max_batch=4, max_wait_ms=10_000)
    def upper(self, texts: list[str]) -> list[str]:
        return [f"{text.upper()}/{len(texts)}" for text in texts]

    async def later(self, text: str) -> str:
        return f"later:{text}"

    @offloop.inline
    def shout(self, text: str) -> str:
        return f"{text.upper()}! in {os.getpid()}"
