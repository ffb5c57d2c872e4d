"""Light calls (issue 16): ``async def`` and ``@offloop.inline`` handler methods run on the
worker's loop, over both pools, and answer exactly as the pool runs the same methods."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from gates import Gate
from harness import SERVICE, RawClient, ServerThread, metric, worker_config
from waiting import wait_until

from offloop import WorkerServer, inline
from offloop.codec.framing import FrameDecoder, encode_frame
from offloop.codec.message import MessageCodec
from offloop.testing import MemoryTransport
from offloop.watchdog import LoopWatchdog, WatchdogConfig

StartWorker = Callable[..., ServerThread]

LIGHT = ["light:InlineHandler", "light:AsyncHandler"]

#: Calls whose replies must be the pool's, byte for byte: a result, an exception that is no
#: one's declared (internal error), a TApplicationException, a return value the IDL cannot
#: encode, a declared exception, and one that does not match the IDL.
CALLS: list[tuple[str, Any]] = [
    ("ping", "hello"),
    ("ping", "raise"),
    ("ping", "apperror"),
    ("ping", "badreturn"),
    ("parse", "colorless green"),
    ("parse", "badexc"),
]


def replies(server: ServerThread) -> list[bytes | None]:
    with RawClient(server.port) as raw:
        out = []
        for seqid, (method, arg) in enumerate(CALLS):
            raw.send(method, seqid, arg)
            out.append(raw.recv_frame())
        return out


@pytest.mark.parametrize("handler", LIGHT)
def test_replies_are_the_pools_own(start_worker: StartWorker, handler: str) -> None:
    in_pool = replies(start_worker())
    on_loop = replies(start_worker(handler=handler))
    assert None not in in_pool
    assert on_loop == in_pool


@pytest.mark.parametrize("handler", LIGHT)
def test_light_methods_run_on_the_loop_and_others_in_the_pool(
    start_worker: StartWorker, handler: str, pool: str
) -> None:
    server = start_worker(handler=handler)
    loop_thread = server.on_loop(threading.get_ident)
    with RawClient(server.port) as raw:
        assert raw.call("ping", "pid") == f"{os.getpid()}:{loop_thread}"
        assert raw.call("burn", 0) >= 0  # not light: still in the pool
    text = server.metrics()
    assert metric(text, "offloop_worker_calls_total", method="ping", outcome="ok") == 1
    assert metric(text, "offloop_worker_calls_total", method="burn", outcome="ok") == 1


def test_an_async_method_waits_without_holding_the_loop(
    start_worker: StartWorker, tmp_path: Path
) -> None:
    server = start_worker(handler="light:AsyncHandler")
    with RawClient(server.port) as raw, Gate(tmp_path) as gate:
        raw.send("ping", 1, f"a{gate.message}")
        assert raw.call("ping", "meanwhile", seqid=2) == "meanwhile"
        gate.open()
        assert raw.recv().value() == "opened"


def test_async_calls_count_against_admission(start_worker: StartWorker, tmp_path: Path) -> None:
    # workers + max_queued = 2 calls may run on the loop at once; the third is refused.
    server = start_worker(handler="light:AsyncHandler", max_queued=0, max_calls_per_connection=8)
    with RawClient(server.port) as raw, Gate(tmp_path) as gate:
        raw.send("ping", 1, f"a{gate.message}")
        raw.send("ping", 2, f"a{gate.message}")
        wait_until(
            lambda: server.on_loop(lambda: server.server._loop_admission.borrowed) == 2, timeout=10
        )
        raw.send("ping", 3, "refused")
        refused = raw.recv()
        assert refused.seqid == 3 and refused.is_exception
        assert "calls already run on the worker's loop" in refused.body.message
        gate.open()
        assert sorted(r.seqid for r in raw.recv_many(2)) == [1, 2]
    text = server.metrics()
    assert metric(text, "offloop_worker_calls_total", method="ping", outcome="overloaded") == 1


def test_an_async_call_past_its_deadline_is_a_timeout(
    start_worker: StartWorker, tmp_path: Path
) -> None:
    server = start_worker(handler="light:AsyncHandler", call_timeout=0.05)
    with RawClient(server.port) as raw, Gate(tmp_path) as gate:
        raw.send("ping", 1, f"a{gate.message}")  # never opened while the call runs
        reply = raw.recv()
        assert reply.is_exception
        assert "did not finish within" in reply.body.message
        assert raw.call("ping", "still open", seqid=2) == "still open"


def test_a_blocking_inline_method_is_named_by_a_watchdog_on_the_loop(
    start_worker: StartWorker, tmp_path: Path
) -> None:
    # The worker has no watchdog of its own: a LoopWatchdog on its loop names the method.
    server = start_worker(handler="light:InlineHandler")
    watchdog = LoopWatchdog(WatchdogConfig(stall_threshold=0.05))
    server.on_loop(watchdog.start)
    try:
        with RawClient(server.port) as raw, Gate(tmp_path) as gate:
            raw.send("ping", 1, gate.message)  # an inline method that blocks: a mistake
            # The loop is held by the call: the watchdog's thread sees the stall while it
            # lasts (a record with no duration yet), then the test lets go.
            wait_until(lambda: any(r.duration is None for r in watchdog.records), timeout=10)
            stack = watchdog.records[-1].stack
            gate.open()
            assert raw.recv().value() == "opened"
        assert "in ping" in stack and "light.py" in stack, stack
    finally:
        server.on_loop(watchdog.stop)


def test_inline_refuses_an_async_method() -> None:
    async def method() -> None:
        return None

    with pytest.raises(TypeError, match="async def"):
        inline(method)


class _Recorder(asyncio.Protocol):
    """A client side that keeps each chunk the server wrote, as written."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.got = asyncio.Event()

    def data_received(self, data: bytes) -> None:
        self.chunks.append(data)
        self.got.set()


def test_replies_made_in_one_turn_go_out_in_one_write() -> None:
    # Issue 16: a write per reply was a third of an inline call's cost. Three pipelined
    # calls read at once are answered in one turn of the loop, so in one write, in order.
    async def test() -> None:
        server = WorkerServer(worker_config("thread", handler="light:InlineHandler"))
        await server.start(listen=False)
        try:
            client = _Recorder()
            loop = asyncio.get_running_loop()
            sent, _ = MemoryTransport.pair(
                loop, client, server.connection(), address=("worker", 9090), client_port=1
            )
            codec = MessageCodec("binary")
            info = SERVICE.methods["ping"]
            calls = [
                encode_frame(codec.encode_call(info, seqid, info.args_cls(msg=f"m{seqid}")))
                for seqid in range(3)
            ]
            sent.write(b"".join(calls))
            await asyncio.wait_for(client.got.wait(), 30)
            (chunk,) = client.chunks
            decoder = FrameDecoder()
            decoder.feed(chunk)
            replies = [codec.decode_reply(f, info)[1].success for f in decoder.frames()]
            assert replies == ["m0", "m1", "m2"]
            sent.close()
        finally:
            await server.shutdown(0)

    asyncio.run(test())
