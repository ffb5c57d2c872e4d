"""Cancellation (issue 13): a client that gives up on a call tells the worker, which drops it.

Real workers on 127.0.0.1 over both pools, called over bare sockets in header frames; a
cancel is the frame :meth:`offloop.codec.call.CallCodec.encode_cancel` makes, as offloop's
client sends it. Calls are held running or queued with gates, never sleeps.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from gates import Gate
from harness import SERVICE, RawClient, ServerThread, calls_answered, metric
from waiting import wait_until

from offloop.codec.call import CallCodec
from offloop.codec.framing import FrameDecoder
from offloop.codec.header import HeaderFrame, decode_header_frame, encode_header_frame
from offloop.codec.message import REPLY, MessageCodec

HANDLER = "cancel_handler:Handler"
BATCHED = "cancel_handler:BatchedHandler"


class HeaderClient:
    """THeader (binary) over a bare socket: calls, cancels, and the seqids of the replies."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.codec = MessageCodec("binary")
        self._calls = CallCodec("binary", 1 << 20, "worker", header=True)
        self._decoder = FrameDecoder()
        self._frames: list[bytes] = []

    def __enter__(self) -> HeaderClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def send(self, method: str, seqid: int, *args: Any) -> None:
        info = SERVICE.methods[method]
        struct = info.args_cls(**dict(zip(info.arg_names, args, strict=True)))
        payload = self.codec.encode_call(info, seqid, struct)
        self.sock.sendall(encode_header_frame(HeaderFrame(seqid=seqid, payload=payload)))

    def cancel(self, seqid: int) -> None:
        self.sock.sendall(self._calls.encode_cancel(seqid))

    def recv(self, method: str) -> tuple[int, Any]:
        """The next reply: (its seqid, its value), failing the test if it is not a reply."""
        while not self._frames:
            data = self.sock.recv(65536)
            assert data, "the worker closed the connection instead of replying"
            self._decoder.feed(data)
            self._frames.extend(self._decoder.frames())
        frame = decode_header_frame(self._frames.pop(0))
        header = self.codec.read_header(frame.payload)
        assert header.type == REPLY, f"not a reply: {header}"
        _, body = self.codec.decode_reply(frame.payload, SERVICE.methods[method])
        return header.seqid, body.success


def cancelled(worker: ServerThread, method: str = "ping") -> float:
    return calls_answered(worker.server, method, "cancelled")


def test_a_queued_call_is_dropped_without_running(
    start_worker: Callable[..., ServerThread], tmp_path: Path
) -> None:
    worker = start_worker(handler=HANDLER, workers=1, call_timeout=30.0)
    marks = tmp_path / "marks"
    with Gate(tmp_path) as gate, HeaderClient(worker.port) as busy:
        busy.send("ping", 1, gate.message)  # holds the only worker
        wait_until(lambda: worker.stats().busy == 1, timeout=30)
        with HeaderClient(worker.port) as client:
            client.send("ping", 7, f"mark:{marks}")
            wait_until(lambda: worker.stats().queued == 1, timeout=30)
            client.cancel(7)
            wait_until(lambda: cancelled(worker) == 1, timeout=30)
            assert worker.stats().queued == 0  # it left the queue at once
            gate.open()
            assert busy.recv("ping") == (1, "opened")
            # Not answered (its caller is gone): the next reply on its connection is the next
            # call's, and the cancelled call never ran.
            client.send("ping", 8, "after")
            assert client.recv("ping") == (8, "after")
    assert not marks.exists()
    text = worker.metrics()
    assert metric(text, "offloop_worker_calls_total", method="ping", outcome="cancelled") == 1


