"""Fixtures of the interop suite: our worker on 127.0.0.1 (both pools), called by Apache
Thrift's own Python library through code its compiler generated (``gen-py``, see README.md).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from harness import (
    POOLS,
    ServerThread,
    no_leftovers,
    running_worker,
    worker_config,
)


@pytest.fixture(params=POOLS)
def pool(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def worker(pool: str) -> Iterator[ServerThread]:
    with running_worker(worker_config(pool)) as server:
        yield server


@pytest.fixture(autouse=True)
def leftovers() -> Iterator[None]:
    """Fail a test that leaves threads or worker processes behind."""
    with no_leftovers():
        yield
