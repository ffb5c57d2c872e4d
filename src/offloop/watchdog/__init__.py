"""A watchdog for event loops: loop lag, and stalls caught while they happen.

One blocking call on an event loop (CPU work, ``time.sleep``, a sync socket or file read)
stalls every request it serves at once. Tornado 6 dropped its blocking-log threshold and
asyncio's debug mode costs too much to leave on, so :class:`LoopWatchdog` does the job for
any asyncio loop: plain asyncio, uvloop, and Tornado's ``IOLoop`` (which runs on asyncio).

How it works. Two parties share a few attributes and no lock:

- **The heartbeat**, a plain ``loop.call_later`` callback chain on the loop (no task: that is
  the cheapest thing a loop can run), every ``min(lag_interval, stall_threshold / 10)``
  seconds. Each beat publishes ``(seq, time.monotonic(), thread CPU time)`` and measures its
  own *lag*, how late it fired. Every ``lag_interval`` the worst lag of the beats since the
  last sample goes into a histogram and a gauge, so a short stall between two samples still
  shows. A beat later than ``stall_threshold`` also publishes itself, and the beat before it,
  as *late*: that is the loop's own account of a stall, with its exact length.
- **The watchdog thread** sleeps until the moment the loop, if it has not turned since its last
  beat, would have stalled: the next beat's due time plus the threshold. Then it looks. If a
  newer beat has come, the loop is fine and it sleeps again (about ten looks a second at the
  default threshold). If not, the loop is stalled right now: the thread takes the stack of the
  loop's thread (``sys._current_frames``), logs it once, and looks every ``check_interval``
  until a newer beat shows that the loop turned. The stall's length is then the lag of that
  beat, as the loop measured it; the stall is logged, counted and kept in
  :attr:`LoopWatchdog.records`.

A stall the thread could not see while it lasted (C code that holds the GIL, or a process
that got no CPU at all) is still found afterwards through the late beat: counted, logged and
recorded, without a stack. Each stall also carries the share of it the loop thread spent on a
CPU, which tells computing (near 100%) from waiting (near 0%); and a stack with no code of
the loop's running, only its poll, is named :data:`IDLE_POLL`: the host starved the process,
nothing on the loop blocked it. A loop that is not running (stopped between
``run_until_complete`` calls, say) is paused, not stalled.

The thread only reads what the loop writes and the loop never waits for the thread, so the
watchdog cannot itself stall the loop. The loop pays one small callback (3-5 microseconds)
per beat, 100 a second at the default threshold; the thread looks about 10 times a second.
"""

from offloop.watchdog._watchdog import LoopWatchdog, watch_tornado
from offloop.watchdog.config import (
    IDLE_POLL,
    LAG_BUCKETS,
    STALL_BUCKETS,
    StallRecord,
    WatchdogConfig,
)

__all__ = [
    "IDLE_POLL",
    "LAG_BUCKETS",
    "STALL_BUCKETS",
    "LoopWatchdog",
    "StallRecord",
    "WatchdogConfig",
    "watch_tornado",
]
