"""A TextLab handler with faults on demand, for worker tests (imported by child processes).

``ping(msg)`` reacts to commands in ``msg``: ``crash`` exits the process at once,
``segfault`` dies of SIGSEGV,
``raise`` raises ValueError, ``badreturn`` returns a value the IDL cannot encode,
``apperror`` raises a TApplicationException, ``pid`` returns the process id and thread
ident, ``nice`` the niceness of the thread running the call, ``gate:PATH`` waits until
its :class:`gates.Gate` opens and returns ``"opened"``, anything else is echoed.
``sleep``/``burn`` wait or spin; ``parse`` raises the declared ParseError
(``badexc``: one whose fields do not match the IDL, so it cannot be encoded).
"""

from __future__ import annotations

import ctypes
import os
import threading
import time
from pathlib import Path
from typing import Any

from gates import wait_for_gate
from thriftpy2.thrift import TApplicationException

from offloop import batched
from offloop.idl import load_idl

IDL = str(Path(__file__).resolve().parents[2] / "src/offloop/demo/textlab.thrift")
_t = load_idl(IDL)


class Handler:
    def ping(self, msg: str) -> str:
        if msg == "crash":
            os._exit(3)
        if msg == "segfault":
            ctypes.string_at(0)  # reads address 0: SIGSEGV
        if msg == "raise":
            raise ValueError("boom")
        if msg == "badreturn":
            return 42  # type: ignore[return-value]
        if msg == "apperror":
            raise TApplicationException(TApplicationException.UNKNOWN, "app says no")
        if msg == "pid":
            return f"{os.getpid()}:{threading.get_ident()}"
        if msg == "nice":
            return str(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        if msg.startswith("gate:"):
            return wait_for_gate(msg.removeprefix("gate:"))
        return msg

    def parse(self, sentence: str) -> Any:
        if sentence == "badexc":
            raise _t.ParseError(message=12345, unknown_words="not a list")
        raise _t.ParseError(message=f"cannot parse {sentence!r}", unknown_words=["x"])

    def burn(self, millis: int) -> int:
        end = time.perf_counter() + millis / 1000
        n = 0
        while time.perf_counter() < end:
            n += 1
        return n

    def crunch(self, n: int) -> float:
        return float(n)

    def sleep(self, millis: int) -> float:
        time.sleep(millis / 1000)
        return float(millis)

    def embed(self, texts: list[str]) -> list[list[float]]:
        return [[float(len(t))] for t in texts]


class BatchedHandler(Handler):
    """``embed`` is batched; a text ``fail`` makes its whole batch raise, ``slow`` makes it
    take 2 s, ``gate:PATH`` holds it until its :class:`gates.Gate` opens."""

    batches: list[int] = []

    @batched(max_batch=8, max_wait_ms=50)
    def embed(self, calls: list[list[str]]) -> list[Any]:  # type: ignore[override]
        if any("fail" in texts for texts in calls):
            raise RuntimeError("batch failed")
        if any("slow" in texts for texts in calls):
            time.sleep(2.0)
        for texts in calls:
            for text in texts:
                if text.startswith("gate:"):
                    wait_for_gate(text.removeprefix("gate:"))
        return [
            [[float(len(t)), float(len(calls))] for t in texts]
            if "bad" not in texts
            else _t.InvalidArgument(message="bad text")
            for texts in calls
        ]
