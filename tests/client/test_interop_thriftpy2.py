"""Wire compatibility: ThriftConnection against thriftpy2's own blocking threaded server."""

from __future__ import annotations

import asyncio
import functools
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from thriftpy2.protocol import TCompactProtocolFactory, TCyBinaryProtocolFactory
from thriftpy2.rpc import make_server
from thriftpy2.thrift import TApplicationException
from thriftpy2.transport import TFramedTransportFactory
from waiting import wait_until

from offloop.client.config import ClientConfig
from offloop.client.connection import ThriftConnection
from offloop.client.errors import NotSentError
from offloop.client.pool import ConnectionPool
from offloop.codec.message import ProtocolName
from offloop.errors import BrokenError, RemoteApplicationError
from offloop.idl import load_idl, service_info

EXTRA_IDL = """
service Extra {
  void touch(),
  oneway void notify(1: string msg),
  string fail(),
}
"""


class TextLabHandler:
    def ping(self, msg: str) -> str:
        return msg

    def parse(self, sentence: str) -> Any:
        raise self.module.ParseError(message=f"cannot parse {sentence!r}", unknown_words=["x"])

    def burn(self, millis: int) -> int:
        return millis * 2

    def sleep(self, millis: int) -> float:
        return float(millis)

    def crunch(self, n: int) -> float:
        raise TApplicationException(TApplicationException.INTERNAL_ERROR, "no numpy here")

    def embed(self, texts: list[str]) -> Any:
        raise RuntimeError("handler bug")  # undeclared: thriftpy2 drops the connection

    def __init__(self, module: Any) -> None:
        self.module = module


class ExtraHandler:
    def __init__(self) -> None:
        self.touched = 0
        self.notified = threading.Event()
        self.notes: list[str] = []

    def touch(self) -> None:
        self.touched += 1

    def notify(self, msg: str) -> None:
        self.notes.append(msg)
        self.notified.set()

    def fail(self) -> str:
        raise TApplicationException(TApplicationException.INTERNAL_ERROR, "failed")


def listens(port: int) -> bool:
    """Whether something accepts connections on 127.0.0.1:``port``."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


@contextmanager
def thriftpy2_server(service: Any, handler: Any, port: int, protocol: str) -> Iterator[None]:
    """Run thriftpy2's TThreadedServer (framed) on 127.0.0.1:port in a thread; stop it."""
    proto_factory = (
        TCyBinaryProtocolFactory() if protocol == "binary" else TCompactProtocolFactory()
    )
    server = make_server(
        service,
        handler,
        host="127.0.0.1",
        port=port,
        proto_factory=proto_factory,
        trans_factory=TFramedTransportFactory(),
    )
    server.daemon = True
    thread = threading.Thread(target=server.serve, daemon=True)
    thread.start()
    wait_until(functools.partial(listens, port), timeout=5)
    try:
        yield
    finally:
        server.close()
        # accept() blocks: one more connection wakes it to see the closed flag
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        thread.join(timeout=5)
        server.trans.close()
        assert not thread.is_alive()


@pytest.mark.parametrize("protocol", ["binary", "compact"])
def test_demo_idl_against_thriftpy2_server(protocol: ProtocolName, port: int) -> None:
    idl = Path(__file__).resolve().parents[2] / "src" / "offloop" / "demo" / "textlab.thrift"
    module = load_idl(idl)
    info = service_info(module, "TextLab")
    methods = info.methods

    async def main() -> None:
        pool = ConnectionPool("127.0.0.1", port, ClientConfig(protocol=protocol), size=2)
        try:
            ping = methods["ping"]
            results = await asyncio.gather(
                *(pool.call(ping, ping.args_cls(msg=f"m{i}"), timeout=5) for i in range(50))
            )
            assert results == [f"m{i}" for i in range(50)]
            burn = methods["burn"]
            assert await pool.call(burn, burn.args_cls(millis=21), timeout=5) == 42
            parse = methods["parse"]
            with pytest.raises(module.ParseError) as info:
                await pool.call(parse, parse.args_cls(sentence="zz"), timeout=5)
            assert info.value.unknown_words == ["x"]
            crunch = methods["crunch"]
            with pytest.raises(RemoteApplicationError, match="no numpy") as app_error:
                await pool.call(crunch, crunch.args_cls(n=2), timeout=5)
            assert app_error.value.type == TApplicationException.INTERNAL_ERROR
            embed = methods["embed"]
            with pytest.raises(BrokenError) as broken:
                await pool.call(embed, embed.args_cls(texts=["a"]), timeout=5)
            assert not isinstance(broken.value, NotSentError)
            assert await pool.call(ping, ping.args_cls(msg="back"), timeout=5) == "back"
        finally:
            await pool.close()

    with thriftpy2_server(info.service, TextLabHandler(module), port, protocol):
        asyncio.run(main())


def test_void_oneway_and_internal_error_against_thriftpy2_server(port: int, tmp_path: Path) -> None:
    path = tmp_path / "extra.thrift"
    path.write_text(EXTRA_IDL)
    info = service_info(load_idl(path), "Extra")
    methods = info.methods
    handler = ExtraHandler()

    async def main() -> None:
        conn = await ThriftConnection.connect("127.0.0.1", port, ClientConfig())
        try:
            touch, notify, fail = methods["touch"], methods["notify"], methods["fail"]
            assert await conn.call(touch, touch.args_cls(), timeout=5) is None
            assert await conn.call(notify, notify.args_cls(msg="hi"), timeout=5) is None
            assert conn.in_flight == 0  # a oneway call waits for nothing
            with pytest.raises(RemoteApplicationError) as info:
                await conn.call(fail, fail.args_cls(), timeout=5)
            assert info.value.type == TApplicationException.INTERNAL_ERROR
            assert await conn.call(touch, touch.args_cls(), timeout=5) is None
        finally:
            await conn.close()

    with thriftpy2_server(info.service, handler, port, "binary"):
        asyncio.run(main())
        assert handler.notified.wait(5)
    assert handler.touched == 2 and handler.notes == ["hi"]
