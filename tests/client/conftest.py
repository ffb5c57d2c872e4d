"""Fixtures of the client tests: a way to run test coroutines on each kind of event loop,
the Thrift protocols, and the fake server of ``tests/support/fake_thrift.py``."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, cast

import pytest
import uvloop
from fake_thrift import SERVICE, TEXTLAB, FakeServer

from offloop.codec.message import ProtocolName
from offloop.idl import ServiceInfo

#: Seconds a whole test coroutine may take before it is failed (the suite must stay fast).
TEST_DEADLINE = 20.0

Runner = Callable[[Coroutine[Any, Any, Any]], Any]


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Runner:
    """Run a test coroutine to the end on a fresh event loop of each kind.

    Fails the test if it takes over ``TEST_DEADLINE`` seconds, or leaves tasks behind.
    """

    def runner(coro: Coroutine[Any, Any, Any]) -> Any:
        async def main() -> Any:
            async with asyncio.timeout(TEST_DEADLINE):
                result = await coro
            leftover = asyncio.all_tasks() - {asyncio.current_task()}
            assert not leftover, f"tasks left behind: {leftover}"
            return result

        if request.param == "uvloop":
            return uvloop.run(main())
        return asyncio.run(main())

    return runner


@pytest.fixture(params=["binary", "compact"])
def protocol(request: pytest.FixtureRequest) -> ProtocolName:
    """The Thrift protocol of the fake server and the client."""
    return cast(ProtocolName, request.param)


@pytest.fixture
def service() -> ServiceInfo:
    """The demo ``TextLab`` service."""
    return SERVICE


@pytest.fixture
def textlab() -> Any:
    """The loaded demo IDL module (for its exception classes)."""
    return TEXTLAB


@pytest.fixture
def fake_server() -> type[FakeServer]:
    """The :class:`FakeServer` class; tests start and stop their own instances."""
    return FakeServer
