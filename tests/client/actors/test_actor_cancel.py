"""Cancellation from actor mode (issue 13): a call the gateway gives up is cancelled on the worker.

The blocking client of an actor waits for its reply in ``poll(2)`` on its socket and on a
wake-up pair that :class:`~offloop.client.blocking.GiveUp` writes to: a call given up before it
is written is never sent, and one given up in flight on a THeader connection is cancelled
(``offloop.cancel`` for its seqid) while the connection stays open for the next call. Real
worker servers on 127.0.0.1 (thread pool, ``cancel_handler`` of ``tests/support``: its
``until-cancelled`` ping runs until it sees :func:`offloop.cancelled`, and reports what it
saw), the fake Thrift server of ``tests/support`` for a reply that comes after the cancel, and
a real uvicorn gateway in actor mode for the HTTP client that goes away. Nothing waits on a
timer: each step waits for a file, a metric or a count that proves the previous one happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import socket
import sys
import termios
import time
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import faulty
import pytest
from configs import override
from fake_thrift import FakeServer
from gates import Gate
from gateway_stack import LoopThread, Stack, worker_config
from harness import calls_answered
from waiting import wait_until, wait_until_async

from offloop.client.actors import ActorCaller
from offloop.client.blocking import BlockingClient, GiveUp
from offloop.client.config import ClientConfig
from offloop.client.errors import NotSentClosedError
from offloop.errors import ClosedError, DeadlineExceeded
from offloop.idl import load_idl, service_info
from offloop.worker.config import WorkerConfig
from offloop.worker.server import WorkerServer

T = TypeVar("T")

SERVICE = service_info(load_idl(faulty.IDL), "TextLab")
PING = SERVICE.methods["ping"]
SLEEP = SERVICE.methods["sleep"]
HANDLER = "cancel_handler:Handler"
#: What ``until-cancelled`` reports once it saw the cancellation.
SAW_CANCEL = "cancelled=True check_deadline raised DeadlineExceeded\n"
#: Seconds a test waits for a state it expects (bounds a hang, not a speed claim).
WAIT = 20.0
#: A deadline far beyond any test: what ends a call here is a cancellation, never a timer.
FAR = 60.0


def run(coro: Coroutine[Any, Any, T]) -> T:
    async def main() -> T:
        async with asyncio.timeout(2 * WAIT):
            return await coro

    return asyncio.run(main())


async def start_worker() -> WorkerServer:
    server = WorkerServer(
        override(
            WorkerConfig(idl=faulty.IDL, service="TextLab", handler=HANDLER, grace=0.0),
            pool="thread",
            workers=2,
            port=0,
            call_timeout=FAR,
            nice=0,
        )
    )
    await server.start()
    return server


def until_cancelled(directory: Path) -> tuple[str, Path]:
    """The ``ping`` message that runs until cancelled, and the file it reports to."""
    seen = directory / "seen"
    return f"until-cancelled:{seen}", seen


def running(seen: Path) -> bool:
    return Path(f"{seen}.running").exists()


def reported(seen: Path) -> str:
    """What the handler reported, once it has written its whole line ("" until then: the
    file exists a moment before its text is in it)."""
    text = seen.read_text() if seen.exists() else ""
    return text if text.endswith("\n") else ""


# -- the blocking client ------------------------------------------------------------------


def test_a_call_given_up_in_flight_is_cancelled_and_the_connection_kept(tmp_path: Path) -> None:
    async def main() -> None:
        worker = await start_worker()
        client = BlockingClient("127.0.0.1", worker.port, ClientConfig())
        try:
            msg, seen = until_cancelled(tmp_path)
            give_up = GiveUp()
            call = asyncio.ensure_future(
                asyncio.to_thread(
                    client.call, PING, PING.args_cls(msg=msg), time.monotonic() + FAR, FAR,
                    give_up=give_up,
                )
            )  # fmt: skip
            await wait_until_async(lambda: running(seen), WAIT)
            assert not call.done()
            give_up.set()  # as the loop does: it never blocks
            with pytest.raises(ClosedError, match="given up"):
                await call
            # The worker heard the cancel: the handler saw it, and the call is not answered.
            assert await wait_until_async(lambda: reported(seen), WAIT) == SAW_CANCEL
            await wait_until_async(lambda: calls_answered(worker, "ping", "cancelled") == 1, WAIT)
            # The same connection serves the next calls.
            for text in ("next", "and next"):
                value = await asyncio.to_thread(
                    client.call, PING, PING.args_cls(msg=text), time.monotonic() + FAR, FAR
                )
                assert value == text
            assert (client.connects, client.header) == (1, True)
        finally:
            client.close()
            await worker.shutdown(0)

    run(main())


def test_a_call_given_up_before_it_is_written_is_not_sent(tmp_path: Path) -> None:
    async def main() -> None:
        worker = await start_worker()
        client = BlockingClient("127.0.0.1", worker.port, ClientConfig())
        try:
            give_up = GiveUp()
            give_up.set()
            with pytest.raises(NotSentClosedError, match="before it was sent"):
                client.call(
                    PING, PING.args_cls(msg="never"), time.monotonic() + FAR, FAR, give_up=give_up
                )
            assert client.connects == 0  # not even a connection
            assert (
                await asyncio.to_thread(
                    client.call, PING, PING.args_cls(msg="sent"), time.monotonic() + FAR, FAR
                )
                == "sent"
            )
            assert calls_answered(worker, "ping") == 1
        finally:
            client.close()
            await worker.shutdown(0)

    run(main())


def test_a_deadline_on_a_header_connection_cancels_and_keeps_it(tmp_path: Path) -> None:
    async def main() -> None:
        worker = await start_worker()
        client = BlockingClient("127.0.0.1", worker.port, ClientConfig())
        try:
            assert (
                await asyncio.to_thread(
                    client.call, PING, PING.args_cls(msg="warm"), time.monotonic() + FAR, FAR
                )
                == "warm"
            )
            msg, seen = until_cancelled(tmp_path)
            # The deadline passes while the call provably still runs: only a cancellation
            # (or the deadline itself, on the worker's clock) ends it.
            with pytest.raises(DeadlineExceeded):
                await asyncio.to_thread(
                    client.call, PING, PING.args_cls(msg=msg), time.monotonic() + 0.2, 0.2
                )
            assert await wait_until_async(lambda: reported(seen), WAIT) == SAW_CANCEL
            # Cancelled (our message) or timed out (the worker's clock passed the deadline it
            # was sent, and it answered: that late reply is dropped by the next call).
            outcomes = ("cancelled", "timeout")
            await wait_until_async(
                lambda: sum(calls_answered(worker, "ping", o) for o in outcomes) == 1, WAIT
            )
            assert (
                await asyncio.to_thread(
                    client.call, PING, PING.args_cls(msg="next"), time.monotonic() + FAR, FAR
                )
                == "next"
            )
            assert client.connects == 1
        finally:
            client.close()
            await worker.shutdown(0)

    run(main())


def test_a_reply_that_comes_after_the_cancel_is_dropped() -> None:
    """The fake server ignores cancels and answers ``sleep`` late, as a worker whose reply
    was already on its way when the cancel came: the reply must never be taken for the next
    call's, and the connection stays."""

    async def main() -> None:
        fake = await FakeServer().start()
        client = BlockingClient("127.0.0.1", fake.port, ClientConfig())
        try:
            give_up = GiveUp()
            call = asyncio.ensure_future(
                asyncio.to_thread(
                    client.call, SLEEP, SLEEP.args_cls(millis=1000), time.monotonic() + FAR, FAR,
                    give_up=give_up,
                )
            )  # fmt: skip
            await wait_until_async(lambda: len(fake.received) == 1, WAIT)
            give_up.set()
            # Given up: the usual case. Answered only if the reply, due a second later, won
            # the race (a machine stalled that long): then there is no late reply to drop.
            with contextlib.suppress(ClosedError):
                assert await call == 1000.0
            await wait_until_async(lambda: fake.late_replies == 1, WAIT)
            for text in ("one", "two"):
                value = await asyncio.to_thread(
                    client.call, PING, PING.args_cls(msg=text), time.monotonic() + FAR, FAR
                )
                assert value == text
            assert (fake.accepted, client.header) == (1, True)
        finally:
            client.close()
            await fake.stop()

    run(main())


