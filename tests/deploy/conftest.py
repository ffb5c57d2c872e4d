"""Fixtures of the deployment checks (helpers: tests/support/deployment.py)."""

from __future__ import annotations

import pytest
from deployment import help_flags


@pytest.fixture(scope="session")
def flags_of() -> dict[str, frozenset[str]]:
    """The flags of ``offloop worker`` and ``offloop gateway``, by command."""
    return {command: help_flags(command) for command in ("worker", "gateway")}
