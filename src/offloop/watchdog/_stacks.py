"""Reading the loop thread's stack: which frame is the blocking code, formatted for a log."""

from __future__ import annotations

import asyncio
import os
import sys
import sysconfig
import traceback
import types

from offloop.watchdog.config import IDLE_POLL


def _internal_prefixes() -> tuple[str, ...]:
    """Where the frames live that never *are* the blocking code, only what called it."""
    prefixes = [os.path.join(os.path.dirname(os.path.abspath(__file__)), "")]
    stdlib = sysconfig.get_paths().get("stdlib")
    if stdlib:
        prefixes.append(os.path.join(os.path.realpath(stdlib), ""))
        prefixes.append(os.path.join(stdlib, ""))
    for name in ("uvloop", "tornado", "blockbuster"):
        module = sys.modules.get(name)
        file = getattr(module, "__file__", None)
        if file:
            prefixes.append(os.path.join(os.path.dirname(file), ""))
    return tuple(prefixes)


def _is_internal(filename: str, prefixes: tuple[str, ...]) -> bool:
    if filename.startswith("<"):  # <frozen importlib._bootstrap> and the like
        return True
    if "site-packages" in filename or "dist-packages" in filename:
        # A stdlib prefix may contain site-packages (no virtualenv); only named packages count.
        return any(filename.startswith(p) for p in prefixes if "-packages" in p)
    return filename.startswith(prefixes)


def _describe(frame: types.FrameType, lineno: int) -> str:
    module = frame.f_globals.get("__name__", "?")
    code = frame.f_code
    return f"{module}:{code.co_qualname} ({code.co_filename}:{lineno})"


def _dispatch_codes(frame: types.FrameType | None) -> frozenset[types.CodeType]:
    """The code of the frames that run a callback: ``frame``, the caller of one, and below.

    ``asyncio.events.Handle._run`` is left out: it is on the stack only while a callback runs,
    so a C function scheduled as a callback (``call_soon(time.sleep, 1)``) is not mistaken for
    an idle loop. uvloop calls callbacks from C, where that cannot be told apart.
    """
    if frame is not None and frame.f_code is asyncio.events.Handle._run.__code__:
        frame = frame.f_back
    codes = set()
    while frame is not None:
        codes.add(frame.f_code)
        frame = frame.f_back
    return frozenset(codes)


def _format_stack(
    frame: types.FrameType, depth: int, dispatch: frozenset[types.CodeType]
) -> tuple[str, str]:
    """Format the innermost ``depth`` frames from ``frame`` and name the blocking one.

    ``dispatch`` holds the code of the frames under a heartbeat callback: the loop's own
    machinery and whatever started it. If the innermost frame, past the ``selectors`` module
    asyncio polls with, is one of them, no code on the loop is running: :data:`IDLE_POLL`.
    """
    # One quick pass first: the thread may move on while we look (not while it is stalled).
    walked: list[tuple[types.FrameType, int]] = []
    f: types.FrameType | None = frame
    while f is not None:
        walked.append((f, f.f_lineno))
        f = f.f_back
    summary = traceback.StackSummary.extract(iter(walked[:depth]), lookup_lines=True)
    summary.reverse()  # outermost first, as tracebacks read
    stack = "".join(summary.format()).rstrip("\n")

    inner = next((w for w in walked if w[0].f_globals.get("__name__") != "selectors"), None)
    if inner is not None and inner[0].f_code in dispatch:
        return stack, IDLE_POLL
    prefixes = _internal_prefixes()
    culprit = next(
        (w for w in walked if not _is_internal(w[0].f_code.co_filename, prefixes)), walked[0]
    )
    return stack, _describe(*culprit)