def test_a_late_reply_split_across_reads_is_never_taken_for_the_next_calls() -> None:
    """Part of a reply is read when its call is given up: the rest, coming later, must not be
    read as a frame of its own (its bytes would pass for a length). The connection is reset."""

    async def main() -> None:
        fake = await FakeServer().start()
        fake.split_sleep = True
        client = BlockingClient("127.0.0.1", fake.port, ClientConfig())
        try:
            give_up = GiveUp()
            call = asyncio.ensure_future(
                asyncio.to_thread(
                    client.call, SLEEP, SLEEP.args_cls(millis=1), time.monotonic() + FAR, FAR,
                    give_up=give_up,
                )
            )  # fmt: skip
            await wait_until_async(lambda: fake.first_part_sent, WAIT)
            sock = client._sock
            assert sock is not None
            # The client has read the reply's first part: nothing is left in its socket.
            await wait_until_async(lambda: _unread(sock) == 0, WAIT)
            give_up.set()
            with pytest.raises(ClosedError):
                await call
            fake.send_rest()
            for text in ("one", "two"):
                value = await asyncio.to_thread(
                    client.call, PING, PING.args_cls(msg=text), time.monotonic() + FAR, FAR
                )
                assert value == text
            assert fake.accepted == 2  # reset, not kept: the rest of that reply went with it
        finally:
            client.close()
            await fake.stop()

    run(main())


def _unread(sock: socket.socket) -> int:
    """Bytes in ``sock``'s receive queue that nobody has read yet."""
    raw = fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0")
    return int.from_bytes(raw, sys.byteorder)


