"""Waiting for a condition instead of sleeping, from a thread or a coroutine.

A test that sleeps "long enough" for something to happen is slow on a fast machine and
flaky on a slow one; these poll the condition itself, and fail the test with the last value
seen once ``timeout`` seconds have passed. The timeout only bounds a hang: it is not a claim
about how fast anything is.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TypeVar

__all__ = ["wait_until", "wait_until_async"]

T = TypeVar("T")


def wait_until(predicate: Callable[[], T], timeout: float, interval: float = 0.02) -> T:
    """Poll ``predicate`` until it returns something true; returns it, or fails after
    ``timeout`` seconds with the last value. Blocks the calling thread: never call it on an
    event loop (see :func:`wait_until_async`)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            assert value, f"condition not met within {timeout} s (last value {value!r})"
            return value
        time.sleep(interval)


async def wait_until_async(
    predicate: Callable[[], T], timeout: float, interval: float = 0.005
) -> T:
    """:func:`wait_until` for a coroutine: the loop keeps running while it polls."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            assert value, f"condition not met within {timeout} s (last value {value!r})"
            return value
        await asyncio.sleep(interval)
