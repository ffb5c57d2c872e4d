"""A TextLab handler for the cancellation tests (issue 13), imported by pool children as
``cancel_handler:Handler`` and ``cancel_handler:BatchedHandler``.

``ping("until-cancelled:PATH")`` writes ``PATH.running`` as it starts, then waits (at most a
minute) until :func:`offloop.cancelled` is true, and writes to ``PATH`` what it saw: that
``cancelled()`` turned true and what :func:`offloop.check_deadline` raised then. Anything
else as :class:`context_handler.Handler` (``mark:PATH``, ``gate:PATH``...).
"""

from __future__ import annotations

import threading
import time

import context_handler
import faulty

import offloop


class Handler(context_handler.Handler):
    def ping(self, msg: str) -> str:
        if msg.startswith("until-cancelled:"):
            path = msg.removeprefix("until-cancelled:")
            with open(f"{path}.running", "w") as f:
                f.write("running\n")
            pause = threading.Event()
            end = time.monotonic() + 60
            while not offloop.cancelled() and time.monotonic() < end:
                pause.wait(0.005)
            seen = f"cancelled={offloop.cancelled()}"
            try:
                offloop.check_deadline()
            except offloop.DeadlineExceeded as exc:
                seen += f" check_deadline raised {type(exc).__name__}"
            with open(path, "w") as f:
                f.write(seen + "\n")
            return seen
        return super().ping(msg)


class BatchedHandler(faulty.BatchedHandler):
    """``faulty``'s batched ``embed`` (its values say each batch's size)."""
