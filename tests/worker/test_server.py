"""The worker server over both pools: request-level dispatch, bounds, handler errors, bad
input and graceful shutdown, with real servers on 127.0.0.1 and real clients."""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
from gates import Gate
from harness import SERVICE, RawClient, ServerThread, metric, textlab, thrift_client
from thriftpy2.protocol import TCompactProtocolFactory
from thriftpy2.rpc import make_client
from thriftpy2.thrift import TApplicationException
from thriftpy2.transport import TFramedTransportFactory
from waiting import wait_until

from offloop.codec.framing import DEFAULT_MAX_FRAME_SIZE, encode_frame
from offloop.codec.message import MessageCodec
from offloop.worker.config import WorkerConfig

INTERNAL_ERROR = TApplicationException.INTERNAL_ERROR

StartWorker = Callable[..., ServerThread]


def worker_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The WARNING-or-worse lines the worker server logged (not the pools' own)."""
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "offloop.worker" and r.levelno >= logging.WARNING
    ]


# -- request-level dispatch ----------------------------------------------------------------


def test_plain_client_one_call_at_a_time(worker: ServerThread) -> None:
    client = thrift_client(worker.port)
    try:
        assert client.ping("hello") == "hello"
        assert client.sleep(10) == 10.0
        assert client.burn(5) > 0
        assert client.crunch(3) == 3.0
        assert client.embed(["ab", "c"]) == [[2.0], [1.0]]
        for i in range(20):
            assert client.ping(f"call {i}") == f"call {i}"
    finally:
        client.close()


def test_compact_protocol(start_worker: StartWorker) -> None:
    server = start_worker(protocol="compact")
    client = make_client(
        textlab.TextLab,
        "127.0.0.1",
        server.port,
        proto_factory=TCompactProtocolFactory(),
        trans_factory=TFramedTransportFactory(),
        timeout=10_000,
    )
    try:
        assert client.ping("compact") == "compact"
        with pytest.raises(textlab.ParseError):
            client.parse("x")
    finally:
        client.close()
    with RawClient(server.port, protocol="compact") as raw:
        raw.send("ping", -7, "negative seqid")  # Apache writes seqids as unsigned varints
        reply = raw.recv()
        assert (reply.seqid, reply.value()) == (-7, "negative seqid")


def test_replies_carry_seqids_and_come_in_completion_order(worker: ServerThread) -> None:
    with RawClient(worker.port) as raw:
        raw.sock.sendall(raw.call_bytes("sleep", 1, 600) + raw.call_bytes("ping", 2, "fast"))
        first, second = raw.recv_many(2)
    assert (first.seqid, first.value()) == (2, "fast")
    assert (second.seqid, second.value()) == (1, 600.0)


def test_calls_from_one_connection_run_at_the_same_time(start_worker: StartWorker) -> None:
    server = start_worker(workers=2)
    with RawClient(server.port) as raw:
        raw.sock.sendall(raw.call_bytes("sleep", 10, 600) + raw.call_bytes("sleep", 11, 600))
        # Both calls of this one connection hold a worker at once.
        wait_until(lambda: server.stats().busy == 2, timeout=5)
        replies = raw.recv_many(2)
        # The connection is still usable for a plain call afterwards.
        assert raw.call("ping", "after", seqid=12) == "after"
    assert sorted(r.seqid for r in replies) == [10, 11]
    assert all(r.value() == 600.0 for r in replies)


def test_many_calls_in_flight_on_one_connection(start_worker: StartWorker) -> None:
    server = start_worker(workers=2, max_queued=100)
    n = 60
    with RawClient(server.port) as raw:
        raw.sock.sendall(b"".join(raw.call_bytes("ping", i, f"msg {i}") for i in range(n)))
        replies = raw.recv_many(n)
    assert sorted(r.seqid for r in replies) == list(range(n))
    assert all(r.value() == f"msg {r.seqid}" for r in replies)


