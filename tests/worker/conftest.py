"""Fixtures of the worker suite: real WorkerServers on 127.0.0.1, over both pools.

Child processes of a process pool import the test handler as ``faulty:Handler``, so
``tests/support`` is on ``sys.path`` (pytest's ``pythonpath`` setting in pyproject.toml).
Every test is checked for leftovers: threads it started and worker processes must be gone
when it ends.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from harness import POOLS, ServerThread, no_leftovers, worker_config

#: Seconds a test's threads and worker processes get to end after its servers stopped (a
#: thread-pool call past its deadline runs on until it returns).
LEFTOVER_WAIT = 5.0


@pytest.fixture(params=POOLS)
def pool(request: pytest.FixtureRequest) -> str:
    """The pool kind: every worker test runs over both."""
    return str(request.param)


@pytest.fixture
def start_worker(pool: str) -> Iterator[Callable[..., ServerThread]]:
    """Starts workers of the test's pool kind (``start_worker(**config_overrides)``); every
    one is stopped at the end of the test, whatever happened."""
    started: list[ServerThread] = []

    def start(*, uvloop: bool = False, **overrides: Any) -> ServerThread:
        server = ServerThread(worker_config(pool, **overrides), uvloop=uvloop)
        server.start()
        started.append(server)
        return server

    yield start
    errors = []
    for server in reversed(started):
        try:
            server.stop()
        except Exception as exc:
            errors.append(exc)
    if errors:
        raise errors[0]


@pytest.fixture
def worker(start_worker: Callable[..., ServerThread]) -> ServerThread:
    """A worker of the test's pool kind with the harness's small default configuration."""
    return start_worker()


@pytest.fixture(autouse=True)
def leftovers() -> Iterator[None]:
    """Fail a test that leaves threads or worker processes behind."""
    with no_leftovers(LEFTOVER_WAIT):
        yield
