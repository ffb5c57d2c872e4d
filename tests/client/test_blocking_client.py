"""The actors' blocking client against a misbehaving fake server: the same error mapping as
the async client (:mod:`offloop.client.connection`), and a socket never reused after an error.

The fake server runs on the test's event loop; each blocking call runs in a worker thread
(``asyncio.to_thread``), as it would in an actor.
"""

from __future__ import annotations

import asyncio
import select
import struct
import threading
import time
from collections.abc import Coroutine
from typing import Any, TypeVar, cast

import faulty
import pytest
from net import free_port
from thriftpy2.thrift import TApplicationException
from waiting import wait_until_async

from offloop.client.blocking import BlockingClient
from offloop.client.config import ClientConfig
from offloop.client.errors import NotSentClosedError, NotSentConnectError, NotSentError
from offloop.codec.framing import FrameDecoder, encode_frame
from offloop.codec.message import MessageCodec, ProtocolName
from offloop.errors import (
    Blame,
    BrokenError,
    ClosedError,
    DeadlineExceeded,
    EncodeError,
    PayloadTooLarge,
    RemoteApplicationError,
    RemoteProtocolError,
)
from offloop.idl import load_idl, service_info

T = TypeVar("T")

textlab = load_idl(faulty.IDL)
SERVICE = service_info(textlab, "TextLab")
PING = SERVICE.methods["ping"]
PARSE = SERVICE.methods["parse"]
#: Seconds a test waits for a state it expects (bounds a hang, not a speed claim).
WAIT = 5.0


def run(coro: Coroutine[Any, Any, T]) -> T:
    async def main() -> T:
        async with asyncio.timeout(10):
            return await coro

    return asyncio.run(main())


class Fake(asyncio.Protocol):
    """Echoes ``ping(msg)`` except for the commands of :func:`answer`."""

    def __init__(self, server: FakeServer) -> None:
        self.server = server
        self.decoder = FrameDecoder()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.server.accepted += 1
        self.server.transports.add(self.transport)

    def connection_lost(self, exc: Exception | None) -> None:
        assert self.transport is not None
        self.server.transports.discard(self.transport)

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.decoder.feed(data)
        for frame in self.decoder.frames():
            self.server.answer(self.transport, frame)


class FakeServer:
    """Plain framed Thrift only: its clients are told so (``transport="framed"``)."""

    def __init__(self, protocol: ProtocolName = "binary") -> None:
        self.codec = MessageCodec(protocol)
        self.accepted = 0
        self.received = 0  # calls read
        self.transports: set[asyncio.Transport] = set()
        self.port = 0
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> FakeServer:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: Fake(self), "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for t in list(self.transports):
            t.abort()
        await self._server.wait_closed()

    def drop_connections(self) -> None:
        for t in list(self.transports):
            t.close()

    def answer(self, transport: asyncio.Transport, frame: bytes) -> None:
        codec = self.codec
        header = codec.read_header(frame)
        method = SERVICE.methods[header.name]
        _, args = codec.decode_args(frame, method)
        self.received += 1
        seqid = header.seqid
        result = method.result_cls()
        if header.name == "parse":
            result.error = textlab.ParseError(message="no parse", unknown_words=["zzz"])
            transport.write(encode_frame(codec.encode_reply("parse", seqid, result)))
            return
        msg = args.msg
        if msg == "silent":
            return
        if msg == "close":
            transport.close()
            return
        if msg == "garbage":
            transport.write(encode_frame(b"\x00\x01garbage, not thrift"))
            return
        if msg == "huge-frame":
            transport.write(b"\x7f\xff\xff\xf0" + b"x" * 16)
            return
        if msg == "app-error":
            payload = codec.application_error(
                "ping", seqid, TApplicationException.INTERNAL_ERROR, "boom"
            )
            transport.write(encode_frame(payload))
            return
        if msg == "bomb":  # binary: a few bytes declaring a 1 GiB string
            head = struct.pack("!Ii", 0x80010002, 4) + b"ping" + struct.pack("!i", seqid)
            transport.write(encode_frame(head + b"\x0b" + struct.pack("!hi", 0, 1 << 30) + b"ab"))
            return
        result.success = msg
        if msg == "stale":
            transport.write(encode_frame(codec.encode_reply("ping", seqid + 100_000, result)))
        name = "pong" if msg == "wrong-name" else "ping"
        transport.write(encode_frame(codec.encode_reply(name, seqid, result)))


def ping(client: BlockingClient, msg: str, timeout: float = 2.0) -> Any:
    """Run one blocking ping off the loop."""
    args = PING.args_cls(msg=msg)
    return asyncio.to_thread(client.call, PING, args, time.monotonic() + timeout, timeout)


