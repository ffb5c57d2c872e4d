"""The loop watchdog: lag metrics, stall records and logs, on asyncio, uvloop and Tornado."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
import tornado.httpclient
import tornado.web
import uvicorn
import uvloop
from prometheus_client import CollectorRegistry
from tornado.ioloop import IOLoop
from waiting import wait_until, wait_until_async

from offloop.watchdog import (
    IDLE_POLL,
    LoopWatchdog,
    StallRecord,
    WatchdogConfig,
    watch_tornado,
)

FAST = WatchdogConfig(lag_interval=0.05, stall_threshold=0.1)
LOGGER_NAME = "offloop.watchdog"
#: Seconds a test waits for a state it expects (bounds a hang, not a speed claim).
WAIT = 5.0

Body = Callable[[LoopWatchdog], Awaitable[None]]


def run_asyncio(body: Body, watchdog: LoopWatchdog) -> None:
    async def main() -> None:
        async with watchdog:
            await body(watchdog)

    asyncio.run(main())


def run_uvloop(body: Body, watchdog: LoopWatchdog) -> None:
    async def main() -> None:
        assert isinstance(asyncio.get_running_loop(), uvloop.Loop)
        async with watchdog:
            await body(watchdog)

    uvloop.run(main())


def run_tornado(body: Body, watchdog: LoopWatchdog) -> None:
    async def main() -> None:
        watchdog.start(IOLoop.current())  # an IOLoop, not its asyncio loop
        try:
            await body(watchdog)
        finally:
            watchdog.stop()

    asyncio.run(main())


@pytest.fixture(params=[run_asyncio, run_uvloop, run_tornado], ids=["asyncio", "uvloop", "tornado"])
def run(request: pytest.FixtureRequest) -> Callable[[Body, LoopWatchdog], None]:
    runner: Callable[[Body, LoopWatchdog], None] = request.param
    return runner


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


def watchdog_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "offloop-watchdog"]


@pytest.fixture(autouse=True)
def no_watchdog_thread_left() -> Iterator[None]:
    yield
    assert not watchdog_threads()


def blocking_handler() -> None:
    """Stands for a request handler that does CPU work or a sync call on the loop."""
    time.sleep(0.3)


def code_stalls(watchdog: LoopWatchdog) -> list[StallRecord]:
    """The stalls blamed on code. On an overloaded host the process itself may not get the CPU
    for over 100 ms; the watchdog reports that too, but blames no code (IDLE_POLL, or no stack
    when its own thread could not run either), and such stalls are not these tests' subject.
    """
    return [r for r in watchdog.records if r.blocking_function not in (IDLE_POLL, "")]


async def beating(watchdog: LoopWatchdog) -> None:
    """Wait until the watchdog's heartbeat runs: it has taken a lag sample."""
    await wait_until_async(
        lambda: (watchdog.registry.get_sample_value("offloop_loop_lag_seconds_count") or 0) >= 1,
        WAIT,
    )


async def stalls_ended(watchdog: LoopWatchdog, stalls: int) -> None:
    """Wait until the watchdog has seen ``stalls`` stalls blamed on code, and every stall it
    recorded has ended (the loop turned again and the watchdog noticed)."""

    def ended() -> bool:
        records = watchdog.records
        done = all(r.duration is not None for r in records)
        return done and len(code_stalls(watchdog)) >= stalls

    await wait_until_async(ended, WAIT)


async def stalls_counted(watchdog: LoopWatchdog, total: int) -> None:
    """Wait until ``total`` stalls have ended and been counted."""
    await wait_until_async(lambda: watchdog.stalls_total == total, WAIT)


def assert_counted(watchdog: LoopWatchdog, registry: CollectorRegistry) -> None:
    total = registry.get_sample_value("offloop_loop_stalls_total")
    assert total == watchdog.stalls_total == len(watchdog.records)
    assert registry.get_sample_value("offloop_loop_stall_seconds_count") == total


def stall_logs(caplog: pytest.LogCaptureFixture) -> tuple[list[str], list[str]]:
    """The log lines of stalls blamed on code (see code_stalls)."""
    messages = [
        r.getMessage()
        for r in caplog.records
        if r.name == LOGGER_NAME and IDLE_POLL not in r.getMessage()
    ]
    began = [m for m in messages if m.startswith("event loop blocked for")]
    ended = [m for m in messages if m.startswith("event loop stall ended after")]
    return began, ended


