"""Fixtures of the gateway's integration tests: real gateways in front of real workers.

The machinery (:class:`~gateway_stack.LoopThread`, :class:`~gateway_stack.Stack`) is in
``tests/support/gateway_stack.py``. The :func:`gateway_factory` fixture is parametrized over
the HTTP server (``uvicorn``, ``tornado``) and the gateway mode (``loop``, ``actor``), so every
test that uses it runs against each combination. Whatever a test starts is stopped at its end:
gateway, workers, loop, thread; then no thread the test started may be left running, and the
gateway's loop must not have been blocked.
"""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from gateway_stack import (
    MODES,
    SERVERS,
    THREAD_EXIT_TIMEOUT,
    GatewayFactory,
    LoopThread,
    Stack,
    worker_config,
)

from offloop.watchdog import IDLE_POLL


def _live_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.is_alive()}


@pytest.fixture
def loop_thread() -> Iterator[LoopThread]:
    """The test's background loop thread; afterwards no thread the test started may run."""
    before = _live_threads()
    # As `offloop gateway` does once started: move what exists to the permanent generation,
    # so that a full collection does not walk every object the whole test session made
    # (hundreds of ms of stop-the-world that the watchdog rightly reports as a stall).
    gc.collect()
    gc.freeze()
    loop = LoopThread()
    try:
        yield loop
    finally:
        loop.stop()
    assert not loop.leftover, f"tasks left pending on the loop: {loop.leftover}"
    deadline = time.monotonic() + THREAD_EXIT_TIMEOUT
    while True:
        left = [t for t in _live_threads() - before if not t.daemon]
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert not left, f"threads left running: {left}"


@pytest.fixture(params=SERVERS)
def server(request: pytest.FixtureRequest) -> str:
    """The HTTP server in front of the gateway."""
    return str(request.param)


@pytest.fixture(params=MODES)
def mode(request: pytest.FixtureRequest) -> str:
    """The gateway's mode: event-loop clients or actors."""
    return str(request.param)


@pytest.fixture
def stack_factory(loop_thread: LoopThread) -> Iterator[Callable[[str, str], Stack]]:
    """Makes empty :class:`Stack` objects for any server and mode; all closed at the end."""
    stacks: list[Stack] = []

    def make(server: str, mode: str) -> Stack:
        stack = Stack(loop_thread, server, mode)
        stacks.append(stack)
        return stack

    try:
        yield make
    finally:
        # Close every stack even if one fails to stop; then report the first failure.
        errors: list[BaseException] = []
        for stack in reversed(stacks):
            try:
                stack.close()
            except Exception as exc:
                errors.append(exc)
        if errors:
            raise errors[0]
        # A clean run of the gateway suite blocks the gateway's loop nowhere: the watchdog
        # (on by default) recorded no stall blamed on code. Stalls of a starved host (the
        # loop thread was waiting in its poll) are not the code's doing and are left out.
        stalls = [
            record
            for stack in stacks
            if stack.gateway is not None and stack.gateway.watchdog is not None
            for record in stack.gateway.watchdog.records
            if record.seen_live and record.blocking_function != IDLE_POLL
        ]
        assert not stalls, "the gateway's loop was blocked:\n" + "\n".join(
            f"{r.duration}s in {r.blocking_function}\n{r.stack}" for r in stalls
        )


@pytest.fixture
def gateway_factory(
    server: str, mode: str, stack_factory: Callable[[str, str], Stack]
) -> GatewayFactory:
    """``make(pool="thread", backends=1, worker={...}, addresses=[...], **gateway_config)``.

    Starts ``backends`` workers of ``pool`` (``worker`` overrides their config), then a
    gateway (with ``GatewayConfig`` overrides) in front of them and of any extra
    ``addresses``, served by the parametrized HTTP server in the parametrized mode.
    """

    def make(
        pool: str = "thread",
        *,
        backends: int = 1,
        worker: dict[str, Any] | None = None,
        addresses: list[tuple[str, int]] | None = None,
        **config: Any,
    ) -> Stack:
        stack = stack_factory(server, mode)
        started = [
            stack.start_worker(worker_config(pool, **(worker or {}))) for _ in range(backends)
        ]
        addrs = [("127.0.0.1", w.port) for w in started] + list(addresses or [])
        stack.start_gateway(addrs, **config)
        return stack

    return make
