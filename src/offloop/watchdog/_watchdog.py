"""The loop watchdog itself: the heartbeat on the loop and the thread that watches it.

See :mod:`offloop.watchdog` for how the two cooperate.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import sys
import threading
import time
import types
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from offloop.watchdog._stacks import _dispatch_codes, _format_stack
from offloop.watchdog.config import (
    IDLE_POLL,
    LAG_BUCKETS,
    STALL_BUCKETS,
    StallRecord,
    WatchdogConfig,
)

if TYPE_CHECKING:
    from tornado.ioloop import IOLoop

__all__ = ["LoopWatchdog", "watch_tornado"]

#: Every watchdog logs here unless given a logger of its own.
LOGGER = logging.getLogger("offloop.watchdog")
_STARVED = " (an overloaded host, a paused VM or container, or swapping)"
_IDLE_HINT = (
    " (no code on the loop is running: the process is not getting the CPU; an overloaded host,"
    " a paused VM or container, or swapping)"
)
# The end of a stall in the loop's poll: nothing ran on the loop and its thread was hardly on
# a CPU, so the process was not scheduled; "0% of it on CPU" alone reads as the loop's fault.
_IDLE_END_HINT = (
    ": the loop was idle and the process was not scheduled, so the machine is busy, not the loop"
)
# A stall with at least this share of it on CPU was computing, not waiting.
_CPU_BOUND = 0.5
# How long after the earliest moment a stall can be declared the thread looks: timer slack.
_WAKE_MARGIN = 0.001
# Late beats kept for the thread to account for; more than this many stalls between two of
# its looks (10 a second) would mean the thread itself is starved.
_MAX_LATE = 16
# How long stop() waits for the watchdog thread; it wakes at once, so this is only a guard.
_JOIN_TIMEOUT = 5.0


class _Beat(NamedTuple):
    """One heartbeat, as the loop thread published it."""

    seq: int
    at: float  # time.monotonic()
    cpu: float  # time.thread_time() of the loop thread


class _Late(NamedTuple):
    """A beat that came more than the threshold late, and the beat before it."""

    beat: _Beat
    previous: _Beat
    due: float
    lag: float

    @property
    def cpu_share(self) -> float | None:
        wall = self.beat.at - self.previous.at
        if wall <= 0:
            return None
        return min(1.0, max(0.0, (self.beat.cpu - self.previous.cpu) / wall))


@dataclass(frozen=True)
class _Stall:
    """The stall the watchdog thread is watching: the beat after ``seq`` has not come."""

    seq: int
    started_at: float
    blocking_function: str


class LoopWatchdog:
    """Measures an event loop's lag and reports the loop's stalls while they happen.

    Use it as ``async with LoopWatchdog(config, registry=...)`` inside the loop, or call
    :meth:`start` on the loop's thread and :meth:`stop` at shutdown. One watchdog watches one
    loop once; it owns one daemon thread and one timer handle, and :meth:`stop` ends both (the
    thread also ends by itself once the loop is closed). The four metrics are registered on
    ``registry`` (a private registry when none is given), so a registry holds one watchdog.

    Args:
        config: thresholds and intervals.
        registry: where the metrics are registered.
        logger: where stalls are logged (``offloop.watchdog`` by default).
        namespace: the prefix of the metric names (``offloop_loop_lag_seconds``...).
    """

    def __init__(
        self,
        config: WatchdogConfig | None = None,
        *,
        registry: CollectorRegistry | None = None,
        logger: logging.Logger | None = None,
        namespace: str = "offloop",
    ) -> None:
        self.config = WatchdogConfig() if config is None else config
        self.registry = CollectorRegistry() if registry is None else registry
        self._log = LOGGER if logger is None else logger
        self._lag = Histogram(
            "loop_lag_seconds",
            "How late the event loop ran a timer, worst per sample.",
            namespace=namespace,
            buckets=LAG_BUCKETS,
            registry=self.registry,
        )
        self._lag_last = Gauge(
            "loop_lag_last_seconds",
            "The last loop-lag sample.",
            namespace=namespace,
            registry=self.registry,
        )
        self._stalls = Counter(
            "loop_stalls",
            "Stalls of the event loop longer than the stall threshold.",
            namespace=namespace,
            registry=self.registry,
        )
        self._stall_seconds = Histogram(
            "loop_stall_seconds",
            "How long the event loop did not turn, per stall.",
            namespace=namespace,
            buckets=STALL_BUCKETS,
            registry=self.registry,
        )
        self._period = self.config.heartbeat_interval
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread_id = 0
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._timer: asyncio.Handle | None = None
        self._records: collections.deque[StallRecord] = collections.deque(
            maxlen=self.config.max_records
        )
        self._records_lock = threading.Lock()
        self._stalls_total = 0
        # Written only by the loop thread, one attribute store each: readers see whole tuples.
        self._beat: _Beat | None = None
        self._late: collections.deque[_Late] = collections.deque(maxlen=_MAX_LATE)
        # Written only by the watchdog thread, read by the loop: start the next lag afresh.
        self._resync = False
        # Loop-thread state: the frames that call callbacks, and lag samples.
        self._dispatch: frozenset[types.CodeType] = frozenset()
        self._worst_lag = 0.0
        self._next_sample = 0.0

    # -- public API ---------------------------------------------------------------------------

    def start(self, loop: asyncio.AbstractEventLoop | IOLoop | None = None) -> None:
        """Start watching ``loop``; call this on the thread that runs it.

        Args:
            loop: an asyncio loop (uvloop included) or a Tornado ``IOLoop``; the running loop
                when ``None``. The loop need not be running yet: the watchdog stays quiet
                until it does.

        Raises:
            RuntimeError: if the watchdog was started before, if ``loop`` is ``None`` and no
                loop is running, or if ``loop`` runs on another thread.
            TypeError: if ``loop`` is neither an asyncio loop nor a Tornado IOLoop.
        """
        if self._loop is not None:
            raise RuntimeError("a LoopWatchdog can be started only once")
        aloop = _asyncio_loop(loop)
        if aloop.is_running() and _running_loop() is not aloop:
            raise RuntimeError("LoopWatchdog.start() must be called on the loop's own thread")
        self._loop = aloop
        self._loop_thread_id = threading.get_ident()
        self._timer = aloop.call_soon(self._tick)
        self._thread = threading.Thread(target=self._watch, name="offloop-watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the heartbeat and the watchdog thread; safe to call more than once.

        A stall still open is ended with the time it has lasted so far. Call it on the loop's
        thread; from another thread the timer is cancelled through the loop.
        """
        if self._loop is None or self._stopping.is_set():
            return
        self._stopping.set()
        if threading.get_ident() == self._loop_thread_id:
            self._cancel_timer()
        elif not self._loop.is_closed():
            # If it closes in the meantime there is nothing left to run the timer anyway.
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._cancel_timer)
        if self._thread is not None:
            # The thread waits on _stopping, so it returns at once.
            self._thread.join(_JOIN_TIMEOUT)

    async def __aenter__(self) -> LoopWatchdog:
        self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def records(self) -> list[StallRecord]:
        """The most recent stalls, oldest first; an ongoing one has ``duration=None``."""
        with self._records_lock:
            return list(self._records)

    @property
    def stalls_total(self) -> int:
        """How many stalls have ended since :meth:`start`."""
        return self._stalls_total

    @property
    def running(self) -> bool:
        """Whether the watchdog has been started and not stopped."""
        return self._loop is not None and not self._stopping.is_set()

    # -- the loop side --------------------------------------------------------------------------

    def _tick(self) -> None:
        """The heartbeat: publish a beat, measure its lag, schedule the next one."""
        if self._stopping.is_set():
            return
        loop = self._loop
        assert loop is not None
        previous = self._beat
        beat = _Beat(
            1 if previous is None else previous.seq + 1, time.monotonic(), time.thread_time()
        )
        resync = self._resync
        if previous is None or resync:
            # First beat, or the loop was paused: there is no due time to be late for. Note
            # what runs callbacks (it may differ after a pause), to tell an idle loop apart.
            self._dispatch = _dispatch_codes(sys._getframe(1))
            self._next_sample = beat.at + self.config.lag_interval
        else:
            due = previous.at + self._period
            lag = max(0.0, beat.at - due)
            if lag > self.config.stall_threshold:
                self._late.append(_Late(beat, previous, due, lag))
            if lag > self._worst_lag:
                self._worst_lag = lag
            if beat.at >= self._next_sample:
                self._lag.observe(self._worst_lag)
                self._lag_last.set(self._worst_lag)
                self._worst_lag = 0.0
                self._next_sample = beat.at + self.config.lag_interval
        self._beat = beat
        if resync:
            # Only now, after the fresh beat is published, may the thread look again.
            self._resync = False
        self._timer = loop.call_later(self._period, self._tick)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # -- the watchdog thread ------------------------------------------------------------------

    def _watch(self) -> None:
        """The watchdog thread: look at the last beat when a stall could first be declared."""
        loop = self._loop
        assert loop is not None
        threshold = self.config.stall_threshold
        check = self.config.effective_check_interval
        stall: _Stall | None = None
        handled_late = 0  # seq of the last late beat accounted for
        timeout = check
        while not self._stopping.wait(timeout):
            timeout = check
            closed = loop.is_closed()
            if closed or not loop.is_running():
                # Not turning because nobody runs it: not a stall. Ask the loop to start its
                # lag afresh, and wait until it has (its next beat is then newer than this).
                if stall is not None:
                    # It stopped right after the blocking call; it ended by now at the latest.
                    self._end_stall(stall, time.monotonic() - stall.started_at, None)
                    stall = None
                if closed:
                    break  # a closed loop never runs again: nothing left to watch
                self._resync = True
                continue
            # Late beats first: the loop publishes one before its beat, so none is newer.
            lates = [late for late in list(self._late) if late.beat.seq > handled_late]
            beat = self._beat
            if beat is None or self._resync:
                continue
            now = time.monotonic()
            if lates:
                handled_late = lates[-1].beat.seq

            if stall is not None and beat.seq != stall.seq:
                # The loop turned: the stall is over, and the first beat after it measured how
                # late it was.
                ending = next((x for x in lates if x.beat.seq == stall.seq + 1), None)
                if ending is not None:
                    lates.remove(ending)
                    self._end_stall(stall, ending.lag, ending.cpu_share)
                else:  # more late beats than _MAX_LATE since the last look
                    self._end_stall(stall, max(threshold, beat.at - stall.started_at), None)
                stall = None

            for late in lates:
                # A late beat this thread did not see coming: it could not run during the stall
                # (C code held the GIL, or the host starved it) or woke just after it ended.
                self._unseen_stall(late)

            if stall is None:
                due = beat.at + self._period
                overdue = now - due
                if overdue > threshold:
                    stall = self._begin_stall(beat.seq, due, overdue)
                else:
                    # Nothing can be called a stall before then; a beat in between only moves
                    # that moment later, which the next look finds out.
                    timeout = due + threshold - now + _WAKE_MARGIN
        if stall is not None:
            # Stopped by the blocking code itself, before the loop turned again.
            self._end_stall(stall, time.monotonic() - stall.started_at, None)

    def _begin_stall(self, seq: int, started_at: float, overdue: float) -> _Stall:
        stack, culprit = self._loop_stack()
        where = culprit + _IDLE_HINT if culprit == IDLE_POLL else culprit
        if self.config.log_stacks:
            self._log.warning(
                "event loop blocked for %.0f ms so far in %s\n%s", overdue * 1000, where, stack
            )
        else:
            self._log.warning("event loop blocked for %.0f ms so far in %s", overdue * 1000, where)
        self._add_record(StallRecord(started_at, None, stack, culprit))
        return _Stall(seq, started_at, culprit)

    def _end_stall(self, stall: _Stall, duration: float, cpu_share: float | None) -> None:
        share = "" if cpu_share is None else f"; {cpu_share:.0%} of it on CPU"
        if stall.blocking_function == IDLE_POLL and (cpu_share is None or cpu_share < _CPU_BOUND):
            share += _IDLE_END_HINT
        self._log.warning(
            "event loop stall ended after %.0f ms (in %s%s)",
            duration * 1000,
            stall.blocking_function,
            share,
        )
        self._count(duration)
        with self._records_lock:
            for i in range(len(self._records) - 1, -1, -1):
                record = self._records[i]
                if record.started_at == stall.started_at and record.duration is None:
                    self._records[i] = dataclasses.replace(
                        record, duration=duration, cpu_share=cpu_share
                    )
                    break

    def _unseen_stall(self, late: _Late) -> None:
        share = late.cpu_share
        if share is None:
            why = "the watchdog thread could not run"
        elif share >= _CPU_BOUND:
            why = "C code that holds the GIL kept the watchdog thread out"
        else:
            why = "the process did not get the CPU" + _STARVED
        self._log.warning(
            "event loop was blocked for %.0f ms%s, seen only afterwards so without a stack: %s",
            late.lag * 1000,
            "" if share is None else f" ({share:.0%} of it on CPU)",
            why,
        )
        self._count(late.lag)
        self._add_record(StallRecord(late.due, late.lag, "", "", seen_live=False, cpu_share=share))

    def _count(self, duration: float) -> None:
        self._stalls_total += 1
        self._stalls.inc()
        self._stall_seconds.observe(duration)

    def _add_record(self, record: StallRecord) -> None:
        with self._records_lock:
            self._records.append(record)

    def _loop_stack(self) -> tuple[str, str]:
        """Format the loop thread's stack now; return it and its blocking function."""
        frame = sys._current_frames().get(self._loop_thread_id)
        if frame is None:
            return "", ""
        try:
            return _format_stack(frame, self.config.max_stack_depth, self._dispatch)
        finally:
            del frame  # do not keep the loop's frames (and their locals) alive


