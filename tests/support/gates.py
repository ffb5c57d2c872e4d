"""Gates: calls a test holds running for as long as it needs, then lets finish.

A gated call (``faulty``'s ``ping("gate:PATH")``, the pool tests' ``("gate", PATH)`` job)
waits until the gate's file exists, in a thread or a child process alike. What must happen
while a call runs (a refusal, a deadline, a shutdown) is then checked while the call provably
still runs, whatever the machine's speed, instead of racing a sleep of a guessed length.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from types import TracebackType

__all__ = ["GATE_TIMEOUT", "Gate", "wait_for_gate"]

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
    """Holds the calls given :attr:`message` (``faulty``'s ``ping``, or a text of its batched
    ``embed``) or :attr:`job` (a job of ``jobs``) until :meth:`open`. It is a file, so that
    pool children see it too. As a context manager it opens at the end, whatever happened,
    so that no call stays held.

    Args:
        directory: where the gate's file goes (a test's ``tmp_path``).
        name: tells the gates of one test apart.
    """

    def __init__(self, directory: Path, name: str = "gate") -> None:
        self.path = Path(directory) / name
        self.message = f"gate:{self.path}"
        self.job = ("gate", str(self.path))

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
