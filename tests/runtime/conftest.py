"""Fixtures of the pool tests: ``tests/support`` on ``sys.path`` (child processes import the
job functions from there), and no threads or worker processes left behind."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

SUPPORT = str(Path(__file__).resolve().parents[1] / "support")
if SUPPORT not in sys.path:
    sys.path.insert(0, SUPPORT)

from harness import no_leftovers  # noqa: E402


@pytest.fixture(autouse=True)
def leftovers() -> Iterator[None]:
    with no_leftovers():
        yield
