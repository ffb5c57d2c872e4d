"""Fixtures of the pool tests: no threads or worker processes left behind."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from harness import no_leftovers


@pytest.fixture(autouse=True)
def leftovers() -> Iterator[None]:
    with no_leftovers():
        yield