def test_many_connections_at_once(start_worker: StartWorker) -> None:
    server = start_worker(max_queued=40)
    clients = [RawClient(server.port) for _ in range(30)]
    try:
        for i, c in enumerate(clients):
            c.send("ping", 1000 + i, f"client {i}")
        for i, c in enumerate(clients):
            reply = c.recv()
            assert (reply.seqid, reply.value()) == (1000 + i, f"client {i}")
    finally:
        for c in clients:
            c.close()


def test_uvloop_event_loop(start_worker: StartWorker) -> None:
    """The command line runs the server on uvloop, whose transports differ from asyncio's."""
    server = start_worker(uvloop=True)
    with RawClient(server.port) as raw:
        raw.send("sleep", 1, 200)
        raw.send("ping", 2, "uv")
        assert [r.seqid for r in raw.recv_many(2)] == [2, 1]
    with RawClient(server.port) as bad:
        bad.sock.sendall(b"\x00\x00\x00\x00")
        assert bad.closed_by_server()
    client = thrift_client(server.port)
    try:
        assert client.ping("still fine") == "still fine"
    finally:
        client.close()


# -- bounds ----------------------------------------------------------------------------------


def test_defaults() -> None:
    config = WorkerConfig(idl="x.thrift", service="S", handler="m:H")
    assert config.limits.max_frame_size == DEFAULT_MAX_FRAME_SIZE == 16 * 1024 * 1024
    assert config.workers == os.cpu_count()
    assert config.limits.call_timeout == 30.0
    assert config.grace == 10.0
    assert config.pool.nice == 10
    assert config.listen.port == 9090


def test_derived_values_follow_the_fields_they_come_from() -> None:
    config = WorkerConfig(idl="x.thrift", service="S", handler="m:H")
    three = dataclasses.replace(config, pool=dataclasses.replace(config.pool, workers=3))
    assert three.max_queued == 12  # four per worker, computed from the new size
    eight = dataclasses.replace(three, pool=dataclasses.replace(three.pool, workers=8))
    assert eight.max_queued == 32
    fixed = dataclasses.replace(eight, limits=dataclasses.replace(eight.limits, max_queued=5))
    assert fixed.max_queued == 5


def test_full_queue_is_answered_overloaded_at_once(start_worker: StartWorker) -> None:
    # One connection overfills the pool: let it have more calls in progress than it admits.
    server = start_worker(workers=1, max_queued=1, max_calls_per_connection=3)
    with RawClient(server.port) as raw:
        raw.sock.sendall(b"".join(raw.call_bytes("sleep", seqid, 300) for seqid in (1, 2, 3)))
        first = raw.recv()
        # The refused call is answered before the running one finishes.
        assert first.seqid == 3
        assert first.is_exception
        assert first.body.type == INTERNAL_ERROR
        assert first.body.message.startswith("overloaded"), first.body.message
        rest = raw.recv_many(2)
    assert [(r.seqid, r.value()) for r in rest] == [(1, 300.0), (2, 300.0)]
    assert metric(server.metrics(), "offloop_worker_calls_total", outcome="overloaded") == 1


def test_nothing_queues_without_bound(start_worker: StartWorker) -> None:
    n = 12
    server = start_worker(workers=2, max_queued=2, max_calls_per_connection=n)
    with RawClient(server.port) as raw:
        raw.sock.sendall(b"".join(raw.call_bytes("sleep", i, 300) for i in range(n)))
        replies = raw.recv_many(n)
    overloaded = [r for r in replies if r.is_exception]
    assert all(r.body.message.startswith("overloaded") for r in overloaded)
    assert len(overloaded) == n - 4  # two running, two queued
    assert [r.value() for r in replies if not r.is_exception] == [300.0] * 4
    # Refusals came first: nothing waited behind the bound.
    assert all(r.is_exception for r in replies[: n - 4])


# -- handler errors --------------------------------------------------------------------------


def test_declared_exception_goes_back_as_such(worker: ServerThread) -> None:
    client = thrift_client(worker.port)
    try:
        with pytest.raises(textlab.ParseError) as info:
            client.parse("colorless green")
        assert info.value.message == "cannot parse 'colorless green'"
        assert info.value.unknown_words == ["x"]
        assert client.ping("still open") == "still open"
    finally:
        client.close()