def watch_tornado(
    ioloop: IOLoop | None = None,
    config: WatchdogConfig | None = None,
    *,
    registry: CollectorRegistry | None = None,
    logger: logging.Logger | None = None,
    namespace: str = "offloop",
) -> LoopWatchdog:
    """Start a :class:`LoopWatchdog` on a Tornado ``IOLoop``; call it on the loop's thread.

    Args:
        ioloop: the loop to watch; ``IOLoop.current()`` when ``None``.
        config: thresholds and intervals.
        registry: where the metrics are registered.
        logger: where stalls are logged.
        namespace: the prefix of the metric names.

    Returns:
        The started watchdog; call its :meth:`~LoopWatchdog.stop` at shutdown.
    """
    if ioloop is None:
        from tornado.ioloop import IOLoop

        ioloop = IOLoop.current()
    watchdog = LoopWatchdog(config, registry=registry, logger=logger, namespace=namespace)
    watchdog.start(ioloop)
    return watchdog


# -- helpers -------------------------------------------------------------------------------------


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _asyncio_loop(loop: asyncio.AbstractEventLoop | IOLoop | None) -> asyncio.AbstractEventLoop:
    """The asyncio loop behind ``loop`` (Tornado 6 IOLoops wrap one)."""
    if loop is None:
        running = _running_loop()
        if running is None:
            raise RuntimeError("no running event loop: pass the loop to LoopWatchdog.start()")
        return running
    if isinstance(loop, asyncio.AbstractEventLoop):
        return loop
    inner = getattr(loop, "asyncio_loop", None)
    if isinstance(inner, asyncio.AbstractEventLoop):
        return inner
    raise TypeError(f"cannot watch {loop!r}: not an asyncio loop nor a Tornado IOLoop")
