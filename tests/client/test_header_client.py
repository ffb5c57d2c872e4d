"""How offloop's clients choose their framing (``ClientConfig.transport``), against servers
on 127.0.0.1 that answer the probe, refuse it, or never answer it.

The fallback is bounded (a silent server costs one ``connect_timeout``), remembered per
backend when the answer was definite, and asked again when it was not.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import cast

import pytest
from fake_thrift import SERVICE, FakeServer

from offloop.client.blocking import BlockingClient
from offloop.client.config import ClientConfig
from offloop.client.connection import ThriftConnection
from offloop.client.pool import ConnectionPool
from offloop.codec.framing import FrameDecoder, encode_frame
from offloop.codec.header import decode_header_frame, is_header_frame
from offloop.codec.message import MessageCodec
from offloop.context import DEADLINE_HEADER, REQUEST_ID, REQUEST_ID_HEADER

PING = SERVICE.methods["ping"]


class _HeaderDeafServer:
    """Answers framed ``ping`` calls, and never answers a header frame (as a server that
    reads the frame as something else and waits for more would)."""

    def __init__(self) -> None:
        self.probes = 0
        self.framed_calls = 0
        self.headers: list[dict[str, str]] = []
        self.codec = MessageCodec("binary")
        self._server: asyncio.Server | None = None
        self._transports: set[asyncio.Transport] = set()
        self.port = 0

    async def start(self) -> _HeaderDeafServer:
        server = self

        class Protocol(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                self.transport = cast(asyncio.Transport, transport)
                self.decoder = FrameDecoder()
                server._transports.add(self.transport)

            def connection_lost(self, exc: Exception | None) -> None:
                server._transports.discard(self.transport)

            def data_received(self, data: bytes) -> None:
                self.decoder.feed(data)
                for frame in self.decoder.frames():
                    if is_header_frame(frame):
                        server.probes += 1
                        server.headers.append(decode_header_frame(frame).headers)
                        continue
                    server.framed_calls += 1
                    header = server.codec.read_header(frame)
                    _, args = server.codec.decode_args(frame, PING)
                    result = PING.result_cls(success=args.msg)
                    reply = server.codec.encode_reply("ping", header.seqid, result)
                    self.transport.write(encode_frame(reply))

        self._server = await asyncio.get_running_loop().create_server(Protocol, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for transport in list(self._transports):
            transport.abort()
        await self._server.wait_closed()


def test_a_silent_probe_falls_back_at_once_and_is_asked_again() -> None:
    async def main() -> None:
        server = await _HeaderDeafServer().start()
        config = ClientConfig(connect_timeout=0.3)
        pool = ConnectionPool("127.0.0.1", server.port, config, size=2)
        try:
            assert await pool.call(PING, PING.args_cls(msg="a"), timeout=10) == "a"
            # One probe (unanswered within the connect timeout), then a framed call: counted,
            # not timed (item 22: no wall-time assertion).
            assert server.probes == 1 and server.framed_calls == 1
            pool.warm()  # not remembered: the next connection asks again
            for _ in range(500):
                if pool.connections == 2:
                    break
                await asyncio.sleep(0.02)
            assert pool.connections == 2
            assert server.probes == 2
        finally:
            await pool.close()
            await server.stop()

    asyncio.run(main())


def test_a_silent_probe_in_the_blocking_client() -> None:
    loop = asyncio.new_event_loop()
    server = loop.run_until_complete(_HeaderDeafServer().start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    client = BlockingClient("127.0.0.1", server.port, ClientConfig(connect_timeout=0.3))
    try:
        deadline = time.monotonic() + 10
        assert client.call(PING, PING.args_cls(msg="b"), deadline, 10) == "b"
        assert client.header is None  # not known: asked again on the next socket
        client.reset()
        assert client.call(PING, PING.args_cls(msg="c"), deadline, 10) == "c"
        assert server.probes == 2 and server.framed_calls == 2
    finally:
        client.close()
        asyncio.run_coroutine_threadsafe(server.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


@pytest.mark.parametrize("transport", ["header", "framed"])
def test_an_explicit_transport_sends_no_probe(transport: str) -> None:
    async def main() -> None:
        server = await _HeaderDeafServer().start()
        config = ClientConfig(transport=transport)  # type: ignore[arg-type]
        try:
            conn = await ThriftConnection.connect("127.0.0.1", server.port, config)
            assert conn.header is (transport == "header")
            if transport == "framed":
                assert await conn.call(PING, PING.args_cls(msg="x"), timeout=10) == "x"
                assert server.probes == 0
            else:
                token = REQUEST_ID.set("rid-7")
                try:
                    with pytest.raises(Exception):  # noqa: B017 (it never answers)
                        await conn.call(PING, PING.args_cls(msg="x"), timeout=0.3)
                finally:
                    REQUEST_ID.reset(token)
                # The call went as a header frame with its context; no probe before it.
                assert server.probes == 1
                assert server.headers[0][REQUEST_ID_HEADER] == "rid-7"
                assert 0 < int(server.headers[0][DEADLINE_HEADER]) <= 300
            await conn.close()
        finally:
            await server.stop()

    asyncio.run(main())


def test_auto_speaks_header_to_a_server_that_answers_the_probe() -> None:
    async def main() -> None:
        server = await FakeServer().start()
        try:
            pool = ConnectionPool("127.0.0.1", server.port, ClientConfig(), size=2)
            assert await pool.call(PING, PING.args_cls(msg="h"), timeout=10) == "h"
            assert server.accepted == 1  # the probe's connection carries the calls
            await pool.close()
        finally:
            await server.stop()

    asyncio.run(main())


class _HeaderRefusingServer(_HeaderDeafServer):
    """Closes a connection whose first frame is a header frame (a framed-only server that
    reads it as garbage): a definite "framed" answer to the probe."""

    async def start(self) -> _HeaderRefusingServer:
        server = self

        class Protocol(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                self.transport = cast(asyncio.Transport, transport)
                self.decoder = FrameDecoder()
                server._transports.add(self.transport)

            def data_received(self, data: bytes) -> None:
                self.decoder.feed(data)
                for frame in self.decoder.frames():
                    if is_header_frame(frame):
                        server.probes += 1
                        self.transport.close()
                        return
                    server.framed_calls += 1
                    header = server.codec.read_header(frame)
                    _, args = server.codec.decode_args(frame, PING)
                    reply = server.codec.encode_reply(
                        "ping", header.seqid, PING.result_cls(success=args.msg)
                    )
                    self.transport.write(encode_frame(reply))

        self._server = await asyncio.get_running_loop().create_server(Protocol, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self


def test_a_framed_answer_is_asked_again_after_a_while() -> None:
    # Item 19: a framed answer was kept for the client's life; a server replaced by an
    # offloop worker never got THeader calls. It is asked again on a later socket.
    loop = asyncio.new_event_loop()
    server = loop.run_until_complete(_HeaderRefusingServer().start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    client = BlockingClient("127.0.0.1", server.port, ClientConfig(connect_timeout=2.0))
    try:
        deadline = time.monotonic() + 10
        assert client.call(PING, PING.args_cls(msg="a"), deadline, 10) == "a"
        assert client.header is False and server.probes == 1
        client.reset()
        assert client.call(PING, PING.args_cls(msg="b"), deadline, 10) == "b"
        assert server.probes == 1  # remembered: no probe on this socket
        client._reprobe_at = time.monotonic()  # as if REPROBE_FRAMED_AFTER had passed
        client.reset()
        assert client.call(PING, PING.args_cls(msg="c"), deadline, 10) == "c"
        assert server.probes == 2  # asked again
        assert client.header is False
    finally:
        client.close()
        asyncio.run_coroutine_threadsafe(server.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
