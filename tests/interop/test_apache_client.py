"""Apache Thrift's Python library calls our worker over framed transport, with code generated
by Apache's compiler: results, declared exceptions and TApplicationExceptions all arrive as
Apache's own classes, over both pools."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from gates import Gate
from harness import ServerThread, running_worker, worker_config
from textlab import TextLab
from textlab.ttypes import InvalidArgument, ParseError
from thrift.protocol import TBinaryProtocol, TCompactProtocol
from thrift.Thrift import TApplicationException, TMessageType
from thrift.transport import TSocket, TTransport
from waiting import wait_until

Protocol = Callable[[Any], Any]

BINARY_PROTOCOLS: dict[str, Protocol] = {
    "binary": TBinaryProtocol.TBinaryProtocol,
    "binary-accelerated": TBinaryProtocol.TBinaryProtocolAccelerated,
}


class ApacheClient:
    """``TSocket`` + ``TFramedTransport`` + a protocol + the generated ``TextLab.Client``."""

    def __init__(self, port: int, protocol: Protocol = TBinaryProtocol.TBinaryProtocol) -> None:
        sock = TSocket.TSocket("127.0.0.1", port)
        sock.setTimeout(10_000)
        self.transport = TTransport.TFramedTransport(sock)
        self.protocol = protocol(self.transport)
        self.client = TextLab.Client(self.protocol)
        self.transport.open()

    def close(self) -> None:
        self.transport.close()


@pytest.fixture(params=list(BINARY_PROTOCOLS))
def apache(request: pytest.FixtureRequest, worker: ServerThread) -> Iterator[ApacheClient]:
    client = ApacheClient(worker.port, BINARY_PROTOCOLS[request.param])
    try:
        yield client
    finally:
        client.close()


def test_results(apache: ApacheClient) -> None:
    c = apache.client
    assert c.ping("héllo from Apache") == "héllo from Apache"
    assert c.burn(5) > 0
    assert c.sleep(20) == 20.0
    assert c.crunch(4) == 4.0
    assert c.embed(["ab", "", "cde"]) == [[2.0], [0.0], [3.0]]
    for i in range(10):  # one connection, one call at a time, seqids counting up
        assert c.ping(str(i)) == str(i)


def test_declared_exception_is_the_generated_class(apache: ApacheClient) -> None:
    with pytest.raises(ParseError) as info:
        apache.client.parse("colorless green ideas")
    assert info.value.message == "cannot parse 'colorless green ideas'"
    assert info.value.unknown_words == ["x"]
    assert not isinstance(info.value, InvalidArgument)
    assert apache.client.ping("still open") == "still open"


def test_internal_error_is_apaches_application_exception(apache: ApacheClient) -> None:
    with pytest.raises(TApplicationException) as info:
        apache.client.ping("raise")
    assert info.value.type == TApplicationException.INTERNAL_ERROR
    assert info.value.message == "internal error: ValueError: boom"
    with pytest.raises(TApplicationException) as info:
        apache.client.ping("apperror")
    assert info.value.type == TApplicationException.UNKNOWN
    assert info.value.message == "app says no"
    assert apache.client.ping("still open") == "still open"


def test_unknown_method_is_apaches_application_exception(apache: ApacheClient) -> None:
    proto = apache.protocol
    proto.writeMessageBegin("nosuch", TMessageType.CALL, 41)
    TextLab.ping_args(msg="x").write(proto)
    proto.writeMessageEnd()
    proto.trans.flush()
    name, mtype, seqid = proto.readMessageBegin()
    error = TApplicationException()
    error.read(proto)
    proto.readMessageEnd()
    assert (name, mtype, seqid) == ("nosuch", TMessageType.EXCEPTION, 41)
    assert error.type == TApplicationException.UNKNOWN_METHOD
    assert error.message == "unknown method: 'nosuch' is not a method of service TextLab"
    assert apache.client.ping("still open") == "still open"


@pytest.mark.parametrize("pool", ["thread", "process"])
def test_overloaded_is_apaches_application_exception(pool: str, tmp_path: Path) -> None:
    with running_worker(worker_config(pool, workers=1, max_queued=0)) as server:
        busy = ApacheClient(server.port)
        other = ApacheClient(server.port)
        results: list[str] = []
        gate = Gate(tmp_path)
        # The one worker is held by this call until the gate opens.
        caller = threading.Thread(target=lambda: results.append(busy.client.ping(gate.message)))
        caller.start()
        try:
            wait_until(lambda: server.stats().busy == 1, timeout=10)
            with pytest.raises(TApplicationException) as info:
                other.client.ping("refused")
            assert info.value.type == TApplicationException.INTERNAL_ERROR
            assert info.value.message.startswith("overloaded")
        finally:
            gate.open()
            caller.join(10)
            busy.close()
            other.close()
        assert results == ["opened"]


@pytest.mark.parametrize("pool", ["thread", "process"])
def test_compact_protocol(pool: str) -> None:
    with running_worker(worker_config(pool, protocol="compact")) as server:
        client = ApacheClient(server.port, TCompactProtocol.TCompactProtocol)
        try:
            assert client.client.ping("compact") == "compact"
            assert client.client.embed(["abc"]) == [[3.0]]
            with pytest.raises(ParseError):
                client.client.parse("x")
            with pytest.raises(TApplicationException) as info:
                client.client.ping("raise")
            assert info.value.message == "internal error: ValueError: boom"
        finally:
            client.close()
