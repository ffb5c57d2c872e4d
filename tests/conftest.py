"""Fixtures shared by the whole suite."""

from __future__ import annotations

import pytest
from net import free_port


@pytest.fixture
def port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    return free_port()
