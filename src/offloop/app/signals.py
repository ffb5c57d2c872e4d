"""Two-stage shutdown on SIGTERM/SIGINT, for the command-line entry points.

The first signal sets an event the caller awaits, which then stops accepting and drains;
a second signal exits the process at once (status 1), as a user pressing Ctrl-C twice expects.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["graceful_exit"]

log = logging.getLogger("offloop")


@contextmanager
def graceful_exit(loop: asyncio.AbstractEventLoop | None = None) -> Iterator[asyncio.Event]:
    """Install SIGTERM/SIGINT handlers on the running loop; yield the 'stop' event."""
    loop = loop or asyncio.get_running_loop()
    stop = asyncio.Event()

    def on_signal(signum: int) -> None:
        if stop.is_set():
            log.warning("second %s: exiting now", signal.Signals(signum).name)
            os._exit(1)
        log.info(
            "%s received: shutting down (send it again to exit now)", signal.Signals(signum).name
        )
        stop.set()

    sigs = (signal.SIGTERM, signal.SIGINT)
    for sig in sigs:
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        yield stop
    finally:
        for sig in sigs:
            loop.remove_signal_handler(sig)