def assert_one_stall_in(record: StallRecord, function: str) -> None:
    assert record.duration is not None and record.duration >= 0.25
    assert record.seen_live
    assert function in record.blocking_function
    assert f"in {function.rsplit('.', 1)[-1]}" in record.stack
    assert "time.sleep(0.3)" in record.stack
    # Sleeping is waiting, not computing (where the thread's CPU clock can be read).
    assert record.cpu_share is None or record.cpu_share < 0.5


def test_blocking_callback_gives_one_stall_naming_it(
    run: Callable[[Body, LoopWatchdog], None],
    registry: CollectorRegistry,
    caplog: pytest.LogCaptureFixture,
) -> None:
    watchdog = LoopWatchdog(FAST, registry=registry)

    async def body(wd: LoopWatchdog) -> None:
        await beating(wd)
        asyncio.get_running_loop().call_soon(blocking_handler)
        await stalls_ended(wd, 1)  # a beat after the stall ends it

    with caplog.at_level(logging.WARNING, LOGGER_NAME):
        run(body, watchdog)

    assert len(code_stalls(watchdog)) == 1, watchdog.records
    [record] = code_stalls(watchdog)
    assert_one_stall_in(record, "blocking_handler")
    assert_counted(watchdog, registry)
    if len(watchdog.records) == 1:  # the host did not stall us as well
        assert registry.get_sample_value("offloop_loop_stalls_total") == 1
        assert registry.get_sample_value("offloop_loop_stall_seconds_sum") == pytest.approx(
            record.duration
        )
    began, ended = stall_logs(caplog)
    assert len(began) == 1 and len(ended) == 1
    assert "blocking_handler" in began[0] and "time.sleep(0.3)" in began[0]
    assert "blocking_handler" in ended[0]


def test_clean_run_gives_no_stall_and_samples_lag(
    run: Callable[[Body, LoopWatchdog], None],
    registry: CollectorRegistry,
    caplog: pytest.LogCaptureFixture,
) -> None:
    watchdog = LoopWatchdog(FAST, registry=registry)

    async def body(wd: LoopWatchdog) -> None:
        for _ in range(30):
            await asyncio.sleep(0.02)

    run(body, watchdog)

    assert code_stalls(watchdog) == [], watchdog.records
    assert_counted(watchdog, registry)
    assert stall_logs(caplog) == ([], [])
    samples = registry.get_sample_value("offloop_loop_lag_seconds_count")
    assert samples is not None and samples >= 5
    last = registry.get_sample_value("offloop_loop_lag_last_seconds")
    assert last is not None and 0 <= last < FAST.stall_threshold


def test_an_idle_loop_is_not_blamed_on_code(run: Callable[[Body, LoopWatchdog], None]) -> None:
    # When the process does not get the CPU (overloaded host, paused container) the loop is
    # late while it sits in its poll; the stack must then name no code as the culprit.
    stacks: list[tuple[str, str]] = []

    async def body(wd: LoopWatchdog) -> None:
        await beating(wd)

        def look() -> tuple[str, str]:
            # The loop is idle (it awaits this thread): once it is back in its poll, the
            # stack names no code. The last stack seen is kept for the failure message.
            seen = [("", "")]

            def idle() -> bool:
                seen[0] = wd._loop_stack()
                return seen[0][1] == IDLE_POLL

            with contextlib.suppress(AssertionError):
                wait_until(idle, WAIT, interval=0.005)
            return seen[0]

        stacks.append(await asyncio.to_thread(look))

    run(body, LoopWatchdog(FAST))
    [(stack, culprit)] = stacks
    assert culprit == IDLE_POLL, stack


class SlowHandler(tornado.web.RequestHandler):
    def get(self) -> None:
        time.sleep(0.3)
        self.write("done")


class FastHandler(tornado.web.RequestHandler):
    def get(self) -> None:
        self.write("ok")


