"""A worker's health as its admin port reports it: live (``/livez``) and ready (``/readyz``).

Sans-I/O: it reads the pool's statistics and a clock handed to it, nothing else.

- **Ready** (``/readyz``): the worker is set up (the pool started, which means every pool
  worker built the handler: a handler loads and warms its model in its constructor), at least
  one pool worker is alive, and it is not draining (it fails at once on SIGTERM, while calls
  are still served for the drain delay).
- **Live** (``/livez``): the pool makes progress. A pool is *stuck* while every live worker
  is busy (or none is alive) and no call finishes; it is *wedged* once it has been seen stuck
  for longer than ``stuck_after`` seconds, which the worker sets to twice ``call_timeout``,
  the longest a call may run: a process pool kills a call past it (the call finishes, as a
  failure, and the child is replaced), so only a pool whose supervision is broken, or a thread
  pool whose threads are all stuck in calls that never return, stays stuck that long.
  Draining is not a liveness failure: the process is alive and finishing its calls.

Progress is judged from what the pools expose (:class:`~offloop.runtime.base.PoolStats`):
``completed``, the jobs that ran to an end (not the calls that left the queue unrun: expired,
cancelled, their caller gone, which keep moving while traffic flows to a wedged pool). It is sampled
when a probe asks, so a wedge is reported after ``stuck_after`` seconds of probes that all
found the pool stuck, never on one sample.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from offloop.runtime.base import PoolStats

__all__ = ["Verdict", "WorkerHealth"]


@dataclass(frozen=True, slots=True)
class Verdict:
    """One probe's answer.

    Attributes:
        ok: whether the probe passes (200) or fails (503).
        reason: why, in a few words (the body of the answer).
    """

    ok: bool
    reason: str


class WorkerHealth:
    """Readiness and liveness of one worker.

    Args:
        stats: the pool's statistics.
        stuck_after: seconds the pool may be seen stuck before it counts as wedged.
        clock: monotonic seconds (a fake one in tests).
    """

    def __init__(
        self,
        stats: Callable[[], PoolStats],
        *,
        stuck_after: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not stuck_after > 0:
            raise ValueError("stuck_after must be positive")
        self._stats = stats
        self._clock = clock
        self.stuck_after = stuck_after
        #: Set once the worker is set up and listens.
        self.started = False
        #: Set at the first stop signal: readiness fails from then on.
        self.draining = False
        self._finished: int | None = None
        self._progress = clock()

    def ready(self) -> Verdict:
        """Whether the worker should be sent calls."""
        if not self.started:
            return Verdict(False, "starting")
        if self.draining:
            return Verdict(False, "draining")
        if self._stats().alive < 1:
            return Verdict(False, "no pool worker alive")
        return Verdict(True, "ok")

    def live(self) -> Verdict:
        """Whether the process should be left running (else restarted)."""
        now = self._clock()
        stats = self._stats()
        # Item 5: jobs that ran to an end, not admissions less slots in use (which move
        # with every call refused, expired or cancelled in the queue while the pool is wedged).
        finished = stats.completed
        if finished != self._finished or stats.busy < stats.alive or not self.started:
            # A call finished since the last look, or a worker is free: it moves.
            self._progress = now
        self._finished = finished
        stuck = now - self._progress
        if stuck > self.stuck_after:
            return Verdict(
                False,
                f"pool wedged: {stats.busy} of {stats.alive} workers busy and no call "
                f"finished for {stuck:.0f} s",
            )
        return Verdict(True, "ok")
