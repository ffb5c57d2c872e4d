"""A TextLab handler with faults on demand, for worker tests (imported by child processes).

``ping(msg)`` reacts to commands in ``msg``: ``crash`` exits the process at once,
``segfault`` dies of SIGSEGV,
``raise`` raises ValueError, ``badreturn`` returns a value the IDL cannot encode,
``apperror`` raises a TApplicationException, ``pid`` returns the process id and thread
ident, ``nice`` the niceness of the thread running the call, anything else is echoed.
``gate:PATH`` waits until the file ``PATH`` exists, then returns ``"opened"`` (see
:class:`Gate`). ``sleep``/``burn`` wait or spin; ``parse`` raises the declared ParseError
(``badexc``: one whose fields do not match the IDL, so it cannot be encoded).

A gated call is one a test holds running for as long as it needs, in a thread or a child
process alike, and then lets finish: what must happen while a call runs (a refusal, a
deadline, a shutdown) is then checked while the call provably still runs, whatever the
machine's speed, instead of racing a sleep of a guessed length.
"""

from __future__ import annotations

import ctypes
import os
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from thriftpy2.thrift import TApplicationException

from offloop import batched
from offloop.idl import load_idl

IDL = str(Path(__file__).resolve().parents[2] / "src/offloop/demo/textlab.thrift")
_t = load_idl(IDL)

#: Seconds a gated call waits at most: a test that fails before it opens its gate does not
#: leave a thread or a child process waiting for ever.
GATE_TIMEOUT = 60.0
#: Seconds between two looks at a gate's file.
GATE_POLL = 0.005


def wait_for_gate(path: str) -> str:
    """Wait until the file ``path`` exists; ``"opened"``, or ``"gate timeout"`` after
    ``GATE_TIMEOUT`` seconds."""
    deadline = time.monotonic() + GATE_TIMEOUT
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            return "gate timeout"
        time.sleep(GATE_POLL)
    return "opened"


class Gate:
    """Holds the calls given :attr:`message` (``ping``, or a text of a batched ``embed``)
    until :meth:`open`; a file, so that pool children see it too. As a context manager it
    opens at the end, whatever happened, so that no call stays held.

    Args:
        directory: where the gate's file goes (a test's ``tmp_path``).
        name: tells the gates of one test apart.
    """

    def __init__(self, directory: Path, name: str = "gate") -> None:
        self.path = Path(directory) / name
        self.message = f"gate:{self.path}"

    def open(self) -> None:
        self.path.touch()

    @property
    def is_open(self) -> bool:
        return self.path.exists()

    def __enter__(self) -> Gate:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.open()


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
    take 2 s, ``gate:PATH`` holds it until its :class:`Gate` opens."""

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