def test_other_exception_is_internal_error_and_logged(
    worker: ServerThread, pool: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="offloop")
    client = thrift_client(worker.port)
    try:
        with pytest.raises(TApplicationException) as info:
            client.ping("raise")
        assert info.value.type == INTERNAL_ERROR
        assert info.value.message == "internal error: ValueError: boom"
        assert client.ping("connection stays open") == "connection stays open"
    finally:
        client.close()
    if pool == "thread":  # a child process logs to its own stderr: see test_cli
        (record,) = [r for r in caplog.records if "ping raised ValueError" in r.getMessage()]
        assert record.exc_info is not None
        assert record.exc_info[0] is ValueError
        assert "Traceback" in caplog.text
        assert 'raise ValueError("boom")' in caplog.text


@pytest.mark.parametrize(
    ("command", "type_", "message"),
    [
        (
            "badreturn",
            INTERNAL_ERROR,
            "internal error: handler returned a value that does not match the IDL",
        ),
        ("apperror", TApplicationException.UNKNOWN, "app says no"),
    ],
)
def test_bad_return_and_application_errors(
    worker: ServerThread, command: str, type_: int, message: str
) -> None:
    client = thrift_client(worker.port)
    try:
        with pytest.raises(TApplicationException) as info:
            client.ping(command)
        assert info.value.type == type_
        assert info.value.message.startswith(message), info.value.message
        assert client.ping("ok") == "ok"
    finally:
        client.close()


def test_declared_exception_that_does_not_encode_is_internal_error(worker: ServerThread) -> None:
    client = thrift_client(worker.port)
    try:
        with pytest.raises(TApplicationException) as info:
            client.parse("badexc")
        assert info.value.type == INTERNAL_ERROR
        assert "ParseError that does not match the IDL" in info.value.message
        assert client.ping("ok") == "ok"
    finally:
        client.close()


def test_outcomes_are_counted(worker: ServerThread) -> None:
    client = thrift_client(worker.port)
    try:
        client.ping("a")
        with pytest.raises(textlab.ParseError):
            client.parse("b")
        with pytest.raises(TApplicationException):
            client.ping("raise")
    finally:
        client.close()
    text = worker.metrics()
    assert metric(text, "offloop_worker_calls_total", method="ping", outcome="ok") == 1
    assert metric(text, "offloop_worker_calls_total", method="parse", outcome="exception") == 1
    assert metric(text, "offloop_worker_calls_total", method="ping", outcome="error") == 1


# -- bad input -------------------------------------------------------------------------------


def _unframed(protocol: str) -> bytes:
    codec = MessageCodec(protocol)  # type: ignore[arg-type]
    info = SERVICE.methods["ping"]
    return codec.encode_call(info, 1, info.args_cls(msg="x"))


def _reply_message() -> bytes:
    return encode_frame(
        MessageCodec().encode_reply("ping", 1, SERVICE.methods["ping"].result_cls(success="x"))
    )


@dataclasses.dataclass(frozen=True)
class BadStream:
    """A way to break the stream: what the client sends, and what the server says of it."""

    data: bytes
    logged: str  # in the single log line
    reason: str  # label of offloop_worker_protocol_errors_total
    half_close: bool = False  # the client then shuts down its sending side


BAD_STREAMS = {
    "garbage-bytes": BadStream(
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "over the limit", "FrameTooLarge"
    ),
    "garbage-frame": BadStream(
        encode_frame(b"\x00\x01garbage!"), "not a binary Thrift message", "garbage"
    ),
    "two-garbage-frames": BadStream(
        encode_frame(b"junk") * 2, "not a binary Thrift message", "garbage"
    ),
    "unframed-binary": BadStream(_unframed("binary"), "unframed Thrift message", "UnframedMessage"),
    "unframed-compact": BadStream(
        _unframed("compact"), "unframed Thrift message", "UnframedMessage"
    ),
    "empty-frame": BadStream(b"\x00\x00\x00\x00", "empty frame", "FrameError"),
    "not-a-call": BadStream(_reply_message(), "expected a call", "message_type"),
    "truncated-body": BadStream(
        struct.pack("!I", 100) + b"x" * 10, "stream ended inside a frame", "TruncatedFrame", True
    ),
    "truncated-header": BadStream(
        b"\x00\x00", "stream ended inside a frame", "TruncatedFrame", True
    ),
}


