"""Fixtures of the tracing tests: OpenTelemetry's in-memory exporter, and real gateways in
front of real workers, all in this process (a worker in a subprocess could not share the
exporter), on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from gateway_stack import MODES, LoopThread, Stack


@pytest.fixture
def loop_thread() -> Iterator[LoopThread]:
    loop = LoopThread()
    try:
        yield loop
    finally:
        loop.stop()
    assert not loop.leftover, f"tasks left pending on the loop: {loop.leftover}"


@pytest.fixture(params=MODES)
def mode(request: pytest.FixtureRequest) -> str:
    """The gateway's mode: event-loop clients or actors."""
    return str(request.param)


@pytest.fixture
def make_stack(loop_thread: LoopThread) -> Iterator[Callable[[str], Stack]]:
    """Makes empty :class:`Stack` objects (uvicorn unless told); all closed at the end."""
    stacks: list[Stack] = []

    def make(mode: str, server: str = "uvicorn") -> Stack:
        stack = Stack(loop_thread, server, mode)
        stacks.append(stack)
        return stack

    try:
        yield make
    finally:
        for stack in stacks:
            stack.close()
