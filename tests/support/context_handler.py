"""A TextLab handler that shows the call's context, for the header transport's tests
(imported by child processes as ``context_handler:Handler``).

``ping(msg)``: ``context`` returns the request id, principal and whether a deadline is set,
as JSON; ``mark:PATH`` appends a line to PATH and returns ``"marked"`` (a call that never ran
leaves no line); ``until-deadline`` calls :func:`offloop.check_deadline` in a loop (for at
most a minute) and so ends by raising ``DeadlineExceeded``; ``gate:PATH`` waits for its
gate; anything else as :class:`faulty.Handler`.
"""

from __future__ import annotations

import json
import threading
import time

import faulty

import offloop


class Handler(faulty.Handler):
    def ping(self, msg: str) -> str:
        if msg == "context":
            left = offloop.time_left()
            return json.dumps(
                {
                    "request_id": offloop.current_request_id(),
                    "principal": offloop.current_principal(),
                    "deadline": offloop.deadline() is not None,
                    "time_left": left,
                }
            )
        if msg.startswith("mark:"):
            with open(msg.removeprefix("mark:"), "a") as f:
                f.write("ran\n")
            return "marked"
        if msg == "until-deadline":
            stop = threading.Event()
            end = time.monotonic() + 60
            while time.monotonic() < end:
                offloop.check_deadline()
                stop.wait(0.005)
            return "no deadline"
        return super().ping(msg)