def test_a_framed_connection_cannot_cancel_and_waits_for_the_reply(tmp_path: Path) -> None:
    async def main() -> None:
        worker = await start_worker()
        client = BlockingClient("127.0.0.1", worker.port, ClientConfig(transport="framed"))
        try:
            with Gate(tmp_path) as gate:
                give_up = GiveUp()
                call = asyncio.ensure_future(
                    asyncio.to_thread(
                        client.call, PING, PING.args_cls(msg=gate.message),
                        time.monotonic() + FAR, FAR, give_up=give_up,
                    )
                )  # fmt: skip
                await wait_until_async(lambda: worker.pool.stats().busy == 1, WAIT)
                give_up.set()  # wakes the client, which has nobody to tell: it reads on
                gate.open()
                assert await call == "opened"
            assert calls_answered(worker, "ping", "ok") == 1
            assert client.connects == 1
        finally:
            client.close()
            await worker.shutdown(0)

    run(main())


# -- the actor caller, and a gateway in actor mode ----------------------------------------


def test_a_cancelled_task_cancels_its_actors_call_and_the_actor_goes_on(tmp_path: Path) -> None:
    async def main() -> None:
        worker = await start_worker()
        caller = ActorCaller({"TextLab": [("127.0.0.1", worker.port)]}, actors=1, mailbox=2)
        try:
            await caller.start()
            msg, seen = until_cancelled(tmp_path)
            task = asyncio.ensure_future(
                caller.call("TextLab", PING, PING.args_cls(msg=msg), timeout=FAR, idempotent=False)
            )
            await wait_until_async(lambda: running(seen), WAIT)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert await wait_until_async(lambda: reported(seen), WAIT) == SAW_CANCEL
            await wait_until_async(lambda: calls_answered(worker, "ping", "cancelled") == 1, WAIT)
            # The actor reported at once (it does not wait for a reply that never comes)...
            await wait_until_async(lambda: caller.backend_states()[0].in_flight == 0, WAIT)
            # ...and serves the next call on the same connection.
            value = await caller.call(
                "TextLab", PING, PING.args_cls(msg="next"), timeout=FAR, idempotent=False
            )
            assert value == "next"
            assert _only_client(caller).connects == 1
        finally:
            await caller.close()
            await worker.shutdown(0)

    run(main())


def _only_client(caller: ActorCaller) -> BlockingClient:
    """The blocking client of a one-actor caller (white box: which connection it used)."""
    (slot,) = caller._slots
    assert slot.link is not None
    return slot.link.client


@pytest.fixture
def stack() -> Iterator[Stack]:
    loop = LoopThread()
    stack = Stack(loop, "uvicorn", "actor")
    try:
        yield stack
    finally:
        try:
            stack.close()
        finally:
            loop.stop()


def _post(port: int, method: str, body: dict[str, Any]) -> socket.socket:
    """Send one HTTP request over a bare socket and return it (close it to go away)."""
    data = json.dumps(body).encode()
    sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
    sock.sendall(
        f"POST /rpc/TextLab/{method} HTTP/1.1\r\nHost: gateway\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n".encode()
        + data
    )
    return sock


def test_http_clients_that_go_away_through_an_actor_gateway(stack: Stack, tmp_path: Path) -> None:
    """One actor: the first client's call runs on the worker, the second's waits in the
    actor's mailbox. The second goes away: its call is never sent. The first goes away: the
    worker's handler sees the cancellation. The actor's connection serves what comes next."""
    worker = stack.start_worker(worker_config("thread", handler=HANDLER, call_timeout=FAR))
    gateway = stack.start_gateway([("127.0.0.1", worker.port)], timeout=FAR, actors=1, mailbox=2)
    assert isinstance(gateway.caller, ActorCaller)
    port = int(stack.url.rsplit(":", 1)[1])
    msg, seen = until_cancelled(tmp_path)
    running_client = _post(port, "ping", {"msg": msg})
    queued_client: socket.socket | None = None
    try:
        wait_until(lambda: running(seen), timeout=WAIT)
        queued_client = _post(port, "sleep", {"millis": 1})
        wait_until(lambda: stack.inflight() == 2, timeout=WAIT)  # queued behind the first
        queued_client.close()
        wait_until(lambda: stack.inflight() == 1, timeout=WAIT)
        assert not seen.exists()
    finally:
        running_client.close()
        if queued_client is not None:
            queued_client.close()
    assert wait_until(lambda: reported(seen), timeout=WAIT) == SAW_CANCEL
    wait_until(lambda: calls_answered(worker, "ping", "cancelled") == 1, timeout=WAIT)
    wait_until(lambda: stack.inflight() == 0, timeout=WAIT)
    # The queued call was given up before its actor took it: the worker never saw it.
    assert calls_answered(worker, "sleep") == 0
    assert stack.call("ping", {"msg": "after"}).json() == {"result": "after"}
    assert stack.call("sleep", {"millis": 1}).json() == {"result": 1.0}
    assert calls_answered(worker, "sleep") == 1
    assert _only_client(gateway.caller).connects == 1
