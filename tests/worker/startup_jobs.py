"""Job factories for the process pool's start-up tests (test_hardening.py).

The pool's children are started with the ``spawn`` method, which hands them the test's
``sys.path``; the test puts this directory on it, so that they import this module by name.

- :func:`gated` records its process id as a file, waits for its gate, then builds :func:`echo`:
  a child that a test can kill while it is provably still starting.
- :func:`dies` exits while starting, every time: a handler that crashes as it loads.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gates import wait_for_gate

#: Name of the gate file, in the directory given to :func:`gated`.
GATE = "gate"


def echo(payload: Any) -> Any:
    return payload


def gated(directory: str) -> Callable[[Any], Any]:
    """Touch ``directory/pid-<pid>``, wait until ``directory/gate`` exists, return :func:`echo`."""
    Path(directory, f"pid-{os.getpid()}").touch()
    wait_for_gate(str(Path(directory, GATE)))
    return echo


def dies(code: int) -> Callable[[Any], Any]:
    """Exit at once with status ``code``, as a handler that crashes while it loads."""
    os._exit(code)
