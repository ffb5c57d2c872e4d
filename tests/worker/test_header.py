"""The worker speaks THeader and framed on one port, and honours what header frames carry.

Real workers on 127.0.0.1 over both pools, called over bare sockets in header frames (the
codec of :mod:`offloop.codec.header`), with the handler ``context_handler:Handler``, which
shows a call's context and can mark that it ran.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from gates import Gate
from harness import SERVICE, RawClient, ServerThread, calls_answered, metric
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from thriftpy2.thrift import TApplicationException
from waiting import wait_until

from offloop.codec.call import PROBE_METHOD, CallCodec
from offloop.codec.faults import FaultKind, fault_kind
from offloop.codec.framing import FrameDecoder
from offloop.codec.header import (
    HeaderFrame,
    HeaderProtocol,
    decode_header_frame,
    encode_header_frame,
    is_header_frame,
)
from offloop.codec.message import EXCEPTION, MessageCodec, ProtocolName
from offloop.context import DEADLINE_HEADER, PRINCIPAL_HEADER, REQUEST_ID_HEADER

HANDLER = "context_handler:Handler"
PROTOCOLS: dict[str, HeaderProtocol] = {
    "binary": HeaderProtocol.BINARY,
    "compact": HeaderProtocol.COMPACT,
}


class HeaderClient:
    """THeader over a bare socket: calls with info headers, replies with theirs."""

    def __init__(self, port: int, protocol: ProtocolName = "binary", timeout: float = 10) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.protocol = protocol
        self.codec = MessageCodec(protocol)
        self._decoder = FrameDecoder()
        self._frames: list[bytes] = []

    def __enter__(self) -> HeaderClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def send(
        self, method: str, seqid: int, *args: Any, headers: dict[str, str] | None = None
    ) -> None:
        if method == PROBE_METHOD:
            probe = CallCodec(self.protocol, 1 << 20, "worker", header=True).encode_probe()
            self.sock.sendall(probe)
            return
        info = SERVICE.methods[method]
        struct = info.args_cls(**dict(zip(info.arg_names, args, strict=True)))
        payload = self.codec.encode_call(info, seqid, struct)
        frame = HeaderFrame(
            protocol=PROTOCOLS[self.protocol], seqid=seqid, headers=headers or {}, payload=payload
        )
        self.sock.sendall(encode_header_frame(frame))

    def recv_frame(self) -> HeaderFrame | None:
        while not self._frames:
            data = self.sock.recv(65536)
            if not data:
                return None
            self._decoder.feed(data)
            self._frames.extend(self._decoder.frames())
        body = self._frames.pop(0)
        assert is_header_frame(body), "a header call must be answered with a header frame"
        return decode_header_frame(body)

    def call(
        self, method: str, *args: Any, headers: dict[str, str] | None = None, seqid: int = 1
    ) -> tuple[Any, HeaderFrame]:
        """One call: (its value or the exception it carries, the reply's frame)."""
        self.send(method, seqid, *args, headers=headers)
        frame = self.recv_frame()
        assert frame is not None, "the worker closed the connection instead of replying"
        assert frame.protocol is PROTOCOLS[self.protocol]
        assert frame.seqid == seqid
        header = self.codec.read_header(frame.payload)
        if header.type == EXCEPTION:
            return _app_exception(self.codec, frame.payload), frame
        _, body = self.codec.decode_reply(frame.payload, SERVICE.methods[method])
        for _, spec in sorted(body.thrift_spec.items()):
            if spec[1] != "success" and getattr(body, spec[1], None) is not None:
                return getattr(body, spec[1]), frame
        return body.success, frame


def _app_exception(codec: MessageCodec, payload: bytes) -> TApplicationException:
    reader = codec.reader(payload)
    reader.read_message_begin()
    exc = TApplicationException()
    reader.read_struct(exc)
    return exc


@pytest.fixture
def ctx_worker(start_worker: Callable[..., ServerThread]) -> ServerThread:
    return start_worker(handler=HANDLER, trust_principal=True)


@pytest.mark.parametrize("protocol", ["binary", "compact"])
def test_header_and_framed_calls_on_one_port_are_answered_in_kind(
    ctx_worker: ServerThread, protocol: ProtocolName
) -> None:
    # The worker's --protocol is binary; a header frame names its own, and is served.
    with HeaderClient(ctx_worker.port, protocol) as client:
        value, _ = client.call("ping", "hello", seqid=7)
        assert value == "hello"
        value, _ = client.call("parse", "zz", seqid=8)
        assert type(value).__name__ == "ParseError"
    with RawClient(ctx_worker.port) as raw:  # framed, as before
        assert raw.call("ping", "framed") == "framed"


def test_info_headers_reach_the_handler_and_the_request_id_comes_back(
    ctx_worker: ServerThread,
) -> None:
    headers = {
        REQUEST_ID_HEADER: "req-42.a_b:c",
        PRINCIPAL_HEADER: "key:alice",
        DEADLINE_HEADER: "5000",
        "x-other": "kept",
    }
    with HeaderClient(ctx_worker.port) as client:
        value, frame = client.call("ping", "context", headers=headers)
    seen = json.loads(value)
    assert seen["request_id"] == "req-42.a_b:c"
    assert seen["principal"] == "key:alice"
    assert seen["deadline"] is True
    assert 0 < seen["time_left"] <= 5.0
    assert frame.headers == {REQUEST_ID_HEADER: "req-42.a_b:c"}


def test_an_untrusting_worker_ignores_the_principal(
    start_worker: Callable[..., ServerThread],
) -> None:
    # Item 2: without mutual TLS or trust_principal anyone could claim to be anyone.
    worker = start_worker(handler=HANDLER)
    headers = {REQUEST_ID_HEADER: "req-1", PRINCIPAL_HEADER: "key:admin"}
    with HeaderClient(worker.port) as client:
        for seqid in (1, 2):
            value, _ = client.call("ping", "context", headers=headers, seqid=seqid)
            seen = json.loads(value)
            assert seen["principal"] is None
            assert seen["request_id"] == "req-1"  # the rest of the context is kept


def test_a_call_without_headers_has_no_context(ctx_worker: ServerThread) -> None:
    with HeaderClient(ctx_worker.port) as client:
        value, frame = client.call("ping", "context")
    assert json.loads(value) == {
        "request_id": None,
        "principal": None,
        "deadline": False,
        "time_left": None,
    }
    assert frame.headers == {}
    with RawClient(ctx_worker.port) as raw:
        assert json.loads(raw.call("ping", "context"))["deadline"] is False


def test_an_invalid_request_id_is_ignored(ctx_worker: ServerThread) -> None:
    with HeaderClient(ctx_worker.port) as client:
        value, frame = client.call(
            "ping", "context", headers={REQUEST_ID_HEADER: "no spaces\nor newlines"}
        )
    assert json.loads(value)["request_id"] is None
    assert REQUEST_ID_HEADER not in frame.headers


def test_the_probe_is_answered_in_a_header_frame_and_not_counted(
    ctx_worker: ServerThread,
) -> None:
    with HeaderClient(ctx_worker.port) as client:
        client.send(PROBE_METHOD, 0)
        frame = client.recv_frame()
        assert frame is not None
        exc = _app_exception(client.codec, frame.payload)
        assert fault_kind(exc) is FaultKind.UNKNOWN_METHOD
        assert client.call("ping", "after the probe")[0] == "after the probe"
    assert metric(ctx_worker.metrics(), "offloop_worker_calls_total", method="<unknown>") in (
        None,
        0.0,
    )


def test_a_framed_message_on_a_header_connection_closes_it(ctx_worker: ServerThread) -> None:
    with HeaderClient(ctx_worker.port) as client:
        assert client.call("ping", "one")[0] == "one"
        raw = RawClient.__new__(RawClient)
        raw.codec = MessageCodec("binary")
        client.sock.sendall(raw.call_bytes("ping", 2, "framed now"))
        assert client.recv_frame() is None
    errors = metric(
        ctx_worker.metrics(), "offloop_worker_protocol_errors_total", reason="mixed_framing"
    )
    assert errors == 1.0


def test_a_call_whose_deadline_passed_on_arrival_never_runs(
    ctx_worker: ServerThread, tmp_path: Path
) -> None:
    marks = tmp_path / "marks"
    with HeaderClient(ctx_worker.port) as client:
        value, _ = client.call("ping", f"mark:{marks}", headers={DEADLINE_HEADER: "0"})
        assert isinstance(value, TApplicationException)
        assert fault_kind(value) is FaultKind.DEADLINE_EXCEEDED
        assert client.call("ping", f"mark:{marks}", headers={DEADLINE_HEADER: "60000"})[0] == (
            "marked"
        )
    assert marks.read_text() == "ran\n"  # only the second call ran
    assert calls_answered(ctx_worker.server, "ping", "expired") == 1


def test_a_call_whose_deadline_passes_while_queued_never_runs(
    start_worker: Callable[..., ServerThread], tmp_path: Path
) -> None:
    worker = start_worker(handler=HANDLER, workers=1, call_timeout=30.0)
    marks = tmp_path / "marks"
    with Gate(tmp_path) as gate, HeaderClient(worker.port) as busy:
        busy.send("ping", 1, gate.message)  # holds the only worker
        wait_until(lambda: worker.stats().busy == 1, timeout=30)
        with HeaderClient(worker.port) as client:
            # Taken before the send: the worker's 200 ms start when it reads the call, after
            # this, so the bound below holds at any speed (a lower bound, by causality).
            sent = time.monotonic()
            client.send("ping", 2, f"mark:{marks}", headers={DEADLINE_HEADER: "200"})
            frame = client.recv_frame()  # answered at its deadline, the worker still busy
            assert frame is not None
            assert time.monotonic() - sent >= 0.2
            exc = _app_exception(client.codec, frame.payload)
            assert fault_kind(exc) is FaultKind.DEADLINE_EXCEEDED
            assert worker.stats().busy == 1
        gate.open()
        assert busy.recv_frame() is not None
    assert not marks.exists()  # the queued call never ran
    timed_out = calls_answered(worker.server, "ping", "timeout")
    expired = calls_answered(worker.server, "ping", "expired")
    assert timed_out + expired == 1


def test_a_handler_sees_its_deadline_and_stops(ctx_worker: ServerThread) -> None:
    # Thread pool: check_deadline() raises and the thread is free again (the leftovers
    # fixture fails the test if it were not); process pool: the child is killed at the
    # deadline, as for call_timeout.
    with HeaderClient(ctx_worker.port) as client:
        value, _ = client.call("ping", "until-deadline", headers={DEADLINE_HEADER: "300"})
        assert isinstance(value, TApplicationException)
        assert fault_kind(value) is FaultKind.DEADLINE_EXCEEDED
        assert client.call("ping", "still serving")[0] == "still serving"
    wait_until(lambda: ctx_worker.stats().busy == 0, timeout=30)


def test_a_refused_header_frame_closes_the_connection(ctx_worker: ServerThread) -> None:
    with socket.create_connection(("127.0.0.1", ctx_worker.port), timeout=10) as sock:
        body = b"\x0f\xff\x00\x00\x00\x00\x00\x01\x00\x00\x00\x01" + b"\x63\x00\x00\x00"
        sock.sendall(len(body).to_bytes(4, "big") + body)  # protocol id 99
        assert sock.recv(100) == b""
    errors = metric(ctx_worker.metrics(), "offloop_worker_protocol_errors_total", reason="header")
    assert errors == 1.0


# -- fuzzing the detection -----------------------------------------------------------------


@pytest.mark.parametrize("pool", ["thread"], indirect=True)
@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    first=st.sampled_from(["header", "framed"]),
    junk=st.binary(min_size=1, max_size=64),
    where=st.sampled_from(["head", "tail", "whole"]),
)
def test_detection_survives_any_frame_body(
    ctx_worker: ServerThread, first: str, junk: bytes, where: str
) -> None:
    """Whatever a connection's frames hold (a header frame mangled, or any bytes), the worker
    answers or closes that connection, and the next connection is served in either framing."""
    codec = MessageCodec("binary")
    info = SERVICE.methods["ping"]
    call = codec.encode_call(info, 1, info.args_cls(msg="x"))
    good = encode_header_frame(HeaderFrame(seqid=1, headers={"k": "v"}, payload=call))[4:]
    if where == "head":
        body = junk + good[len(junk) :]
    elif where == "tail":
        body = good[: max(0, len(good) - len(junk))] + junk
    else:
        body = junk
    with socket.create_connection(("127.0.0.1", ctx_worker.port), timeout=10) as sock:
        if first == "framed":
            sock.sendall(len(call).to_bytes(4, "big") + call)
        sock.sendall(len(body).to_bytes(4, "big") + body)
        sock.shutdown(socket.SHUT_WR)
        while sock.recv(65536):  # replies, then the worker closes: never a hang
            pass
    with HeaderClient(ctx_worker.port) as client:
        assert client.call("ping", "ok")[0] == "ok"
    with RawClient(ctx_worker.port) as raw:
        assert raw.call("ping", "ok") == "ok"


def test_a_process_pool_call_that_outlives_its_deadline_is_killed(
    start_worker: Callable[..., ServerThread], pool: str, tmp_path: Path
) -> None:
    if pool != "process":
        pytest.skip("a thread cannot be killed: its call runs on (see the test above)")
    worker = start_worker(handler=HANDLER, call_timeout=30.0)
    restarts = worker.stats().restarts
    with Gate(tmp_path) as gate, HeaderClient(worker.port) as client:
        value, _ = client.call("ping", gate.message, headers={DEADLINE_HEADER: "300"})
        assert isinstance(value, TApplicationException)
        assert fault_kind(value) is FaultKind.DEADLINE_EXCEEDED
        # Killed at the call's deadline, not at call_timeout (30 s), and replaced.
        wait_until(lambda: worker.stats().restarts == restarts + 1, timeout=30)
        assert not gate.path.exists()
    wait_until(lambda: worker.stats().alive == 2, timeout=60)
