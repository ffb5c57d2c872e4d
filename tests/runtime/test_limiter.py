"""The limiter on its own: admit or refuse at once, give back exactly once, count."""

from __future__ import annotations

import threading

import pytest

from offloop.runtime import Limiter


def test_admits_up_to_the_limit_then_refuses_and_counts() -> None:
    limiter = Limiter(2, name="test slots")
    assert limiter.try_acquire() and limiter.try_acquire()
    assert limiter.full and limiter.available == 0
    assert not limiter.try_acquire()
    limiter.release()
    assert limiter.try_acquire()
    stats = limiter.stats()
    assert (stats.limit, stats.borrowed, stats.peak) == (2, 2, 2)
    assert (stats.admitted, stats.refused, stats.available) == (3, 1, 0)


def test_held_gives_the_slot_back_even_on_error() -> None:
    limiter = Limiter(1, name="test slots")
    assert limiter.try_acquire()
    with pytest.raises(ValueError), limiter.held():
        raise ValueError("boom")
    assert limiter.borrowed == 0


def test_release_without_acquire_is_a_bug() -> None:
    limiter = Limiter(1, name="test slots")
    with pytest.raises(RuntimeError, match="test slots: release"):
        limiter.release()


def test_limit_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Limiter(0, name="test slots")


def test_threads_never_overshoot_the_limit() -> None:
    limiter = Limiter(3, name="test slots")
    start = threading.Barrier(8)
    # An assert in a thread would only print its error: what the threads saw is checked here.
    overshoots: list[int] = []

    def churn() -> None:
        start.wait()
        for _ in range(2000):
            if limiter.try_acquire():
                if limiter.borrowed > 3:
                    overshoots.append(limiter.borrowed)
                limiter.release()

    threads = [threading.Thread(target=churn) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert overshoots == []
    stats = limiter.stats()
    assert stats.borrowed == 0
    assert stats.peak <= 3
    assert stats.admitted + stats.refused == 8 * 2000
