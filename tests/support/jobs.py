"""Job functions for the pool tests; child processes import them as ``jobs``.

A job is a ``(command, argument)`` pair: ``("sleep", seconds)`` sleeps and returns the
seconds, ``("gate", path)`` waits for its :class:`gates.Gate` to open and returns
``"opened"``, ``("pid", None)`` returns the process id, ``("policy", None)`` the running
thread's scheduling policy and niceness, ``("raise", text)`` raises
ValueError, anything else returns its argument.
"""

from __future__ import annotations

import os
import time
from typing import Any

from gates import wait_for_gate


def run(job: tuple[str, Any]) -> Any:
    command, arg = job
    if command == "sleep":
        time.sleep(arg)
        return arg
    if command == "gate":
        return wait_for_gate(arg)
    if command == "pid":
        return os.getpid()
    if command == "policy":
        return os.sched_getscheduler(0), os.getpriority(os.PRIO_PROCESS, 0)
    if command == "raise":
        raise ValueError(arg)
    return arg


def factory() -> Any:
    """Builds the job function (once per worker)."""
    return run


def failing_factory() -> Any:
    """A handler that cannot start."""
    raise RuntimeError("cannot start this handler")
