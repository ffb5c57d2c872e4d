"""What the admin port's probes report (offloop.worker.health), without a server: pool
statistics and a clock are handed in."""

from __future__ import annotations

import pytest

from offloop.runtime.base import PoolStats
from offloop.runtime.limiter import LimiterStats
from offloop.worker.health import Verdict, WorkerHealth


class FakePool:
    """Statistics a test sets, and a clock it moves."""

    def __init__(self, workers: int = 2) -> None:
        self.now = 100.0
        self.alive = workers
        self.busy = 0
        self.admitted = 0
        self.completed = 0
        self.workers = workers

    def stats(self) -> PoolStats:
        admission = LimiterStats(
            name="pool",
            limit=self.workers * 5,
            borrowed=self.busy,
            peak=self.busy,
            admitted=self.admitted,
            refused=0,
        )
        return PoolStats(self.workers, self.alive, self.busy, 0, 0, admission, self.completed)

    def start_calls(self, n: int) -> None:
        self.busy += n
        self.admitted += n

    def finish_call(self) -> None:
        self.busy -= 1
        self.completed += 1

    def expire_queued_call(self) -> None:
        """A call admitted and dropped from the queue unrun (expired, cancelled)."""
        self.admitted += 1


@pytest.fixture
def pool() -> FakePool:
    return FakePool()


def health_of(pool: FakePool, stuck_after: float = 10.0) -> WorkerHealth:
    health = WorkerHealth(pool.stats, stuck_after=stuck_after, clock=lambda: pool.now)
    health.started = True
    return health


def test_ready_once_started_with_a_live_worker_and_not_draining(pool: FakePool) -> None:
    health = WorkerHealth(pool.stats, stuck_after=10.0, clock=lambda: pool.now)
    assert health.ready() == Verdict(False, "starting")
    health.started = True
    assert health.ready() == Verdict(True, "ok")
    pool.alive = 0
    assert health.ready() == Verdict(False, "no pool worker alive")
    pool.alive = 2
    health.draining = True
    assert health.ready() == Verdict(False, "draining")
    assert health.live().ok  # draining is not a reason to be restarted


def test_a_busy_pool_that_finishes_calls_stays_live(pool: FakePool) -> None:
    health = health_of(pool)
    pool.start_calls(2)  # every worker busy, for a long time, but calls keep finishing
    for _ in range(100):
        pool.now += 5
        pool.finish_call()
        pool.start_calls(1)
        assert health.live().ok


def test_a_pool_stuck_for_longer_than_stuck_after_is_wedged(pool: FakePool) -> None:
    health = health_of(pool, stuck_after=10.0)
    assert health.live().ok  # the last look that saw progress (a free worker): t = 100
    pool.start_calls(2)
    pool.now += 4
    assert health.live().ok
    pool.now += 6
    assert health.live().ok  # stuck for 10 s: not longer than stuck_after
    pool.now += 1
    verdict = health.live()
    assert not verdict.ok
    assert verdict.reason == "pool wedged: 2 of 2 workers busy and no call finished for 11 s"
    pool.finish_call()  # one call returns: progress, live again
    assert health.live().ok


def test_a_free_worker_is_progress_even_without_a_finished_call(pool: FakePool) -> None:
    health = health_of(pool, stuck_after=1.0)
    pool.start_calls(1)  # one of two busy: the other takes calls
    for _ in range(10):
        pool.now += 5
        assert health.live().ok


def test_no_live_worker_for_long_is_wedged(pool: FakePool) -> None:
    health = health_of(pool, stuck_after=1.0)
    pool.alive = 0
    assert health.live().ok
    pool.now += 2
    assert not health.live().ok
    pool.alive = 2  # children replaced
    assert health.live().ok


def test_not_wedged_before_it_has_started(pool: FakePool) -> None:
    health = WorkerHealth(pool.stats, stuck_after=1.0, clock=lambda: pool.now)
    pool.alive = 0
    pool.now += 60
    assert health.live().ok


def test_stuck_after_must_be_positive(pool: FakePool) -> None:
    with pytest.raises(ValueError, match="stuck_after must be positive"):
        WorkerHealth(pool.stats, stuck_after=0)


def test_traffic_through_a_wedged_pool_is_no_progress(pool: FakePool) -> None:
    # Item 5: calls admitted and dropped unrun keep the admission counts moving; only a
    # call that ran to an end is progress.
    health = health_of(pool, stuck_after=10.0)
    pool.start_calls(2)
    for _ in range(4):
        pool.now += 5
        pool.expire_queued_call()
        verdict = health.live()
    assert not verdict.ok
    assert verdict.reason.startswith("pool wedged: 2 of 2 workers busy")
