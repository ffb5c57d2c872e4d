"""Both clients share one call layer: fed the same hostile replies, they reach the same outcome.

A one-shot server on 127.0.0.1 reads a call, answers with bytes the test chose (a valid
reply, a mutated one, a reply with another seqid or name, garbage, a truncated frame), then
closes. The async client (:class:`ThriftConnection`) and the blocking client
(:class:`BlockingClient`) each make the same call against it; the value, or the class of the
error, must be the same.
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import threading
import time
from typing import Any

import faulty
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from thriftpy2.thrift import TApplicationException

from offloop.client.blocking import BlockingClient
from offloop.client.config import ClientConfig
from offloop.client.connection import ThriftConnection
from offloop.codec.faults import FaultKind
from offloop.codec.message import MessageCodec
from offloop.idl import load_idl, service_info

SERVICE = service_info(load_idl(faulty.IDL), "TextLab")
PARSE = SERVICE.methods["parse"]
T = load_idl(faulty.IDL)
#: Examples per run; OFFLOOP_FUZZ_EXAMPLES raises it for a long run.
EXAMPLES = int(os.environ.get("OFFLOOP_FUZZ_EXAMPLES", "40"))
CONFIG = ClientConfig(max_frame_size=4096, connect_timeout=2.0, transport="framed")


def _one_shot_server(reply: bytes) -> tuple[socket.socket, threading.Thread]:
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(5)
            head = conn.recv(4, socket.MSG_WAITALL)
            if len(head) == 4:
                conn.recv(struct.unpack("!I", head)[0], socket.MSG_WAITALL)
            conn.sendall(reply)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return listener, thread


def _outcome(run: Any) -> tuple[str, Any]:
    try:
        value = run()
    except Exception as exc:
        return ("error", type(exc).__name__)
    return ("value", value)


def _async_call(port: int) -> Any:
    async def main() -> Any:
        conn = await ThriftConnection.connect("127.0.0.1", port, CONFIG)
        try:
            return await conn.call(PARSE, PARSE.args_cls(sentence="x"), timeout=5)
        finally:
            await conn.close()

    return asyncio.run(main())


def _blocking_call(port: int) -> Any:
    client = BlockingClient("127.0.0.1", port, CONFIG)
    try:
        return client.call(PARSE, PARSE.args_cls(sentence="x"), time.monotonic() + 5, 5)
    finally:
        client.close()


def _both(reply: bytes) -> tuple[tuple[str, Any], tuple[str, Any]]:
    outcomes = []
    for call in (_async_call, _blocking_call):
        listener, thread = _one_shot_server(reply)
        try:
            port = listener.getsockname()[1]
            outcomes.append(_outcome(lambda: call(port)))  # noqa: B023
        finally:
            thread.join(10)
            listener.close()
    return outcomes[0], outcomes[1]


def _frame(body: bytes) -> bytes:
    return struct.pack("!I", len(body)) + body


def _replies(protocol: str) -> list[bytes]:
    codec = MessageCodec(protocol)  # type: ignore[arg-type]
    tree = T.ParseResult(bracketed="(S x)", nodes=[T.TreeNode(label="S")], ambiguity=1)
    ok = PARSE.result_cls(success=tree)
    declared = PARSE.result_cls(error=T.ParseError(message="no", unknown_words=["x"]))
    return [
        codec.encode_reply("parse", 1, ok),
        codec.encode_reply("parse", 1, declared),
        codec.fault("parse", 1, FaultKind.OVERLOADED, "full"),
        codec.fault("parse", 1, FaultKind.CRASHED, "died"),
        codec.application_error("parse", 1, TApplicationException.UNKNOWN, "foreign"),
        codec.encode_reply("ping", 1, SERVICE.methods["ping"].result_cls(success="x")),
        codec.encode_reply("parse", 2, ok),  # another call's seqid
        codec.encode_reply("parse", 1, PARSE.result_cls()),  # no result at all
    ]


BINARY, COMPACT = _replies("binary"), _replies("compact")


def test_known_replies_give_the_same_outcome_in_both_clients() -> None:
    for body in BINARY:
        a, b = _both(_frame(body))
        assert a == b, body
    assert _both(_frame(BINARY[0]))[0][0] == "value"  # and a good reply is a value


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    base=st.sampled_from(BINARY),
    flips=st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), max_size=4),
    cut=st.one_of(st.none(), st.integers(0, 200)),
    frame_it=st.booleans(),
    tail=st.binary(max_size=8),
)
def test_mutated_replies_give_the_same_outcome_in_both_clients(
    base: bytes,
    flips: list[tuple[int, int]],
    cut: int | None,
    frame_it: bool,
    tail: bytes,
) -> None:
    body = bytearray(base)
    for at, value in flips:
        if body:
            body[at % len(body)] = value
    if cut is not None:
        body = body[: cut % (len(body) + 1)]
    reply = (_frame(bytes(body)) if frame_it else bytes(body)) + tail
    a, b = _both(reply)
    assert a == b