@pytest.mark.parametrize(("path", "stalls"), [("/slow", 1), ("/fast", 0)])
def test_tornado_handler(
    port: int, path: str, stalls: int, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> LoopWatchdog:
        watchdog = watch_tornado(config=FAST)
        app = tornado.web.Application([("/slow", SlowHandler), ("/fast", FastHandler)])
        server = app.listen(port, "127.0.0.1")
        client = tornado.httpclient.AsyncHTTPClient()
        try:
            for _ in range(1 if stalls else 20):
                response = await client.fetch(f"http://127.0.0.1:{port}{path}")
                assert response.code == 200
            await stalls_ended(watchdog, stalls)
        finally:
            server.stop()
            await server.close_all_connections()
            client.close()
            watchdog.stop()
        return watchdog

    with caplog.at_level(logging.WARNING, LOGGER_NAME):
        watchdog = asyncio.run(main())

    assert len(code_stalls(watchdog)) == stalls, watchdog.records
    if stalls:
        assert_one_stall_in(code_stalls(watchdog)[0], "SlowHandler.get")
    began, ended = stall_logs(caplog)
    assert len(began) == len(ended) == stalls


async def asgi_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """A bare ASGI app whose /slow endpoint blocks the loop."""
    assert scope["type"] == "http"
    if scope["path"] == "/slow":
        time.sleep(0.3)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


async def http_get(port: int, path: str) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    data = await reader.read()
    writer.close()
    await writer.wait_closed()
    return data


@pytest.mark.parametrize(("path", "stalls"), [("/slow", 1), ("/fast", 0)])
def test_asgi_on_uvicorn_and_uvloop(port: int, path: str, stalls: int) -> None:
    async def main() -> LoopWatchdog:
        config = uvicorn.Config(asgi_app, port=port, lifespan="off", log_level="warning")
        server = uvicorn.Server(config)
        config.load()  # imports modules (blocking file reads): a real stall, but not ours
        async with LoopWatchdog(FAST) as watchdog:
            serving = asyncio.create_task(server.serve())
            await wait_until_async(lambda: server.started, WAIT)
            for _ in range(1 if stalls else 20):
                assert (await http_get(port, path)).startswith(b"HTTP/1.1 200")
            await stalls_ended(watchdog, stalls)
            server.should_exit = True
            await serving
        return watchdog

    watchdog = uvloop.run(main())
    assert len(code_stalls(watchdog)) == stalls, watchdog.records
    if stalls:
        assert_one_stall_in(code_stalls(watchdog)[0], "asgi_app")


def test_stall_is_counted_even_when_c_code_holds_the_gil(registry: CollectorRegistry) -> None:
    # sum() over a range runs in C without ever releasing the GIL, so the watchdog thread
    # cannot look while it runs; the stall must still be counted, blamed on the coroutine that
    # called it if the thread gets to look before the loop turns, or unseen (no stack).
    n = 10_000_000  # a calibration long enough (tens of ms) not to be thrown by one hiccup
    t0 = time.perf_counter()
    sum(range(n))
    n = int(n * 0.4 / max(time.perf_counter() - t0, 1e-6))

    async def main() -> None:
        async with LoopWatchdog(FAST, registry=registry) as watchdog:
            await beating(watchdog)
            started = time.perf_counter()
            sum(range(n))
            blocked = time.perf_counter() - started
            # The calibration aims at 0.4 s; a busy machine can make it land shorter, so the
            # bar is set by how long the loop really was blocked (always above the threshold).
            bar = min(0.2, 0.8 * blocked)

            def long_stalls() -> list[StallRecord]:
                return [r for r in watchdog.records if r.duration is not None and r.duration >= bar]

            # The watchdog finds the stall afterwards, through the late beat, at its next look.
            await wait_until_async(long_stalls, WAIT)
        assert blocked > 2 * FAST.stall_threshold, f"blocked only {blocked:.3f} s"
        long = long_stalls()
        assert len(long) == 1, (blocked, watchdog.records)
        assert long[0].blocking_function == "" or "main" in long[0].blocking_function

    asyncio.run(main())
    total = registry.get_sample_value("offloop_loop_stalls_total")
    assert total is not None and total >= 1


def test_paused_loop_is_not_a_stall() -> None:
    loop = asyncio.new_event_loop()
    watchdog = LoopWatchdog(FAST)
    try:
        watchdog.start(loop)  # before the loop runs
        loop.run_until_complete(beating(watchdog))
        time.sleep(0.3)  # nobody runs the loop: paused, not stalled
        # Room for a wrong report: the loop runs on a while after the pause.
        loop.run_until_complete(asyncio.sleep(0.2))
    finally:
        watchdog.stop()
        loop.close()
    assert code_stalls(watchdog) == [], watchdog.records


def test_records_are_bounded_and_stacks_can_stay_out_of_the_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = WatchdogConfig(lag_interval=0.05, stall_threshold=0.1, max_records=1, log_stacks=False)

    async def main() -> LoopWatchdog:
        async with LoopWatchdog(config) as watchdog:
            await beating(watchdog)
            for i in range(2):
                # Two stalls, not one: the first has ended (the loop beat again) before the
                # second begins.
                await stalls_counted(watchdog, i)
                time.sleep(0.2)
            await stalls_counted(watchdog, 2)
        return watchdog

    with caplog.at_level(logging.WARNING, LOGGER_NAME):
        watchdog = asyncio.run(main())
    assert watchdog.stalls_total == 2
    assert len(watchdog.records) == 1
    assert "time.sleep(0.2)" in watchdog.records[0].stack  # the record keeps the stack
    began, _ = stall_logs(caplog)
    assert len(began) == 2
    assert all("\n" not in m and "main" in m for m in began)


def test_stop_ends_the_thread_and_is_idempotent() -> None:
    async def main() -> None:
        watchdog = LoopWatchdog()
        watchdog.start()
        assert watchdog.running
        assert watchdog_threads()
        watchdog.stop()
        watchdog.stop()
        assert not watchdog.running
        with pytest.raises(RuntimeError, match="only once"):
            watchdog.start()

    asyncio.run(main())
    LoopWatchdog().stop()  # never started: nothing to do


def test_thread_ends_by_itself_once_the_loop_is_closed() -> None:
    async def main() -> LoopWatchdog:
        watchdog = LoopWatchdog()
        watchdog.start()
        await beating(watchdog)
        return watchdog  # and forget to stop it

    watchdog = asyncio.run(main())  # closes the loop
    wait_until(lambda: not watchdog_threads(), timeout=WAIT)
    watchdog.stop()


def test_start_needs_the_loop_and_its_thread() -> None:
    with pytest.raises(RuntimeError, match="no running event loop"):
        LoopWatchdog().start()
    with pytest.raises(TypeError, match="cannot watch"):
        LoopWatchdog().start(object())  # type: ignore[arg-type]

    errors: list[BaseException] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()

        def elsewhere() -> None:
            try:
                LoopWatchdog().start(loop)
            except RuntimeError as exc:
                errors.append(exc)

        await asyncio.to_thread(elsewhere)

    asyncio.run(main())
    assert len(errors) == 1 and "own thread" in str(errors[0])


def test_metric_names_follow_the_namespace(registry: CollectorRegistry) -> None:
    LoopWatchdog(registry=registry, namespace="gw")
    assert registry.get_sample_value("gw_loop_stalls_total") == 0
    assert registry.get_sample_value("gw_loop_lag_last_seconds") == 0
    assert registry.get_sample_value("gw_loop_lag_seconds_count") == 0
    assert registry.get_sample_value("gw_loop_stall_seconds_count") == 0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"lag_interval": 0},
        {"lag_interval": float("nan")},
        {"stall_threshold": -1},
        {"stall_threshold": float("inf")},
        {"check_interval": 0},
        {"check_interval": 0.5},  # more than the threshold
        {"max_stack_depth": 0},
        {"max_records": 0},
    ],
)
def test_bad_config_is_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        WatchdogConfig(**kwargs)


