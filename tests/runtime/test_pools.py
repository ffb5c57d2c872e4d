"""The pools on their own, over both kinds: bounded admission, deadlines that keep the bound,
start-up failures and closing. (Through a server: tests/worker.)"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Awaitable, Callable
from typing import Any

import jobs
import pytest
from harness import pid_alive

from offloop.errors import ClosedError, DeadlineExceeded, Overloaded
from offloop.runtime import Pool, ProcessPool, ThreadPool, WorkerCrashed
from offloop.runtime.processpool import WorkerStartError

POOLS = ("thread", "process")


def make_pool(kind: str, factory: Callable[[], Any] = jobs.factory, **kw: Any) -> Pool:
    if kind == "thread":
        return ThreadPool(factory, **kw)
    return ProcessPool(factory, preload=["jobs"], **kw)


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), 30))


@pytest.mark.parametrize("kind", POOLS)
def test_admission_is_bounded_and_refusal_is_immediate(kind: str) -> None:
    async def test() -> None:
        pool = make_pool(kind, workers=2, max_queued=1)
        await pool.start()
        try:
            admitted = [
                asyncio.ensure_future(pool.run(("sleep", 0.3), timeout=10)) for _ in range(3)
            ]
            await asyncio.sleep(0.05)
            stats = pool.stats()
            assert (stats.busy, stats.queued) == (2, 1)
            with pytest.raises(Overloaded, match=r"^overloaded: "):
                await pool.run(("echo", 1), timeout=10)
            assert await asyncio.gather(*admitted) == [0.3, 0.3, 0.3]
            assert await pool.run(("echo", "room again"), timeout=10) == "room again"
        finally:
            await pool.close()

    run(test)


@pytest.mark.parametrize("kind", POOLS)
def test_max_queued_zero_admits_only_idle_workers(kind: str) -> None:
    async def test() -> None:
        pool = make_pool(kind, workers=1, max_queued=0)
        await pool.start()
        try:
            running = asyncio.ensure_future(pool.run(("sleep", 0.2), timeout=10))
            await asyncio.sleep(0.05)
            with pytest.raises(Overloaded):
                await pool.run(("echo", 1), timeout=10)
            assert await running == 0.2
        finally:
            await pool.close()

    run(test)


def test_thread_past_its_deadline_keeps_its_slot_until_it_returns() -> None:
    async def test() -> None:
        pool = ThreadPool(jobs.factory, workers=1, max_queued=0)
        await pool.start()
        try:
            with pytest.raises(DeadlineExceeded, match=r"within 0\.1 s"):
                await pool.run(("sleep", 0.5), timeout=0.1)
            # The thread runs on: the bound stays true.
            assert pool.stats().busy == 1
            with pytest.raises(Overloaded):
                await pool.run(("echo", 1), timeout=10)
            while pool.stats().busy:
                await asyncio.sleep(0.02)
            assert await pool.run(("echo", 2), timeout=10) == 2
        finally:
            await pool.close()

    run(test)


def test_process_past_its_deadline_is_killed_and_replaced() -> None:
    async def test() -> None:
        pool = ProcessPool(jobs.factory, workers=1, max_queued=1, preload=["jobs"])
        await pool.start()
        try:
            first = await pool.run(("pid", None), timeout=10)
            with pytest.raises(DeadlineExceeded):
                await pool.run(("sleep", 30), timeout=0.2)
            second = await pool.run(("pid", None), timeout=10)
            assert second != first
            assert not pid_alive(first)
            assert pool.stats().restarts == 1
        finally:
            await pool.close()

    run(test)


def test_killed_child_fails_its_job_and_the_queue_survives() -> None:
    async def test() -> None:
        pool = ProcessPool(jobs.factory, workers=1, max_queued=2, preload=["jobs"])
        await pool.start()
        try:
            victim = await pool.run(("pid", None), timeout=10)
            running = asyncio.ensure_future(pool.run(("sleep", 30), timeout=10))
            queued = [asyncio.ensure_future(pool.run(("echo", i), timeout=10)) for i in range(2)]
            await asyncio.sleep(0.1)
            os.kill(victim, signal.SIGKILL)
            with pytest.raises(WorkerCrashed, match=f"worker process {victim} died"):
                await running
            assert await asyncio.gather(*queued) == [0, 1]
        finally:
            await pool.close()

    run(test)


@pytest.mark.parametrize("kind", POOLS)
def test_job_function_errors_reach_the_caller(kind: str) -> None:
    async def test() -> None:
        pool = make_pool(kind, workers=1)
        await pool.start()
        try:
            # The dispatcher never lets a handler error escape; if something did, the caller
            # still gets an error (the job's own in a thread, WorkerCrashed from a child).
            with pytest.raises((ValueError, WorkerCrashed), match="no good"):
                await pool.run(("raise", "no good"), timeout=10)
            assert await pool.run(("echo", "next"), timeout=10) == "next"
        finally:
            await pool.close()

    run(test)


def test_process_pool_start_failure_says_why_and_leaves_nothing() -> None:
    async def test() -> None:
        pool = ProcessPool(jobs.failing_factory, workers=2, preload=["jobs"])
        with pytest.raises(WorkerStartError, match="cannot start this handler"):
            await pool.start()

    run(test)


def test_thread_pool_start_failure_says_why() -> None:
    async def test() -> None:
        pool = ThreadPool(jobs.failing_factory, workers=2)
        try:
            with pytest.raises(RuntimeError, match="cannot start this handler"):
                await pool.start()
        finally:
            await pool.close()

    run(test)


@pytest.mark.parametrize("kind", POOLS)
def test_closed_pool_refuses_jobs(kind: str) -> None:
    async def test() -> None:
        pool = make_pool(kind, workers=1)
        await pool.start()
        await pool.close()
        await pool.close()  # twice is fine
        with pytest.raises(ClosedError):
            await pool.run(("echo", 1), timeout=10)
        assert pool.stats().alive == 0

    run(test)


def test_process_pool_close_fails_queued_jobs() -> None:
    async def test() -> None:
        pool = ProcessPool(jobs.factory, workers=1, max_queued=2, preload=["jobs"])
        await pool.start()
        running = asyncio.ensure_future(pool.run(("sleep", 30), timeout=60))
        queued = asyncio.ensure_future(pool.run(("echo", 1), timeout=60))
        await asyncio.sleep(0.1)
        await pool.close(grace=0.1)
        with pytest.raises(ClosedError, match="closed before the call ran"):
            await queued
        with pytest.raises(WorkerCrashed):
            await running

    run(test)
