"""Interop: an Apache Thrift ``TThreadPoolServer`` (the ``thrift`` package, framed binary) as
the gateway's backend, in both gateway modes and behind both HTTP servers.

The processor is Apache's generated code for the demo IDL (``tests/interop/gen-py``, from
``thrift --gen py``, on the import path through pytest's ``pythonpath``), and a small
hand-written ``TProcessor`` that speaks the same methods through Apache's ``TBinaryProtocol``.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from gateway_stack import GatewayFactory, Stack
from textlab import TextLab, ttypes
from thrift.protocol import TBinaryProtocol
from thrift.server import TServer
from thrift.Thrift import TApplicationException, TMessageType, TProcessor, TType
from thrift.transport import TSocket, TTransport
from waiting import wait_until

#: Threads of the Apache server: one per connection it serves at once.
SERVER_THREADS = 8


class Handler:
    """The TextLab methods the tests call, for Apache's generated ``Processor``."""

    def __init__(self, ttypes: Any) -> None:
        self._ttypes = ttypes

    def ping(self, msg: str) -> str:
        if msg == "raise":
            raise ValueError("boom")  # Apache answers INTERNAL_ERROR
        return msg

    def parse(self, sentence: str) -> Any:
        raise self._ttypes.ParseError(message=f"cannot parse {sentence!r}", unknown_words=["zz"])

    def sleep(self, millis: int) -> float:
        time.sleep(millis / 1000)
        return float(millis)


class HandWrittenProcessor(TProcessor):  # type: ignore[misc]
    """``ping``, ``parse`` and ``sleep`` of TextLab with Apache's protocol objects, by hand."""

    def __init__(self) -> None:
        self._on_message_begin: Callable[[str, int, int], None] | None = None

    def on_message_begin(self, func: Callable[[str, int, int], None]) -> None:
        """As the generated ``Processor``: ``func(name, type, seqid)`` for each call read."""
        self._on_message_begin = func

    def process(self, iprot: Any, oprot: Any) -> bool:
        name, mtype, seqid = iprot.readMessageBegin()
        if self._on_message_begin is not None:
            self._on_message_begin(name, mtype, seqid)
        args: dict[int, Any] = {}
        iprot.readStructBegin()
        while True:
            _, ftype, fid = iprot.readFieldBegin()
            if ftype == TType.STOP:
                break
            if ftype == TType.STRING:
                args[fid] = iprot.readString()
            elif ftype == TType.I32:
                args[fid] = iprot.readI32()
            else:
                iprot.skip(ftype)
            iprot.readFieldEnd()
        iprot.readStructEnd()
        iprot.readMessageEnd()

        def reply(write_fields: Any) -> None:
            oprot.writeMessageBegin(name, TMessageType.REPLY, seqid)
            oprot.writeStructBegin(f"{name}_result")
            write_fields()
            oprot.writeFieldStop()
            oprot.writeStructEnd()
            oprot.writeMessageEnd()
            oprot.trans.flush()

        def fail(kind: int, message: str) -> None:
            oprot.writeMessageBegin(name, TMessageType.EXCEPTION, seqid)
            TApplicationException(kind, message).write(oprot)
            oprot.writeMessageEnd()
            oprot.trans.flush()

        if name == "ping" and args.get(1) == "raise":
            fail(TApplicationException.INTERNAL_ERROR, "Internal error")
        elif name == "ping":

            def success() -> None:
                oprot.writeFieldBegin("success", TType.STRING, 0)
                oprot.writeString(args.get(1, ""))
                oprot.writeFieldEnd()

            reply(success)
        elif name == "parse":

            def error() -> None:
                oprot.writeFieldBegin("error", TType.STRUCT, 1)
                oprot.writeStructBegin("ParseError")
                oprot.writeFieldBegin("message", TType.STRING, 1)
                oprot.writeString(f"cannot parse {args.get(1)!r}")
                oprot.writeFieldEnd()
                oprot.writeFieldBegin("unknown_words", TType.LIST, 2)
                oprot.writeListBegin(TType.STRING, 1)
                oprot.writeString("zz")
                oprot.writeListEnd()
                oprot.writeFieldEnd()
                oprot.writeFieldStop()
                oprot.writeStructEnd()
                oprot.writeFieldEnd()

            reply(error)
        elif name == "sleep":
            time.sleep(args.get(1, 0) / 1000)

            def slept() -> None:
                oprot.writeFieldBegin("success", TType.DOUBLE, 0)
                oprot.writeDouble(float(args.get(1, 0)))
                oprot.writeFieldEnd()

            reply(slept)
        else:
            fail(TApplicationException.UNKNOWN_METHOD, f"unknown method {name!r}")
        return True


# -- a stoppable TThreadPoolServer ---------------------------------------------------------


class _Stop(BaseException):
    """Ends a loop of ``TThreadPoolServer``, which catches (and logs) every ``Exception``."""


class _StoppableServerSocket(TSocket.TServerSocket):
    """Listens once (at :meth:`listen`, before ``serve``), and ends ``serve`` on request."""

    def __init__(self) -> None:
        super().__init__(host="127.0.0.1", port=0, socket_family=socket.AF_INET)
        self.stopping = False

    def listen(self) -> None:
        if self.handle is None:  # serve() listens again; keep the socket and port we have
            super().listen()

    def accept(self) -> Any:
        client = super().accept()
        if self.stopping:
            client.close()
            raise _Stop
        return client


