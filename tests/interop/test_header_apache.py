"""Interop, without sockets: Apache Thrift's ``THeaderTransport``/``THeaderProtocol`` (the
``thrift`` package) and offloop's THeader codec read each other's frames.

Apache writes into and reads from memory transports; the messages are the demo IDL's, through
the code Apache's compiler generated (``gen-py``, see README.md). Apache's Python library keeps
info headers as ``bytes``; ours are ``str`` (UTF-8, other bytes surrogate-escaped), so every
comparison goes through that mapping.
"""

from __future__ import annotations

from io import BytesIO
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from textlab import TextLab
from thrift.protocol.TBinaryProtocol import TBinaryProtocol
from thrift.protocol.TCompactProtocol import TCompactProtocol
from thrift.protocol.THeaderProtocol import THeaderProtocol
from thrift.Thrift import TMessageType
from thrift.transport.THeaderTransport import (
    THeaderClientType,
    THeaderSubprotocolID,
    THeaderTransformID,
)
from thrift.transport.TTransport import TMemoryBuffer, TTransportBase

from offloop.codec.guard import check_message
from offloop.codec.header import (
    HeaderFrame,
    HeaderProtocol,
    HeaderTransform,
    decode_header_frame,
    encode_header_frame,
)

PROTOCOLS = {
    "binary": (HeaderProtocol.BINARY, THeaderSubprotocolID.BINARY, TBinaryProtocol),
    "compact": (HeaderProtocol.COMPACT, THeaderSubprotocolID.COMPACT, TCompactProtocol),
}
HEADER_SETS: dict[str, dict[bytes, bytes]] = {
    "none": {},
    "one": {b"trace-id": b"4bf92f3577b34da6a3ce929d0e0e4736"},
    "several": {b"a": b"", b"": b"empty key", b"user": "zoë ✓".encode(), b"n": b"1" * 300},
    "not utf-8": {b"\xff\xfe": b"\x00\x80 raw \xc3"},
}
ONLY_HEADERS = (THeaderClientType.HEADERS,)


