"""The watchdog's settings and what it records: :class:`WatchdogConfig`, :class:`StallRecord`."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

__all__ = ["IDLE_POLL", "LAG_BUCKETS", "STALL_BUCKETS", "StallRecord", "WatchdogConfig"]

# Heartbeats per stall threshold: a stall's measured length is short by at most one beat, so a
# tenth of the threshold; a beat costs the loop 3-5 us, so 100 beats/s cost under 0.05%.
_BEATS_PER_THRESHOLD = 10

#: The ``blocking_function`` of a stall during which no code on the loop was running: the loop
#: thread sat in the loop's own poll or bookkeeping, so it was the process that did not get
#: the CPU (an overloaded host, a paused VM or container, swapping), not a blocking call.
IDLE_POLL = "<event loop poll>"

# From 0.1 ms (a healthy loop) to 5 s (a loop that is effectively dead).
LAG_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)
# A stall is at least the threshold (100 ms by default); a minute is as long as anyone waits.
STALL_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


@dataclass(frozen=True)
class WatchdogConfig:
    """How a :class:`LoopWatchdog` samples lag and detects stalls.

    Attributes:
        lag_interval: seconds between two samples of the loop-lag histogram and gauge. Each
            sample is the worst lag seen since the previous one.
        stall_threshold: the loop has stalled when it has not turned for longer than this
            many seconds (``--stall-threshold``).
        check_interval: seconds between two looks of the watchdog thread while a stall lasts
            or the loop is paused (a healthy loop is looked at once per threshold); ``None``
            means a quarter of ``stall_threshold``. At most ``stall_threshold``.
        log_stacks: whether the warning logged while a stall lasts includes the loop thread's
            stack (the blocking function is always named).
        max_stack_depth: the number of innermost frames kept in a stall's stack.
        max_records: how many recent :class:`StallRecord` objects are kept; older ones are
            dropped (they stay counted in the metrics).
        enabled: whether the gateway (and ``offloop up``) starts a watchdog; a
            :class:`LoopWatchdog` made by hand ignores it.
    """

    lag_interval: float = 0.25
    stall_threshold: float = 0.1
    check_interval: float | None = None
    log_stacks: bool = True
    max_stack_depth: int = 40
    max_records: int = 100
    enabled: bool = field(default=True, metadata={"flag": "watchdog"})

    def __post_init__(self) -> None:
        for name in ("lag_interval", "stall_threshold"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number of seconds, not {value!r}")
        if self.check_interval is not None and not (
            math.isfinite(self.check_interval) and 0 < self.check_interval <= self.stall_threshold
        ):
            raise ValueError(
                "check_interval must be positive and at most stall_threshold "
                f"({self.stall_threshold!r}), not {self.check_interval!r}"
            )
        if self.max_stack_depth < 1:
            raise ValueError(f"max_stack_depth must be at least 1, not {self.max_stack_depth!r}")
        if self.max_records < 1:
            raise ValueError(f"max_records must be at least 1, not {self.max_records!r}")

    @property
    def heartbeat_interval(self) -> float:
        """Seconds between two heartbeats.

        A stall is measured by the lateness of the first beat after it, which is short of the
        true length by up to one beat: a tenth of the threshold at most.
        """
        return min(self.lag_interval, self.stall_threshold / _BEATS_PER_THRESHOLD)

    @property
    def effective_check_interval(self) -> float:
        """Seconds between two looks of the watchdog thread while a stall lasts."""
        if self.check_interval is None:
            return self.stall_threshold / 4
        return self.check_interval


@dataclass(frozen=True)
class StallRecord:
    """One stall of the loop.

    Attributes:
        started_at: ``time.monotonic()`` when the loop was due to turn and did not.
        duration: how long the loop did not turn, in seconds: the lateness of the first
            heartbeat after the stall, so short by at most one heartbeat interval (a tenth of
            the threshold); ``None`` while the stall goes on.
        stack: the formatted stack of the loop thread taken during the stall, innermost frame
            last; empty when none could be taken.
        blocking_function: the innermost frame of ``stack`` outside the standard library,
            asyncio, uvloop, Tornado and this module, as ``module:qualname (file:line)``; the
            innermost frame when all are internal; :data:`IDLE_POLL` when no code on the loop
            was running (the process was starved of CPU); empty when there is no stack.
        seen_live: whether the watchdog saw the stall while it was happening. A stall that
            ended between two checks, or while C code held the GIL, is only known afterwards.
        cpu_share: the share of the stall the loop thread spent on a CPU (measured from the
            beat before the stall to the one after it): near 1 for CPU-bound code, near 0 for
            a blocking wait (sleep, I/O, a lock); in between when both happened, or when the
            host starved the process of CPU. ``None`` while ongoing, or when the loop was
            stopped before it could beat again.
    """

    started_at: float
    duration: float | None
    stack: str
    blocking_function: str
    seen_live: bool = True
    cpu_share: float | None = None