def test_a_cancel_sent_with_its_call_runs_nothing(
    start_worker: Callable[..., ServerThread], tmp_path: Path
) -> None:
    # Call and cancel in one write: the call's task is cancelled before it begins.
    worker = start_worker(handler=HANDLER)
    marks = tmp_path / "marks"
    cancel = CallCodec("binary", 1 << 20, "w", header=True).encode_cancel
    info = SERVICE.methods["ping"]
    with HeaderClient(worker.port) as client:
        for seqid in (3, 5):  # as the connection's first frames, then once it is known header
            payload = client.codec.encode_call(info, seqid, info.args_cls(msg=f"mark:{marks}"))
            call = encode_header_frame(HeaderFrame(seqid=seqid, payload=payload))
            client.sock.sendall(call + cancel(seqid))
            wait_until(lambda n=seqid: cancelled(worker) == (n - 1) // 2, timeout=30)
            client.send("ping", seqid + 1, "next")
            assert client.recv("ping") == (seqid + 1, "next")
    assert not marks.exists()
    wait_until(lambda: worker.stats().busy == 0, timeout=30)


def test_a_cancel_for_an_unknown_seqid_is_ignored(worker: ServerThread) -> None:
    with HeaderClient(worker.port) as client:
        client.cancel(12345)  # never called
        client.send("ping", 1, "one")
        assert client.recv("ping") == (1, "one")
        client.cancel(1)  # already answered
        client.send("ping", 2, "two")
        assert client.recv("ping") == (2, "two")
    assert cancelled(worker) == 0
    unknown = metric(worker.metrics(), "offloop_worker_calls_total", method="<unknown>")
    assert unknown in (None, 0.0)  # not taken for calls of an unknown method


def test_a_running_process_pool_call_has_its_child_replaced(
    start_worker: Callable[..., ServerThread], pool: str, tmp_path: Path
) -> None:
    if pool != "process":
        pytest.skip("a thread cannot be killed: its handler is told instead (test below)")
    worker = start_worker(handler=HANDLER, call_timeout=30.0)
    restarts = worker.stats().restarts
    with Gate(tmp_path) as gate, HeaderClient(worker.port) as client:
        client.send("ping", 5, gate.message)
        wait_until(lambda: worker.stats().busy == 1, timeout=30)
        client.cancel(5)
        # Killed long before its call timeout (30 s) or its gate, and replaced.
        wait_until(lambda: worker.stats().restarts == restarts + 1, timeout=30)
        assert not gate.is_open
        wait_until(lambda: cancelled(worker) == 1, timeout=30)
        assert worker.stats().busy == 0
        client.send("ping", 6, "still serving")
        assert client.recv("ping") == (6, "still serving")
    wait_until(lambda: worker.stats().alive == 2, timeout=60)


def test_a_thread_pool_handler_sees_the_cancellation(
    start_worker: Callable[..., ServerThread], pool: str, tmp_path: Path
) -> None:
    if pool != "thread":
        pytest.skip("a process-pool child is replaced instead (test above)")
    worker = start_worker(handler=HANDLER, call_timeout=30.0)
    seen = tmp_path / "seen"
    with HeaderClient(worker.port) as client:
        client.send("ping", 9, f"until-cancelled:{seen}")
        wait_until(lambda: Path(f"{seen}.running").exists(), timeout=30)
        assert not seen.exists()  # it waits for the cancel
        client.cancel(9)
        wait_until(seen.exists, timeout=30)
        wait_until(lambda: worker.stats().busy == 0, timeout=30)
        client.send("ping", 10, "next")
        assert client.recv("ping") == (10, "next")  # no reply for the cancelled call
    assert seen.read_text() == "cancelled=True check_deadline raised DeadlineExceeded\n"
    assert cancelled(worker) == 1


def test_a_batched_call_leaves_its_batch_before_it_runs(
    start_worker: Callable[..., ServerThread], tmp_path: Path
) -> None:
    worker = start_worker(handler=BATCHED, workers=1, call_timeout=30.0, max_calls_per_connection=4)
    with Gate(tmp_path) as gate, HeaderClient(worker.port) as client:
        client.send("embed", 1, [gate.message])  # a batch of one holds the only worker
        wait_until(lambda: worker.stats().busy == 1, timeout=30)
        # These two form the next batch, which waits for the running one.
        client.send("embed", 2, ["to be cancelled"])
        client.send("embed", 3, ["kept"])
        batcher = worker.server._batchers["embed"]
        wait_until(lambda: worker.on_loop(lambda: len(batcher._items)) == 2, timeout=30)
        client.cancel(2)
        wait_until(lambda: cancelled(worker, "embed") == 1, timeout=30)
        gate.open()
        replies = dict(client.recv("embed") for _ in range(2))
    # The second batch ran without the cancelled call: a batch of one (its values say so).
    assert replies == {1: [[float(len(gate.message)), 1.0]], 3: [[4.0, 1.0]]}
    text = worker.metrics()
    assert metric(text, "offloop_worker_batch_size_count", method="embed") == 2
    assert metric(text, "offloop_worker_batch_size_sum", method="embed") == 2


def test_a_framed_connection_cannot_cancel(worker: ServerThread) -> None:
    # A cancel is a header frame: on a framed connection it is refused as mixed framing.
    with RawClient(worker.port) as raw:
        assert raw.call("ping", "framed") == "framed"
        raw.sock.sendall(CallCodec("binary", 1 << 20, "w", header=True).encode_cancel(1))
        assert raw.closed_by_server()
    assert cancelled(worker) == 0