def test_config_derives_its_intervals() -> None:
    config = WatchdogConfig()
    assert config.heartbeat_interval == pytest.approx(0.01)  # a tenth of the threshold
    assert config.effective_check_interval == 0.025
    assert WatchdogConfig(lag_interval=0.005).heartbeat_interval == 0.005
    assert WatchdogConfig(check_interval=0.1).effective_check_interval == 0.1


def test_the_end_of_a_stall_in_the_idle_poll_says_the_machine_is_busy(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An idle loop late out of its poll with its thread off the CPU: the process was not
    scheduled, which the line says, rather than a bare "0% of it on CPU" that reads as the
    loop's fault. A stall in code keeps the bare share (there, it means waiting)."""
    from offloop.watchdog._watchdog import _Stall

    watchdog = LoopWatchdog(FAST)
    with caplog.at_level(logging.WARNING, logger=LOGGER_NAME):
        watchdog._end_stall(_Stall(1, 10.0, IDLE_POLL), 0.142, 0.0)
        watchdog._end_stall(_Stall(2, 20.0, "__main__:wait (app.py:6)"), 0.3, 0.01)
        watchdog._end_stall(_Stall(3, 30.0, IDLE_POLL), 0.2, 0.9)
    idle, code, busy = [r.getMessage() for r in caplog.records if r.name == LOGGER_NAME]
    assert idle == (
        f"event loop stall ended after 142 ms (in {IDLE_POLL}; 0% of it on CPU: the loop was "
        "idle and the process was not scheduled, so the machine is busy, not the loop)"
    )
    assert (
        code == "event loop stall ended after 300 ms (in __main__:wait (app.py:6); 1% of it on CPU)"
    )
    assert busy == f"event loop stall ended after 200 ms (in {IDLE_POLL}; 90% of it on CPU)"
    assert watchdog.stalls_total == 3