@pytest.mark.parametrize("case", list(BAD_STREAMS))
def test_bad_stream_closes_only_its_connection(
    worker: ServerThread, caplog: pytest.LogCaptureFixture, case: str
) -> None:
    bad_stream = BAD_STREAMS[case]
    caplog.set_level(logging.INFO, logger="offloop")
    bystander = thrift_client(worker.port)
    try:
        assert bystander.ping("before") == "before"
        with RawClient(worker.port) as bad:
            bad.sock.sendall(bad_stream.data)
            if bad_stream.half_close:
                bad.sock.shutdown(socket.SHUT_WR)
            assert bad.closed_by_server(), "the server did not close the bad connection"
        lines = wait_until(lambda: worker_warnings(caplog), timeout=5)
        assert len(lines) == 1, lines
        assert bad_stream.logged in lines[0]
        assert "closing connection from 127.0.0.1:" in lines[0]
        # Every other client is served as before, old and new.
        assert bystander.ping("after") == "after"
        with RawClient(worker.port) as fresh:
            assert fresh.call("ping", "fresh") == "fresh"
    finally:
        bystander.close()
    assert worker_warnings(caplog) == lines
    text = worker.metrics()
    errors = "offloop_worker_protocol_errors_total"
    assert metric(text, errors, reason=bad_stream.reason) == 1
    assert metric(text, "offloop_worker_calls_total", method="ping", outcome="ok") == 3


def test_frame_over_the_limit_closes_the_connection(
    start_worker: StartWorker, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="offloop")
    server = start_worker(max_frame_size=1024)
    with RawClient(server.port) as raw:
        assert raw.call("ping", "x" * 900) == "x" * 900  # under the limit
        raw.send("ping", 2, "x" * 2000)
        assert raw.closed_by_server()
    (line,) = wait_until(lambda: worker_warnings(caplog), timeout=5)
    assert "is over the limit of 1024 bytes" in line
    with RawClient(server.port) as fresh:
        assert fresh.call("ping", "fine") == "fine"


def test_unknown_method_is_answered_and_the_connection_stays_open(
    worker: ServerThread, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="offloop")
    nosuch = dataclasses.replace(SERVICE.methods["ping"], name="nosuch")
    with RawClient(worker.port) as raw:
        message = raw.codec.encode_call(nosuch, 5, nosuch.args_cls(msg="x"))
        raw.sock.sendall(encode_frame(message))
        reply = raw.recv()
        assert reply.seqid == 5
        assert reply.is_exception
        assert reply.body.type == TApplicationException.UNKNOWN_METHOD
        assert reply.body.message == "unknown method: 'nosuch' is not a method of service TextLab"
        assert raw.call("ping", "same connection", seqid=6) == "same connection"
    (line,) = worker_warnings(caplog)
    assert "unknown method 'nosuch'" in line


def test_malformed_arguments_are_a_protocol_error_reply(worker: ServerThread) -> None:
    with RawClient(worker.port) as raw:
        call = raw.call_bytes("embed", 8, ["abc", "def"])
        # Keep the header, cut the arguments short: the frame is whole, its message is not.
        body = call[4:-6]
        raw.sock.sendall(encode_frame(body))
        reply = raw.recv()
        assert reply.seqid == 8
        assert reply.is_exception
        assert reply.body.type == TApplicationException.PROTOCOL_ERROR
        assert "malformed arguments for embed" in reply.body.message
        assert raw.call("ping", "same connection", seqid=9) == "same connection"