class _StopClient:
    """Queued once per pool thread at stop: reading from it ends that thread."""

    def read(self, size: int) -> bytes:
        raise _Stop

    readAll = read  # Apache's transports call this name

    def close(self) -> None:
        pass


class _StoppableThreadPoolServer(TServer.TThreadPoolServer):  # type: ignore[misc]
    """Apache's server, whose pool threads end quietly on :class:`_Stop`."""

    def serveThread(self) -> None:
        with contextlib.suppress(_Stop):
            super().serveThread()


class Finished(TProcessor):  # type: ignore[misc]
    """Wraps a processor and counts the calls it has finished, by method: a call counts once
    its reply was written, or writing it failed (its client gone). A test waits on these
    counts for a late reply to have left, instead of sleeping."""

    def __init__(self, processor: Any) -> None:
        self._processor = processor
        self._current = threading.local()
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        processor.on_message_begin(self._begin)

    def _begin(self, name: str, mtype: int, seqid: int) -> None:
        self._current.name = name

    def process(self, iprot: Any, oprot: Any) -> bool:
        self._current.name = None  # a connection that closes reads no call
        try:
            return bool(self._processor.process(iprot, oprot))
        finally:
            if self._current.name is not None:
                with self._lock:
                    self._counts[self._current.name] += 1

    def __getitem__(self, method: str) -> int:
        with self._lock:
            return self._counts[method]


class ApacheServer:
    """Apache's ``TThreadPoolServer`` (framed, binary) on 127.0.0.1 in daemon threads.

    :attr:`finished` counts the calls it has answered, by method.
    """

    def __init__(self, processor: Any) -> None:
        self.finished = Finished(processor)
        self.transport = _StoppableServerSocket()
        self.server = _StoppableThreadPoolServer(
            self.finished,
            self.transport,
            TTransport.TFramedTransportFactory(),
            TBinaryProtocol.TBinaryProtocolFactory(),
            daemon=True,
        )
        self.server.setNumThreads(SERVER_THREADS)
        self.transport.listen()
        self.port: int = self.transport.handle.getsockname()[1]
        self._before = set(threading.enumerate())
        self._thread = threading.Thread(target=self._serve, name="apache-thrift", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        with contextlib.suppress(_Stop):
            self.server.serve()

    def threads(self) -> list[threading.Thread]:
        return [t for t in set(threading.enumerate()) - self._before if t.is_alive()]

    def stop(self) -> None:
        """End the accept loop and every pool thread (once its client has gone)."""
        self.transport.stopping = True
        with socket.create_connection(("127.0.0.1", self.port)):
            pass  # wakes accept()
        for _ in range(SERVER_THREADS):
            self.server.clients.put(_StopClient())
        deadline = time.monotonic() + 5
        while self.threads() and time.monotonic() < deadline:
            time.sleep(0.02)
        self.transport.close()
        assert not self.threads(), f"Apache server threads left: {self.threads()}"


@pytest.fixture(params=["generated", "hand-written"])
def apache_server(request: pytest.FixtureRequest) -> Iterator[ApacheServer]:
    """An Apache Thrift server of TextLab; stopped after the gateway in front of it."""
    if request.param == "generated":
        processor = TextLab.Processor(Handler(ttypes))
    else:
        processor = HandWrittenProcessor()
    server = ApacheServer(processor)
    try:
        yield server
    finally:
        server.stop()


def _behind_gateway(apache_server: ApacheServer, gateway_factory: GatewayFactory) -> Stack:
    return gateway_factory(backends=0, addresses=[("127.0.0.1", apache_server.port)])


def test_apache_server_behind_the_gateway(
    apache_server: ApacheServer, gateway_factory: GatewayFactory
) -> None:
    stack = _behind_gateway(apache_server, gateway_factory)
    r = stack.call("ping", {"msg": "héllo from HTTP"})
    assert r.status_code == 200, r.text
    assert r.json() == {"result": "héllo from HTTP"}
    r = stack.call("parse", {"sentence": "green ideas"})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["type"] == "ParseError"
    assert r.json()["error"]["fields"] == {
        "message": "cannot parse 'green ideas'",
        "unknown_words": ["zz"],
    }
    r = stack.call("ping", {"msg": "raise"})
    assert r.status_code == 502, r.text
    assert r.json()["error"]["type"] == "TApplicationException"
    assert stack.call("sleep", {"millis": 5}).json() == {"result": 5.0}
    assert stack.client.get("/readyz").status_code == 200


def test_apache_server_late_reply_after_deadline(
    apache_server: ApacheServer, gateway_factory: GatewayFactory
) -> None:
    stack = _behind_gateway(apache_server, gateway_factory)
    r = stack.call("sleep", {"millis": 400}, headers={"x-request-timeout": "0.1"})
    assert r.status_code == 504, r.text
    # The late reply is dropped; the next calls are answered correctly.
    for i in range(5):
        assert stack.call("ping", {"msg": f"after {i}"}).json() == {"result": f"after {i}"}
    # Once the late reply has left the server, the gateway still answers correctly.
    wait_until(lambda: apache_server.finished["sleep"] == 1, timeout=5)
    assert stack.call("ping", {"msg": "later"}).json() == {"result": "later"}