@pytest.mark.parametrize("protocol", ["binary", "compact"])
def test_replies_and_errors_map_like_the_async_client(protocol: ProtocolName) -> None:
    async def main() -> None:
        async with FakeServer(protocol) as server:
            config = ClientConfig(protocol=protocol, transport="framed")
            client = BlockingClient("127.0.0.1", server.port, config)
            try:
                assert await ping(client, "hello") == "hello"
                assert await ping(client, "stale") == "stale"  # unknown seqid: dropped
                with pytest.raises(textlab.ParseError):
                    await asyncio.to_thread(
                        client.call, PARSE, PARSE.args_cls(sentence="x"), time.monotonic() + 2, 2
                    )
                with pytest.raises(RemoteApplicationError, match="boom") as app:
                    await ping(client, "app-error")
                assert app.value.type == TApplicationException.INTERNAL_ERROR
                with pytest.raises(RemoteProtocolError, match="pong"):
                    await ping(client, "wrong-name")
                assert server.accepted == 1  # all of that on one connection
                for msg in ("garbage", "huge-frame", "close"):
                    with pytest.raises(BrokenError) as broken:
                        await ping(client, msg)
                    assert not isinstance(broken.value, NotSentError)
                    assert not client.connected
                    assert await ping(client, "again") == "again"
                assert server.accepted == 4
            finally:
                client.close()

    run(main())


def test_bomb_reply_is_refused_without_allocating_it() -> None:
    async def main() -> None:
        async with FakeServer() as server:
            client = BlockingClient("127.0.0.1", server.port, ClientConfig(transport="framed"))
            try:
                with pytest.raises(RemoteProtocolError):
                    await ping(client, "bomb")
            finally:
                client.close()

    run(main())


def test_timeout_resets_the_socket() -> None:
    async def main() -> None:
        async with FakeServer() as server:
            client = BlockingClient("127.0.0.1", server.port, ClientConfig(transport="framed"))
            try:
                with pytest.raises(DeadlineExceeded):
                    await ping(client, "silent", timeout=0.1)
                assert not client.connected
                assert await ping(client, "next") == "next"
                assert server.accepted == 2
            finally:
                client.close()

    run(main())


def test_idle_socket_closed_by_peer_reconnects_transparently() -> None:
    async def main() -> None:
        async with FakeServer() as server:
            client = BlockingClient("127.0.0.1", server.port, ClientConfig(transport="framed"))
            try:
                assert await ping(client, "one") == "one"
                sock = client._sock
                assert sock is not None
                server.drop_connections()
                # The peer's close has reached the client's socket (it reads as ready).
                await wait_until_async(lambda: select.select([sock], [], [], 0)[0], WAIT)
                assert await ping(client, "two") == "two"  # not a BrokenError: never sent
                assert server.accepted == 2
            finally:
                client.close()

    run(main())


def test_connect_refused_is_not_sent() -> None:
    client = BlockingClient("127.0.0.1", free_port(), ClientConfig(transport="framed"))
    with pytest.raises(NotSentConnectError) as exc_info:
        client.call(PING, PING.args_cls(msg="x"), time.monotonic() + 1, 1)
    assert exc_info.value.blame is Blame.BACKEND


def test_bad_or_oversized_arguments_are_refused_before_connecting() -> None:
    client = BlockingClient("127.0.0.1", 9, ClientConfig(max_frame_size=64))
    with pytest.raises(PayloadTooLarge) as too_big:
        client.call(PING, PING.args_cls(msg="x" * 100), time.monotonic() + 1, 1)
    assert too_big.value.blame is Blame.CALLER
    with pytest.raises(EncodeError, match="cannot encode"):
        client.call(PING, PING.args_cls(msg=12345), time.monotonic() + 1, 1)
    assert not client.connected


def test_interrupt_wakes_a_blocked_call() -> None:
    async def main() -> None:
        async with FakeServer() as server:
            client = BlockingClient("127.0.0.1", server.port, ClientConfig(transport="framed"))
            call = ping(client, "silent", timeout=5.0)
            task = asyncio.ensure_future(call)
            # The call is sent and blocked on its reply, which never comes.
            await wait_until_async(lambda: server.received == 1, WAIT)
            threading.Thread(target=client.interrupt).start()
            # Woken by the interrupt: its deadline would have raised DeadlineExceeded.
            with pytest.raises(ClosedError) as exc_info:
                await task
            assert not isinstance(exc_info.value, NotSentError)
            with pytest.raises(NotSentClosedError):
                await ping(client, "after")
            client.close()

    run(main())