def test_client_that_disconnects_mid_call(
    worker: ServerThread, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="offloop")
    with RawClient(worker.port) as raw:
        raw.send("sleep", 1, 300)
        wait_until(lambda: worker.stats().busy == 1, timeout=5)
    line = wait_until(
        lambda: [r.getMessage() for r in caplog.records if "disconnected" in r.getMessage()],
        timeout=5,
    )
    assert len(line) == 1
    assert "with 1 calls in flight; their replies are dropped" in line[0]
    with RawClient(worker.port) as other:
        assert other.call("ping", "unaffected") == "unaffected"
    # The abandoned call still ran to its end and was counted; its worker is free again.
    wait_until(lambda: worker.stats().busy == 0, timeout=5)
    wait_until(
        lambda: metric(worker.metrics(), "offloop_worker_calls_total", method="sleep") == 1,
        timeout=5,
    )


def test_max_connections(start_worker: StartWorker, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="offloop")
    server = start_worker(max_connections=2)
    with RawClient(server.port) as a, RawClient(server.port) as b:
        assert a.call("ping", "a") == "a"
        assert b.call("ping", "b") == "b"
        with RawClient(server.port) as c:
            assert c.closed_by_server()
        assert "refusing connection" in " ".join(worker_warnings(caplog))
    wait_until(lambda: metric(server.metrics(), "offloop_worker_connections") == 0, timeout=5)
    with RawClient(server.port) as d:
        assert d.call("ping", "d") == "d"


# -- graceful shutdown (the signals themselves: see test_cli) -------------------------------


def test_shutdown_finishes_in_flight_calls_and_stops_accepting(start_worker: StartWorker) -> None:
    server = start_worker(grace=5.0)
    port = server.port
    with RawClient(port) as raw:
        raw.send("sleep", 1, 500)
        wait_until(lambda: server.stats().busy == 1, timeout=5)
        done = server.begin_shutdown()
        wait_until(lambda: server.admin_get("/healthz")[0] == 503, timeout=5)
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
        # A call that arrives on an open connection while draining is refused, not queued.
        raw.send("ping", 2, "late")
        late = raw.recv()
        assert late.seqid == 2
        assert late.body.message.startswith("shutting down: ")
        reply = raw.recv()
        assert (reply.seqid, reply.value()) == (1, 500.0)
        done.result(10)
        assert raw.closed_by_server()


def test_shutdown_gives_up_on_calls_after_the_grace_period(
    start_worker: StartWorker, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    caplog.set_level(logging.INFO, logger="offloop")
    server = start_worker(grace=0.2)
    with RawClient(server.port) as raw, Gate(tmp_path) as gate:
        raw.send("ping", 1, gate.message)
        wait_until(lambda: server.stats().busy == 1, timeout=5)
        # Done while the call is still held (it cannot end before its gate opens): the
        # shutdown gave up on it after the grace period instead of waiting for it.
        server.begin_shutdown().result(10)
        assert raw.closed_by_server()  # no reply: the call was abandoned
    assert "1 calls still running after the grace period" in caplog.text


def test_shutdown_with_no_grace_does_not_wait(
    start_worker: StartWorker, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    caplog.set_level(logging.INFO, logger="offloop")
    server = start_worker(grace=0.0)
    with RawClient(server.port) as raw, Gate(tmp_path) as gate:
        raw.send("ping", 1, gate.message)
        wait_until(lambda: server.stats().busy == 1, timeout=5)
        # Done while the call is still held: it did not wait for it.
        server.begin_shutdown().result(10)
        assert raw.closed_by_server()  # no reply: the call was abandoned
    assert "1 calls still running after the grace period" in caplog.text


def test_a_oneway_call_of_an_unknown_method_gets_no_reply(worker: ServerThread) -> None:
    # Item 27: a oneway caller reads no reply; one sent would be read as the next call's.
    from offloop.codec.message import ONEWAY

    with RawClient(worker.port) as raw:
        info = SERVICE.methods["ping"]
        oneway = raw.codec._encode("no_such_method", ONEWAY, 5, info.args_cls(msg="x"))
        raw.sock.sendall(encode_frame(oneway))
        raw.send("ping", 6, "after")
        reply = raw.recv()
        assert reply.header.seqid == 6
        assert reply.body.success == "after"
