"""ThriftConnection against the fake server: multiplexing, deadlines, errors, closing."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
from typing import Any

import pytest
from net import free_port
from waiting import wait_until_async

from offloop.client.config import ClientConfig
from offloop.client.connection import ConnectionState, ThriftConnection
from offloop.client.errors import (
    NotSentBrokenError,
    NotSentClosedError,
    NotSentConnectError,
    NotSentDeadline,
    NotSentError,
    NotSentOverloaded,
    NotSentWriteError,
)
from offloop.codec.message import ProtocolName
from offloop.errors import (
    BrokenError,
    ClosedError,
    ConnectError,
    DeadlineExceeded,
    EncodeError,
    Overloaded,
    RemoteApplicationError,
    RemoteProtocolError,
)
from offloop.idl import ServiceInfo

#: Seconds a test waits for a state it expects (bounds a hang, not a speed claim).
WAIT = 5.0


def call(
    conn: ThriftConnection,
    service: ServiceInfo,
    name: str,
    timeout: float | None = 5.0,
    **kwargs: Any,
) -> Any:
    """Start a call of ``name`` with keyword arguments; returns the coroutine."""
    method = service.methods[name]
    return conn.call(method, method.args_cls(**kwargs), timeout=timeout)


# -- configuration ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "field, value",
    [
        ("protocol", "json"),
        ("max_frame_size", 0),
        ("connect_timeout", 0),
        ("max_in_flight", 0),
        ("write_buffer_high", 0),
    ],
)
def test_config_rejects_bad_values(field: str, value: Any) -> None:
    with pytest.raises(ValueError, match=field):
        dataclasses.replace(ClientConfig(), **{field: value})


# -- multiplexing ----------------------------------------------------------------------------


def test_500_concurrent_calls_get_their_own_out_of_order_replies(
    run: Any, protocol: ProtocolName, fake_server: Any, service: ServiceInfo
) -> None:
    async def main() -> None:
        server = await fake_server(protocol).start()
        conn = await ThriftConnection.connect(
            "127.0.0.1", server.port, ClientConfig(protocol=protocol)
        )
        try:
            rng = random.Random(7)
            millis = [rng.randrange(0, 40) for _ in range(500)]
            results = await asyncio.gather(
                *(call(conn, service, "sleep", millis=m) for m in millis)
            )
            assert results == [float(m) for m in millis]
            assert server.replied != server.received, "replies should come out of order"
            assert sorted(server.replied) == sorted(server.received)
            assert len(set(server.received)) == 500
            assert conn.in_flight == 0
            assert server.accepted == 1
        finally:
            await conn.close()
            await server.stop()

    run(main())


def test_light_calls_and_declared_and_application_errors(
    run: Any, protocol: ProtocolName, fake_server: Any, service: ServiceInfo, textlab: Any
) -> None:
    async def main() -> None:
        server = await fake_server(protocol).start()
        conn = await ThriftConnection.connect(
            "127.0.0.1", server.port, ClientConfig(protocol=protocol)
        )
        try:
            assert conn.peer == f"127.0.0.1:{server.port}"
            assert conn.is_usable and conn.state is ConnectionState.OPEN
            assert await call(conn, service, "ping", msg="héllo") == "héllo"
            assert await call(conn, service, "burn", millis=1 << 20) == 1 << 20

            with pytest.raises(textlab.ParseError) as parse_error:
                await call(conn, service, "parse", sentence="zzz")
            assert parse_error.value.unknown_words == ["zzz"]

            with pytest.raises(RemoteApplicationError) as app_error:
                await call(conn, service, "ping", msg="app-error")
            assert app_error.value.type == 6  # INTERNAL_ERROR
            assert "boom" in str(app_error.value)
            assert not isinstance(app_error.value, NotSentError)

            with pytest.raises(RemoteApplicationError) as unknown:
                await call(conn, service, "crunch", n=3)
            assert unknown.value.type == 1  # UNKNOWN_METHOD

            with pytest.raises(EncodeError):
                await call(conn, service, "ping", msg=12345)  # not a string

            # none of that hurt the connection
            assert conn.is_usable and conn.in_flight == 0
            assert await call(conn, service, "ping", msg="still") == "still"
        finally:
            await conn.close()
            await server.stop()

    run(main())


def test_stale_seqid_and_wrong_name_replies_do_not_break_the_connection(
    run: Any, protocol: ProtocolName, fake_server: Any, service: ServiceInfo
) -> None:
    async def main() -> None:
        server = await fake_server(protocol).start()
        conn = await ThriftConnection.connect(
            "127.0.0.1", server.port, ClientConfig(protocol=protocol)
        )
        try:
            assert await call(conn, service, "ping", msg="stale") == "stale"
            with pytest.raises(RemoteProtocolError, match="pong"):
                await call(conn, service, "ping", msg="wrong-name")
            assert conn.is_usable
            assert await call(conn, service, "ping", msg="ok") == "ok"
        finally:
            await conn.close()
            await server.stop()

    run(main())


def test_reply_declaring_more_than_its_frame_fails_that_call_only(
    run: Any, protocol: ProtocolName, fake_server: Any, service: ServiceInfo
) -> None:
    # A 30-byte frame declaring a 1 GiB string: the Cython codec over TCyMemoryBuffer would
    # allocate and return 1 GiB; the client must refuse it instead.
    async def main() -> None:
        server = await fake_server(protocol).start()
        conn = await ThriftConnection.connect(
            "127.0.0.1", server.port, ClientConfig(protocol=protocol)
        )
        try:
            with pytest.raises(RemoteProtocolError, match="malformed reply"):
                await call(conn, service, "ping", msg="bomb")
            assert conn.is_usable
            assert await call(conn, service, "ping", msg="ok") == "ok"
        finally:
            await conn.close()
            await server.stop()

    run(main())


# -- deadlines and cancellation --------------------------------------------------------------


def test_timed_out_call_frees_its_slot_and_its_late_reply_is_ignored(
    run: Any,
    protocol: ProtocolName,
    fake_server: Any,
    service: ServiceInfo,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def main() -> None:
        server = await fake_server(protocol).start()
        conn = await ThriftConnection.connect(
            "127.0.0.1", server.port, ClientConfig(protocol=protocol)
        )
        try:
            with pytest.raises(DeadlineExceeded) as info:
                await call(conn, service, "sleep", timeout=0.02, millis=150)
            assert not isinstance(info.value, NotSentError)  # it was sent
            assert conn.in_flight == 0
            assert await call(conn, service, "ping", msg="during") == "during"
            # The late reply is sent; a ping after it proves it was read (TCP keeps order).
            await wait_until_async(lambda: server.late_replies == 1, WAIT)
            assert await call(conn, service, "ping", msg="after") == "after"
            assert conn.is_usable and conn.in_flight == 0
        finally:
            await conn.close()
            await server.stop()

    with caplog.at_level(logging.DEBUG, logger="offloop.client.connection"):
        run(main())
    assert "unknown seqid" in caplog.text


def test_cancelled_call_frees_its_slot(run: Any, fake_server: Any, service: ServiceInfo) -> None:
    async def main() -> None:
        server = await fake_server().start()
        conn = await ThriftConnection.connect("127.0.0.1", server.port, ClientConfig())
        try:
            task = asyncio.ensure_future(call(conn, service, "sleep", timeout=None, millis=100))
            await wait_until_async(lambda: len(server.received) == 1, WAIT)
            assert conn.in_flight == 1
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert conn.in_flight == 0
            await wait_until_async(lambda: server.late_replies == 1, WAIT)
            assert await call(conn, service, "ping", msg="after") == "after"
            assert conn.is_usable
        finally:
            await conn.close()
            await server.stop()

    run(main())


def test_max_in_flight_refuses_at_once(run: Any, fake_server: Any, service: ServiceInfo) -> None:
    async def main() -> None:
        server = await fake_server().start()
        conn = await ThriftConnection.connect(
            "127.0.0.1", server.port, ClientConfig(max_in_flight=3)
        )
        try:
            slow = [
                asyncio.ensure_future(call(conn, service, "sleep", millis=50)) for _ in range(3)
            ]
            await asyncio.sleep(0)
            assert conn.in_flight == 3
            with pytest.raises(Overloaded) as info:
                await call(conn, service, "ping", msg="one too many")
            assert isinstance(info.value, NotSentOverloaded)
            assert await asyncio.gather(*slow) == [50.0] * 3
            assert await call(conn, service, "ping", msg="room") == "room"
        finally:
            await conn.close()
            await server.stop()

    run(main())


def test_full_write_buffer_makes_callers_wait_within_their_deadline(
    run: Any, fake_server: Any, service: ServiceInfo
) -> None:
    async def main() -> None:
        server = await fake_server().start()
        config = ClientConfig(write_buffer_high=64 * 1024)
        conn = await ThriftConnection.connect("127.0.0.1", server.port, config)
        await wait_until_async(lambda: server.accepted == 1, WAIT)
        server.pause_reading()
        big = "x" * (1 << 20)
        try:
            # Fill the kernel buffers and then the transport's, while the server reads nothing.
            sent = []
            while not conn._paused:
                sent.append(asyncio.ensure_future(call(conn, service, "ping", msg=big)))
                await asyncio.sleep(0)
                assert len(sent) < 200, "the write buffer never filled"
            with pytest.raises(NotSentDeadline):
                await call(conn, service, "ping", timeout=0.05, msg="waits")
            waiter = asyncio.ensure_future(call(conn, service, "ping", msg="waits too"))
            # The waiting caller counts.
            await wait_until_async(lambda: conn.in_flight == len(sent) + 1, WAIT)
            server.resume_reading()
            assert await waiter == "waits too"
            assert all(r == big for r in await asyncio.gather(*sent))
        finally:
            await conn.close()
            await server.stop()

    run(main())


# -- broken and closed connections -----------------------------------------------------------


@pytest.mark.parametrize("garbage", ["garbage", "huge-frame"])
def test_garbage_breaks_the_connection_and_fails_pending_calls(
    run: Any, protocol: ProtocolName, garbage: str, fake_server: Any, service: ServiceInfo
) -> None:
    async def main() -> None:
        server = await fake_server(protocol).start()
        conn = await ThriftConnection.connect(
            "127.0.0.1", server.port, ClientConfig(protocol=protocol)
        )
        try:
            slow = asyncio.ensure_future(call(conn, service, "sleep", millis=2000))
            with pytest.raises(BrokenError) as info:
                await call(conn, service, "ping", msg=garbage)
            assert not isinstance(info.value, NotSentError)
            assert isinstance(info.value.__cause__, RemoteProtocolError)
            with pytest.raises(BrokenError, match="garbage"):
                await slow
            assert not conn.is_usable and conn.state is ConnectionState.BROKEN
            assert conn.in_flight == 0
            with pytest.raises(NotSentBrokenError):
                await call(conn, service, "ping", msg="after")
        finally:
            await conn.close()
            await server.stop()

    run(main())


def test_peer_closing_mid_call_fails_pending_calls_as_sent(
    run: Any, fake_server: Any, service: ServiceInfo
) -> None:
    async def main() -> None:
        server = await fake_server().start()
        conn = await ThriftConnection.connect("127.0.0.1", server.port, ClientConfig())
        try:
            slow = asyncio.ensure_future(call(conn, service, "sleep", millis=2000))
            with pytest.raises(BrokenError, match="closed by peer while 2 calls") as info:
                await call(conn, service, "ping", msg="close")
            assert not isinstance(info.value, NotSentError)
            with pytest.raises(BrokenError):
                await slow
            assert conn.state is ConnectionState.BROKEN and not conn.is_usable
            with pytest.raises(NotSentBrokenError):
                await call(conn, service, "ping", msg="after")
            await conn.close()  # closing a broken connection is fine, and idempotent
            await conn.close()
            assert conn.state is ConnectionState.BROKEN
        finally:
            await server.stop()

    run(main())


def test_connect_refused_is_a_not_sent_connect_error(run: Any) -> None:
    async def main() -> None:
        with pytest.raises(ConnectError) as info:
            await ThriftConnection.connect("127.0.0.1", free_port(), ClientConfig())
        assert isinstance(info.value, NotSentConnectError)
        assert isinstance(info.value.__cause__, OSError)

    run(main())


def test_close_fails_pending_calls_and_refuses_new_ones(
    run: Any, fake_server: Any, service: ServiceInfo
) -> None:
    async def main() -> None:
        server = await fake_server().start()
        conn = await ThriftConnection.connect("127.0.0.1", server.port, ClientConfig())
        try:
            slow = [
                asyncio.ensure_future(call(conn, service, "sleep", millis=2000)) for _ in range(5)
            ]
            await wait_until_async(lambda: len(server.received) == 5, WAIT)
            await conn.close()
            results = await asyncio.gather(*slow, return_exceptions=True)
            assert all(type(r) is ClosedError for r in results), results
            assert "closed by us while 5 calls" in str(results[0])
            assert conn.state is ConnectionState.CLOSED and conn.in_flight == 0
            with pytest.raises(NotSentClosedError):
                await call(conn, service, "ping", msg="late")
            await conn.close()
        finally:
            await server.stop()

    run(main())  # the runner also checks that no task is left behind


def test_calls_not_yet_flushed_fail_as_not_sent(
    run: Any, fake_server: Any, service: ServiceInfo
) -> None:
    # Frames queued in one loop iteration are written together at its end; a call whose frame
    # never left must say so, whatever ends the connection first.
    async def main() -> None:
        server = await fake_server().start()
        conn = await ThriftConnection.connect("127.0.0.1", server.port, ClientConfig())
        try:
            assert await call(conn, service, "ping", msg="") == ""  # a falsy result is a result
            queued = asyncio.ensure_future(call(conn, service, "ping", msg="queued"))
            await asyncio.sleep(0)  # the call has queued its frame; the flush comes after us
            assert conn.in_flight == 1
            await conn.close()
            with pytest.raises(NotSentClosedError):
                await queued
            assert server.received == [1]  # only the first call reached the server
        finally:
            await conn.close()
            await server.stop()

    run(main())


class _FailingWrites:
    """Wraps a transport; its writes fail."""

    def __init__(self, transport: Any) -> None:
        self._transport = transport

    def write(self, data: bytes) -> None:
        raise OSError("no buffer space")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def test_failed_write_breaks_the_connection_and_fails_queued_calls_as_not_sent(
    run: Any, fake_server: Any, service: ServiceInfo
) -> None:
    async def main() -> None:
        server = await fake_server().start()
        conn = await ThriftConnection.connect("127.0.0.1", server.port, ClientConfig())
        try:
            conn._transport = _FailingWrites(conn._transport)  # type: ignore[assignment]
            with pytest.raises(NotSentWriteError) as info:
                await call(conn, service, "ping", msg="x")
            assert isinstance(info.value.__cause__, OSError)
            assert conn.state is ConnectionState.BROKEN and conn.in_flight == 0
        finally:
            await conn.close()
            await server.stop()

    run(main())
