"""The batcher's adaptive wait, without a network or a clock: a run function whose batches
the test holds open with events, and a ``ready`` flag the test sets.

Each test would hang (and fail by pytest's own timeout guard below) rather than pass if a
call waited for the window: every window here is an hour long.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from offloop.worker.batcher import Batcher

HOUR = 3600.0
#: Turns of the loop that let every ready callback run (a call scheduled "at the end of this
#: iteration" has left after one; a few more cost nothing).
SPINS = 10
#: Failure guard only (a broken batcher would hang); never a measurement.
GUARD = 30.0


def on_loop(test: Callable[[], Awaitable[None]]) -> Callable[[], None]:
    """Run an async test on a fresh event loop."""

    @functools.wraps(test)
    def run() -> None:
        async def guarded() -> None:
            await asyncio.wait_for(test(), GUARD)

        asyncio.run(guarded())

    return run


async def spin() -> None:
    for _ in range(SPINS):
        await asyncio.sleep(0)


class Model:
    """A batched method: records each batch; a batch whose first payload is ``"hold"``
    waits until :attr:`release` is set."""

    def __init__(self) -> None:
        self.batches: list[list[Any]] = []
        self.release = asyncio.Event()

    async def run(self, payloads: list[Any]) -> list[Any]:
        self.batches.append(list(payloads))
        if payloads[0] == "hold":
            await self.release.wait()
        return [f"r:{p}" for p in payloads]


@on_loop
async def test_a_lone_call_leaves_without_waiting_for_the_window() -> None:
    model = Model()
    batcher = Batcher(model.run, max_batch=8, max_wait=HOUR)
    assert await asyncio.wait_for(batcher.submit("a"), GUARD) == "r:a"
    assert model.batches == [["a"]]


@on_loop
async def test_calls_that_arrive_together_leave_together() -> None:
    model = Model()
    batcher = Batcher(model.run, max_batch=8, max_wait=HOUR)
    results = await asyncio.wait_for(asyncio.gather(*(batcher.submit(p) for p in "abc")), GUARD)
    assert results == ["r:a", "r:b", "r:c"]
    assert model.batches == [["a", "b", "c"]]


@on_loop
async def test_calls_arriving_while_a_batch_runs_are_merged_into_the_next() -> None:
    model = Model()
    batcher = Batcher(model.run, max_batch=8, max_wait=0.0, slots=1)
    first = asyncio.ensure_future(batcher.submit("hold"))
    await spin()
    assert model.batches == [["hold"]] and batcher.in_flight == 1
    later = [asyncio.ensure_future(batcher.submit(p)) for p in "xy"]
    await spin()
    later.append(asyncio.ensure_future(batcher.submit("z")))
    await spin()
    # No slot: they wait, even past max_wait (0 here), for the running batch.
    assert model.batches == [["hold"]]
    model.release.set()
    assert await asyncio.wait_for(asyncio.gather(first, *later), GUARD) == [
        "r:hold",
        "r:x",
        "r:y",
        "r:z",
    ]
    assert model.batches == [["hold"], ["x", "y", "z"]]
    assert batcher.batches == 2 and batcher.in_flight == 0


@on_loop
async def test_a_full_batch_leaves_even_without_a_free_slot() -> None:
    model = Model()
    batcher = Batcher(model.run, max_batch=2, max_wait=HOUR, slots=1)
    first = asyncio.ensure_future(batcher.submit("hold"))
    await spin()
    full = [asyncio.ensure_future(batcher.submit(p)) for p in "xy"]
    await asyncio.wait_for(asyncio.gather(*full), GUARD)
    assert model.batches == [["hold"], ["x", "y"]]
    model.release.set()
    await asyncio.wait_for(first, GUARD)


@on_loop
async def test_with_slots_free_batches_run_side_by_side() -> None:
    model = Model()
    batcher = Batcher(model.run, max_batch=8, max_wait=HOUR, slots=2)
    first = asyncio.ensure_future(batcher.submit("hold"))
    await spin()
    assert await asyncio.wait_for(batcher.submit("b"), GUARD) == "r:b"
    assert model.batches == [["hold"], ["b"]]
    model.release.set()
    await asyncio.wait_for(first, GUARD)


@on_loop
async def test_a_pool_busy_with_other_work_makes_the_batch_wait_for_the_window() -> None:
    model = Model()
    busy = True
    batcher = Batcher(model.run, max_batch=8, max_wait=HOUR, ready=lambda: not busy)
    call = asyncio.ensure_future(batcher.submit("a"))
    await spin()
    assert model.batches == []  # waiting: the hour-long window, or a flush
    batcher.flush()
    assert await asyncio.wait_for(call, GUARD) == "r:a"
    busy = False
    assert await asyncio.wait_for(batcher.submit("b"), GUARD) == "r:b"
    assert model.batches == [["a"], ["b"]]


@on_loop
async def test_the_window_sends_a_batch_when_the_pool_stays_busy() -> None:
    model = Model()
    batcher = Batcher(model.run, max_batch=8, max_wait=0.0, ready=lambda: False)
    assert await asyncio.wait_for(batcher.submit("a"), GUARD) == "r:a"


@on_loop
async def test_a_failing_batch_fails_its_own_calls_and_the_next_one_runs() -> None:
    async def run(payloads: list[Any]) -> list[Any]:
        if "bad" in payloads:
            raise RuntimeError("batch failed")
        return payloads

    batcher = Batcher(run, max_batch=8, max_wait=HOUR)
    with pytest.raises(RuntimeError):
        await asyncio.wait_for(batcher.submit("bad"), GUARD)
    assert await asyncio.wait_for(batcher.submit("ok"), GUARD) == "ok"


def test_slots_must_be_positive() -> None:
    with pytest.raises(ValueError, match="slots"):
        Batcher(Model().run, max_batch=1, max_wait=0.0, slots=0)
