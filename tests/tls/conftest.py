"""Fixtures of the TLS suite: certificates in a temporary directory (:mod:`pki`), and the
client sources a test makes, closed at its end."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pki import PKI

from offloop.tls import ClientTLS


@pytest.fixture
def pki(tmp_path: Path) -> PKI:
    return PKI(tmp_path)


@pytest.fixture
def sources() -> Iterator[list[ClientTLS]]:
    """Client sources made by a test; closed at its end (their watcher threads stop)."""
    made: list[ClientTLS] = []
    yield made
    for source in made:
        source.close()
