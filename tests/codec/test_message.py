"""MessageCodec, sans-I/O: whole Thrift messages to and from bytes, binary and compact."""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from thriftpy2.thrift import TApplicationException

from offloop.codec.faults import FaultKind
from offloop.codec.message import CALL, EXCEPTION, ONEWAY, REPLY, Header, MessageCodec
from offloop.errors import RemoteProtocolError
from offloop.idl import load_idl, service_info

IDL = Path(__file__).resolve().parents[2] / "src/offloop/demo/textlab.thrift"
textlab = load_idl(IDL)
METHODS = service_info(textlab, "TextLab").methods
PROTOCOLS = ("binary", "compact")


@pytest.fixture(params=PROTOCOLS)
def codec(request: pytest.FixtureRequest) -> MessageCodec:
    return MessageCodec(request.param)


def args(method: str, **values: Any) -> Any:
    return METHODS[method].args_cls(**values)


def result(method: str, **values: Any) -> Any:
    return METHODS[method].result_cls(**values)


def test_unknown_protocol_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown Thrift protocol"):
        MessageCodec("json")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("method", "values"),
    [
        ("ping", {"msg": "héllo wörld ✓"}),
        ("burn", {"millis": 2**31 - 1}),
        ("sleep", {"millis": -5}),
        ("embed", {"texts": ["a", "", "ccc" * 100]}),
        ("parse", {"sentence": ""}),
    ],
)
def test_call_round_trip(codec: MessageCodec, method: str, values: dict[str, Any]) -> None:
    data = codec.encode_call(METHODS[method], 77, args(method, **values))
    assert codec.read_header(data) == Header(method, CALL, 77)
    header, decoded = codec.decode_args(data, METHODS[method])
    assert header == Header(method, CALL, 77)
    assert decoded == args(method, **values)


def test_oneway_call_has_the_oneway_type(codec: MessageCodec) -> None:
    oneway = dataclasses.replace(METHODS["ping"], oneway=True)
    data = codec.encode_call(oneway, 3, args("ping", msg="x"))
    assert codec.read_header(data).type == ONEWAY


@pytest.mark.parametrize("seqid", [0, 1, 2**31 - 1, -(2**31)])
def test_seqid_round_trips(codec: MessageCodec, seqid: int) -> None:
    data = codec.encode_reply("ping", seqid, result("ping", success="x"))
    assert codec.read_header(data).seqid == seqid


def test_reply_round_trip(codec: MessageCodec) -> None:
    value = [[1.5, -2.0], [], [3.25]]
    data = codec.encode_reply("embed", 9, result("embed", success=value))
    header, body = codec.decode_reply(data, METHODS["embed"])
    assert header == Header("embed", REPLY, 9)
    assert body.success == value


def test_declared_exception_round_trip(codec: MessageCodec) -> None:
    error = textlab.ParseError(message="no parse", unknown_words=["zzz"])
    data = codec.encode_reply("parse", 4, result("parse", error=error))
    _, body = codec.decode_reply(data, METHODS["parse"])
    assert body.success is None
    assert isinstance(body.error, textlab.ParseError)
    assert (body.error.message, body.error.unknown_words) == ("no parse", ["zzz"])
    assert body.invalid is None


def test_fault_round_trip(codec: MessageCodec) -> None:
    data = codec.fault("burn", 12, FaultKind.INTERNAL, "ValueError: boom")
    header, body = codec.decode_reply(data, METHODS["burn"])
    assert header == Header("burn", EXCEPTION, 12)
    assert isinstance(body, TApplicationException)
    assert body.type == TApplicationException.INTERNAL_ERROR
    assert body.message == "internal error: ValueError: boom"


def test_decode_reply_refuses_a_call(codec: MessageCodec) -> None:
    data = codec.encode_call(METHODS["ping"], 1, args("ping", msg="x"))
    with pytest.raises(RemoteProtocolError, match="expected REPLY or EXCEPTION"):
        codec.decode_reply(data, METHODS["ping"])


@pytest.mark.parametrize("garbage", [b"", b"\x00", b"garbage bytes", b"\xff" * 64])
def test_garbage_is_a_remote_protocol_error(codec: MessageCodec, garbage: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        codec.read_header(garbage)
    with pytest.raises(RemoteProtocolError):
        codec.decode_args(garbage, METHODS["ping"])
    with pytest.raises(RemoteProtocolError):
        codec.decode_reply(garbage, METHODS["ping"])


def test_compact_run_on_varint_is_refused_at_once() -> None:
    # thriftpy2 decodes a varint of any length in quadratic time: 200 KB took 5 s.
    garbage = bytes([0x82, 0x21]) + b"\xff" * 1_000_000
    with pytest.raises(RemoteProtocolError, match="seqid varint is longer than 5 bytes"):
        MessageCodec("compact").read_header(garbage)
    name_length = bytes([0x82, 0x21, 0x01]) + b"\xff" * 1_000_000
    with pytest.raises(RemoteProtocolError, match="name length varint"):
        MessageCodec("compact").read_header(name_length)


def test_other_protocol_is_a_remote_protocol_error() -> None:
    binary, compact = MessageCodec("binary"), MessageCodec("compact")
    data = binary.encode_call(METHODS["ping"], 1, args("ping", msg="x"))
    with pytest.raises(RemoteProtocolError, match="not a compact Thrift message"):
        compact.read_header(data)
    data = compact.encode_call(METHODS["ping"], 1, args("ping", msg="x"))
    with pytest.raises(RemoteProtocolError, match="not a binary Thrift message"):
        binary.read_header(data)


def test_truncated_arguments_are_a_remote_protocol_error(codec: MessageCodec) -> None:
    data = codec.encode_call(METHODS["embed"], 1, args("embed", texts=["abc", "def"]))
    for cut in range(len(data)):
        with pytest.raises(RemoteProtocolError, match="malformed arguments for embed"):
            codec.decode_args(data[:cut], METHODS["embed"])


# -- properties ---------------------------------------------------------------------------

texts = st.lists(st.text(max_size=40), max_size=8)


@settings(max_examples=100, deadline=None)
@given(protocol=st.sampled_from(PROTOCOLS), seqid=st.integers(-(2**31), 2**31 - 1), value=texts)
def test_any_call_round_trips(protocol: str, seqid: int, value: list[str]) -> None:
    codec = MessageCodec(protocol)  # type: ignore[arg-type]
    data = codec.encode_call(METHODS["embed"], seqid, args("embed", texts=value))
    header, decoded = codec.decode_args(data, METHODS["embed"])
    assert header == Header("embed", CALL, seqid)
    assert decoded.texts == value


@settings(max_examples=300, deadline=None)
@given(protocol=st.sampled_from(PROTOCOLS), garbage=st.binary(max_size=200))
def test_random_bytes_raise_only_remote_protocol_errors(protocol: str, garbage: bytes) -> None:
    codec = MessageCodec(protocol)  # type: ignore[arg-type]
    for decode in (
        lambda: codec.read_header(garbage),
        lambda: codec.decode_args(garbage, METHODS["embed"]),
        lambda: codec.decode_reply(garbage, METHODS["embed"]),
    ):
        with contextlib.suppress(RemoteProtocolError):  # any other exception fails
            decode()