def text(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


def as_text(headers: dict[bytes, bytes]) -> dict[str, str]:
    return {text(k): text(v) for k, v in headers.items()}


def apache_message(protocol: str, msg: str, seqid: int, mtype: int = TMessageType.CALL) -> bytes:
    """A bare ``ping`` call (or reply) written by Apache's plain protocol."""
    buf = TMemoryBuffer()
    proto = PROTOCOLS[protocol][2](buf)
    proto.writeMessageBegin("ping", mtype, seqid)
    if mtype == TMessageType.CALL:
        TextLab.ping_args(msg=msg).write(proto)
    else:
        TextLab.ping_result(success=msg).write(proto)
    proto.writeMessageEnd()
    return bytes(buf.getvalue())


def read_ping(proto: Any) -> tuple[str, int, int, str]:
    """Name, type, seqid and argument (or result) of a ``ping`` message."""
    name, mtype, seqid = proto.readMessageBegin()
    if mtype == TMessageType.CALL:
        args = TextLab.ping_args()
        args.read(proto)
        value = args.msg
    else:
        result = TextLab.ping_result()
        result.read(proto)
        value = result.success
    proto.readMessageEnd()
    return name, mtype, seqid, value


def apache_writes(
    protocol: str, headers: dict[bytes, bytes], zlib: bool, *, flags: int, seqid: int, msg: str
) -> bytes:
    """A ``ping`` call in a header frame written by Apache's ``THeaderProtocol``."""
    buf = TMemoryBuffer()
    proto = THeaderProtocol(buf, ONLY_HEADERS, PROTOCOLS[protocol][1])
    for key, value in headers.items():
        proto.set_header(key, value)
    if zlib:
        proto.add_transform(THeaderTransformID.ZLIB)
    proto.trans.flags = flags
    proto.writeMessageBegin("ping", TMessageType.CALL, seqid)
    TextLab.ping_args(msg=msg).write(proto)
    proto.writeMessageEnd()
    proto.trans.flush()
    return bytes(buf.getvalue())


def apache_reads(data: bytes) -> tuple[Any, tuple[str, int, int, str]]:
    """Apache's ``THeaderProtocol`` reads one ``ping`` message from ``data``."""
    proto = THeaderProtocol(TMemoryBuffer(data), ONLY_HEADERS)
    message = read_ping(proto)
    return proto, message


class Duplex(TTransportBase):  # type: ignore[misc]
    """A connection in memory: reads ``incoming``, collects what is written in ``outgoing``."""

    def __init__(self, incoming: bytes = b"") -> None:
        self.incoming = BytesIO(incoming)
        self.outgoing = BytesIO()

    def isOpen(self) -> bool:
        return True

    def read(self, sz: int) -> bytes:
        return self.incoming.read(sz)

    def write(self, buf: bytes) -> None:
        self.outgoing.write(buf)

    def flush(self) -> None:
        pass


cases = pytest.mark.parametrize(
    ("protocol", "headers", "zlib"),
    [(p, h, z) for p in PROTOCOLS for h in HEADER_SETS for z in (False, True)],
)


@cases
def test_apache_frames_decode(protocol: str, headers: str, zlib: bool) -> None:
    sent = HEADER_SETS[headers]
    data = apache_writes(protocol, sent, zlib, flags=0x0102, seqid=-77, msg="héllo")
    assert int.from_bytes(data[:4], "big") == len(data) - 4
    frame = decode_header_frame(data[4:])
    assert frame.protocol is PROTOCOLS[protocol][0]
    assert frame.flags == 0x0102
    assert frame.seqid == -77
    assert frame.transforms == ((HeaderTransform.ZLIB,) if zlib else ())
    assert frame.headers == as_text(sent)
    # The payload is the very message Apache's plain protocol writes, and reads as it.
    assert frame.payload == apache_message(protocol, "héllo", -77)
    proto = PROTOCOLS[protocol][2](TMemoryBuffer(frame.payload))
    assert read_ping(proto) == ("ping", TMessageType.CALL, -77, "héllo")
    check_message(frame.payload, frame.protocol.codec_name)  # offloop's decode guard passes it


@cases
def test_our_frames_are_byte_for_byte_apaches(protocol: str, headers: str, zlib: bool) -> None:
    sent = HEADER_SETS[headers]
    frame = HeaderFrame(
        protocol=PROTOCOLS[protocol][0],
        flags=0x0102,
        seqid=-77,
        transforms=(HeaderTransform.ZLIB,) if zlib else (),
        headers=as_text(sent),
        payload=apache_message(protocol, "héllo", -77),
    )
    expected = apache_writes(protocol, sent, zlib, flags=0x0102, seqid=-77, msg="héllo")
    assert encode_header_frame(frame) == expected


@cases
def test_apache_reads_our_frames(protocol: str, headers: str, zlib: bool) -> None:
    sent = as_text(HEADER_SETS[headers])
    frame = HeaderFrame(
        protocol=PROTOCOLS[protocol][0],
        flags=0xFFFF,
        seqid=2**31 - 1,
        transforms=(HeaderTransform.ZLIB,) if zlib else (),
        headers=sent,
        payload=apache_message(protocol, "from offloop ✓", 2**31 - 1),
    )
    proto, message = apache_reads(encode_header_frame(frame))
    assert message == ("ping", TMessageType.CALL, 2**31 - 1, "from offloop ✓")
    assert proto.get_headers() == HEADER_SETS[headers]
    assert proto.trans.flags == 0xFFFF
    assert proto.trans.sequence_id == 2**31 - 1
    assert proto.trans.protocol_id == PROTOCOLS[protocol][1]


header_bytes = st.dictionaries(st.binary(max_size=16), st.binary(max_size=32), max_size=6)


@settings(max_examples=100, deadline=None)
@given(
    headers=header_bytes,
    protocol=st.sampled_from(list(PROTOCOLS)),
    zlib=st.booleans(),
    seqid=st.integers(-(2**31), 2**31 - 1),
    msg=st.text(max_size=20),
)
def test_any_apache_headers_survive_us_unaltered(
    headers: dict[bytes, bytes], protocol: str, zlib: bool, seqid: int, msg: str
) -> None:
    # Apache -> us -> Apache: the bytes Apache's reader sees are the bytes Apache's writer set.
    data = apache_writes(protocol, headers, zlib, flags=7, seqid=seqid, msg=msg)
    frame = decode_header_frame(data[4:])
    proto, message = apache_reads(encode_header_frame(frame))
    assert proto.get_headers() == headers
    assert message == ("ping", TMessageType.CALL, seqid, msg)


class Handler:
    def ping(self, msg: str) -> str:
        return msg.upper()


@pytest.mark.parametrize("protocol", list(PROTOCOLS))
def test_apache_server_answers_our_frame_in_kind(protocol: str) -> None:
    request = HeaderFrame(
        protocol=PROTOCOLS[protocol][0],
        flags=0x0001,
        seqid=41,
        transforms=(HeaderTransform.ZLIB,),
        headers={"trace": "t-1"},
        payload=apache_message(protocol, "abc", 41),
    )
    connection = Duplex(encode_header_frame(request))
    # A server's protocol object, as THeaderProtocolFactory makes it: one for both ways.
    server = THeaderProtocol(connection, ONLY_HEADERS)
    server.set_header(b"served-by", b"apache")
    TextLab.Processor(Handler()).process(server, server)
    assert server.get_headers() == {b"trace": b"t-1"}

    reply = decode_header_frame(connection.outgoing.getvalue()[4:])
    assert reply.protocol is request.protocol
    assert reply.seqid == request.seqid
    assert reply.flags == request.flags
    assert reply.headers == {"served-by": "apache"}  # the request's are not echoed
    assert reply.transforms == ()  # Apache's Python server compresses only if told to
    proto = PROTOCOLS[protocol][2](TMemoryBuffer(reply.payload))
    assert read_ping(proto) == ("ping", TMessageType.REPLY, 41, "ABC")


@pytest.mark.parametrize("protocol", list(PROTOCOLS))
@pytest.mark.parametrize("zlib", [False, True])
def test_apache_client_reads_our_reply(protocol: str, zlib: bool) -> None:
    connection = Duplex()
    client_proto = THeaderProtocol(connection, ONLY_HEADERS, PROTOCOLS[protocol][1])
    if zlib:
        client_proto.add_transform(THeaderTransformID.ZLIB)
    client_proto.set_header(b"trace", b"t-2")
    client = TextLab.Client(client_proto)
    client.send_ping("xyz")

    request = decode_header_frame(connection.outgoing.getvalue()[4:])
    assert request.headers == {"trace": "t-2"}
    _, _, seqid, msg = read_ping(PROTOCOLS[protocol][2](TMemoryBuffer(request.payload)))
    answer = apache_message(protocol, msg[::-1], seqid, TMessageType.REPLY)
    reply = request.reply(answer, {"served-by": "offloop"})
    assert reply.transforms == request.transforms
    connection.incoming = BytesIO(encode_header_frame(reply))

    assert client.recv_ping() == "zyx"
    assert client_proto.get_headers() == {b"served-by": b"offloop"}
