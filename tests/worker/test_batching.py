"""Dynamic batching of ``@batched`` handler methods (``faulty:BatchedHandler.embed``, at most
8 calls per batch, 50 ms to fill), over both pools."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from gates import Gate
from harness import RawClient, ServerThread, metric, textlab, thrift_client
from thriftpy2.thrift import TApplicationException
from waiting import wait_until

StartWorker = Callable[..., ServerThread]


@pytest.fixture
def batched(start_worker: StartWorker) -> ServerThread:
    # One connection fills whole batches: let it hold as many calls as the pool admits.
    return start_worker(handler="faulty:BatchedHandler", max_queued=16, max_calls_per_connection=18)


def test_concurrent_calls_are_merged(batched: ServerThread) -> None:
    texts = [["a"], ["bb", "ccc"], ["dddd"], []]
    with RawClient(batched.port) as raw:
        raw.sock.sendall(b"".join(raw.call_bytes("embed", i, t) for i, t in enumerate(texts)))
        replies = {r.seqid: r.value() for r in raw.recv_many(len(texts))}
    # Each call gets its own results; the second number is the size of the batch it ran in.
    assert replies == {
        0: [[1.0, 4.0]],
        1: [[2.0, 4.0], [3.0, 4.0]],
        2: [[4.0, 4.0]],
        3: [],
    }
    text = batched.metrics()
    assert metric(text, "offloop_worker_batch_size_count", method="embed") == 1
    assert metric(text, "offloop_worker_calls_total", method="embed", outcome="ok") == 4


def test_a_lone_call_is_a_batch_of_one(batched: ServerThread) -> None:
    client = thrift_client(batched.port)
    try:
        assert client.embed(["hello"]) == [[5.0, 1.0]]
        assert client.embed(["hi", "there"]) == [[2.0, 1.0], [5.0, 1.0]]
        assert client.ping("not batched") == "not batched"
    finally:
        client.close()


def test_a_failing_batch_fails_only_its_own_calls(batched: ServerThread) -> None:
    # Ten calls: the first eight fill a batch (one of them makes it fail), the last two
    # form the next batch, which runs at the same time and succeeds.
    calls = [["x"]] * 3 + [["fail"]] + [["x"]] * 4 + [["yy"], ["zzz"]]
    with RawClient(batched.port) as raw:
        raw.sock.sendall(b"".join(raw.call_bytes("embed", i, t) for i, t in enumerate(calls)))
        replies = {r.seqid: r for r in raw.recv_many(len(calls))}
    for seqid in range(8):
        assert replies[seqid].is_exception
        assert replies[seqid].body.type == TApplicationException.INTERNAL_ERROR
        assert replies[seqid].body.message == "internal error: RuntimeError: batch failed"
    assert replies[8].value() == [[2.0, 2.0]]
    assert replies[9].value() == [[3.0, 2.0]]


def test_a_per_call_exception_fails_only_that_call(batched: ServerThread) -> None:
    with RawClient(batched.port) as raw:
        # Sent together, read together: one batch (a lone call would leave at once).
        raw.sock.sendall(raw.call_bytes("embed", 1, ["bad"]) + raw.call_bytes("embed", 2, ["ok"]))
        replies = {r.seqid: r for r in raw.recv_many(2)}
    with pytest.raises(textlab.InvalidArgument) as info:
        replies[1].value()
    assert info.value.message == "bad text"
    assert replies[2].value() == [[2.0, 2.0]]


def test_shutdown_gives_up_on_a_batch_after_the_grace_period(
    start_worker: StartWorker, tmp_path: Path
) -> None:
    # A batch in flight is bounded by the grace period like any call, not by call_timeout.
    server = start_worker(handler="faulty:BatchedHandler", grace=0.2)
    with RawClient(server.port) as raw, Gate(tmp_path) as gate:
        raw.send("embed", 1, [gate.message])
        wait_until(lambda: server.stats().busy == 1, timeout=5)
        # Done while the batch is still held (it cannot end before its gate opens): the
        # shutdown gave up on it instead of waiting for it.
        server.begin_shutdown().result(10)
        assert raw.closed_by_server()  # no reply: the call was abandoned
