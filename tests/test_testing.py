"""The test helper that refuses blocking calls on the event loop."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
import uvloop
from tornado.ioloop import IOLoop

from offloop.testing import BlockingCall, BlockingError, no_blocking_calls
from offloop.watchdog import LoopWatchdog, WatchdogConfig

Runner = Callable[[Coroutine[Any, Any, Any]], Any]


def run_tornado(coro: Coroutine[Any, Any, Any]) -> Any:
    async def main() -> Any:
        assert IOLoop.current() is not None
        return await coro

    return asyncio.run(main())


@pytest.fixture(params=[asyncio.run, uvloop.run, run_tornado], ids=["asyncio", "uvloop", "tornado"])
def run(request: pytest.FixtureRequest) -> Runner:
    runner: Runner = request.param
    return runner


async def sleeps_blocking() -> None:
    time.sleep(0.01)


async def sleeps_politely() -> None:
    await asyncio.sleep(0.01)


def test_time_sleep_in_a_coroutine_is_refused(run: Runner) -> None:
    with no_blocking_calls(), pytest.raises(BlockingError, match=r"time\.sleep"):
        run(sleeps_blocking())


def test_asyncio_sleep_passes(run: Runner) -> None:
    with no_blocking_calls():
        run(sleeps_politely())


def test_calls_without_a_running_loop_pass() -> None:
    with no_blocking_calls():
        time.sleep(0.001)
        with pytest.raises(concurrent.futures.TimeoutError):
            concurrent.futures.Future().result(timeout=0.001)
        a, b = socket.socketpair()
        with a, b:
            b.sendall(b"x")
            assert a.recv(1) == b"x"


def test_future_result_on_the_loop_is_refused_unless_done(run: Runner) -> None:
    async def waits() -> None:
        concurrent.futures.Future().result(timeout=1)

    async def finished() -> int:
        future: concurrent.futures.Future[int] = concurrent.futures.Future()
        future.set_result(7)
        return future.result()

    with no_blocking_calls():
        with pytest.raises(BlockingError, match=r"concurrent\.futures\.Future\.result"):
            run(waits())
        assert run(finished()) == 7


def test_blocking_socket_recv_is_refused_and_loop_io_passes(run: Runner) -> None:
    async def blocking_recv() -> None:
        a, b = socket.socketpair()
        with a, b:
            a.recv(1)

    async def loop_recv() -> bytes:
        a, b = socket.socketpair()
        with a, b:
            a.setblocking(False)
            b.setblocking(False)
            await asyncio.get_running_loop().sock_sendall(b, b"x")
            return await asyncio.get_running_loop().sock_recv(a, 1)

    with no_blocking_calls():
        with pytest.raises(BlockingError, match=r"socket\.socket\.recv"):
            run(blocking_recv())
        assert run(loop_recv()) == b"x"


def test_file_read_and_name_lookup_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "data"
    path.write_bytes(b"abc")

    async def reads() -> None:
        with path.open("rb") as f:
            f.read()

    async def resolves() -> None:
        socket.getaddrinfo("localhost", 80)

    async def resolves_literal() -> None:
        socket.getaddrinfo("127.0.0.1", 80)

    with no_blocking_calls():
        with pytest.raises(BlockingError, match="read"):
            asyncio.run(reads())
        with pytest.raises(BlockingError, match="getaddrinfo"):
            asyncio.run(resolves())
        asyncio.run(resolves_literal())


def test_caught_errors_are_still_seen() -> None:
    async def hides_it() -> None:
        with contextlib.suppress(Exception):
            time.sleep(0.01)

    original_init = BlockingError.__init__
    seen: list[BlockingCall] = []
    with no_blocking_calls(seen=seen):
        asyncio.run(hides_it())
    [call] = seen
    assert "time.sleep" in str(call.error)
    assert "hides_it" in call.where and "test_testing.py" in call.where
    # Everything is put back on the way out.
    assert BlockingError.__init__ is original_init
    assert time.sleep.__module__ == "time"


def test_the_watchdog_itself_passes(run: Runner) -> None:
    async def watched() -> None:
        async with LoopWatchdog(WatchdogConfig(lag_interval=0.01)):
            await asyncio.sleep(0.05)

    seen: list[BlockingCall] = []
    with no_blocking_calls(seen=seen):
        run(watched())
    assert seen == []


CONFTEST = 'pytest_plugins = ["offloop.testing"]\n'
USER_TESTS = """
import asyncio
import time


async def handler_that_sleeps():
    time.sleep(0.01)


async def handler_that_hides_it():
    try:
        time.sleep(0.01)
    except Exception:
        pass


def test_sleep_in_coroutine(no_blocking):
    asyncio.run(handler_that_sleeps())


def test_asyncio_sleep(no_blocking):
    asyncio.run(asyncio.sleep(0.01))


def test_hidden_sleep(no_blocking):
    asyncio.run(handler_that_hides_it())


def test_no_loop(no_blocking):
    time.sleep(0.001)
"""


def test_fixture_fails_the_blocking_tests_of_a_user_suite(tmp_path: Path) -> None:
    (tmp_path / "conftest.py").write_text(CONFTEST)
    (tmp_path / "test_user.py").write_text(textwrap.dedent(USER_TESTS))
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    out = result.stdout
    assert result.returncode == 1, out
    assert "FAILED test_user.py::test_sleep_in_coroutine" in out
    assert "BlockingError: Blocking call to time.sleep" in out
    assert "PASSED test_user.py::test_asyncio_sleep" in out
    assert "ERROR test_user.py::test_hidden_sleep" in out
    assert "blocking calls on the event loop during the test" in out
    assert "PASSED test_user.py::test_no_loop" in out
