"""Stopping on SIGTERM/SIGINT, for the command-line entry points: drain delay, drain, force.

The first signal sets the :class:`Stop` the caller awaits. The caller then runs the drain
timeline (:func:`drain_delay`, then its own drain):

1. at the signal, readiness fails at once (``/readyz`` answers 503) but everything is still
   served, for the configured drain delay: the time load balancers, Kubernetes endpoints and
   DNS take to stop sending new work. SIGTERM is what a supervisor (Kubernetes, Docker,
   systemd) sends to stop a process, so it gets the delay; SIGINT is a person at a terminal
   pressing Ctrl-C, with no load balancer to wait for, so it skips it;
2. then the server stops accepting and drains the work in flight within its grace period;
3. then the process exits 0.

A second signal, at any point, exits the process at once (status 1), as a user pressing
Ctrl-C twice expects.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["Stop", "drain_delay", "graceful_exit"]

log = logging.getLogger("offloop")


class Stop:
    """Set by the first stop signal; says which one it was.

    Attributes:
        signal: the signal that set it; None while unset, or when set by :meth:`set`.
    """

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self.signal: signal.Signals | None = None

    def set(self, signum: signal.Signals | None = None) -> None:
        """Set it (``signum``: the signal that asks)."""
        if not self._event.is_set():
            self.signal = signum
            self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    async def wait(self) -> None:
        """Return once it is set."""
        await self._event.wait()

    @property
    def delayed(self) -> bool:
        """Whether the drain delay applies: the stop came from SIGTERM, a supervisor's."""
        return self.signal is signal.SIGTERM


@contextmanager
def graceful_exit(loop: asyncio.AbstractEventLoop | None = None) -> Iterator[Stop]:
    """Install SIGTERM/SIGINT handlers on the running loop; yield the :class:`Stop` they set.

    The first signal sets it; a second one exits the process at once with status 1.
    """
    loop = loop or asyncio.get_running_loop()
    stop = Stop()

    def on_signal(signum: int) -> None:
        name = signal.Signals(signum).name
        if stop.is_set():
            log.warning("second %s: exiting now", name)
            os._exit(1)
        log.info("%s received: shutting down (send it again to exit now)", name)
        stop.set(signal.Signals(signum))

    sigs = (signal.SIGTERM, signal.SIGINT)
    for sig in sigs:
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        yield stop
    finally:
        for sig in sigs:
            loop.remove_signal_handler(sig)


async def drain_delay(seconds: float, what: str) -> None:
    """Keep serving for ``seconds`` while readiness fails (step 1 of the timeline above).

    Args:
        seconds: the drain delay; 0 returns at once.
        what: who waits, for the log (``"worker"``, ``"gateway"``).
    """
    if seconds <= 0:
        return
    log.info(
        "%s not ready (/readyz fails): still serving for the drain delay of %g s", what, seconds
    )
    await asyncio.sleep(seconds)
