"""ConnectionPool against the fake server: lazy growth, its bound, reconnects, closing."""

from __future__ import annotations

import asyncio
import random
import socket
from typing import Any

import pytest
from net import free_port
from waiting import wait_until_async

from offloop.client.config import ClientConfig
from offloop.client.errors import NotSentClosedError, NotSentConnectError, NotSentError
from offloop.client.pool import ConnectionPool
from offloop.codec.message import ProtocolName
from offloop.errors import BrokenError, ClosedError, ConnectError, Overloaded
from offloop.idl import ServiceInfo

#: Seconds a test waits for a state it expects (bounds a hang, not a speed claim).
WAIT = 5.0


def call(pool: ConnectionPool, service: ServiceInfo, name: str, **kwargs: Any) -> Any:
    method = service.methods[name]
    return pool.call(method, method.args_cls(**kwargs), timeout=5.0)


def test_size_must_be_positive() -> None:
    with pytest.raises(ValueError, match="size"):
        ConnectionPool("127.0.0.1", 1, ClientConfig(), size=0)


def test_200_concurrent_calls_never_open_more_than_size_connections(
    run: Any, protocol: ProtocolName, fake_server: Any, service: ServiceInfo
) -> None:
    async def main() -> None:
        server = await fake_server(protocol).start()
        pool = ConnectionPool("127.0.0.1", server.port, ClientConfig(protocol=protocol), size=3)
        try:
            rng = random.Random(3)
            for _ in range(3):  # waves: a cold pool, then a warm one that may still grow
                millis = [rng.randrange(1, 20) for _ in range(200)]
                results = await asyncio.gather(
                    *(call(pool, service, "sleep", millis=m) for m in millis)
                )
                assert results == [float(m) for m in millis]
                assert pool.connections <= 3
            assert 1 <= server.accepted <= 3
            assert pool.in_flight == 0
        finally:
            await pool.close()
            await server.stop()

    run(main())


def test_calls_spread_over_the_least_busy_connections(
    run: Any, fake_server: Any, service: ServiceInfo
) -> None:
    async def main() -> None:
        server = await fake_server().start()
        pool = ConnectionPool("127.0.0.1", server.port, ClientConfig(), size=2)
        try:
            assert await call(pool, service, "ping", msg="warm") == "warm"
            # one idle connection: both calls take it; the second finds it busy, so the
            # pool opens another in the background
            slow = [
                asyncio.ensure_future(call(pool, service, "sleep", millis=2000)) for _ in range(2)
            ]
            await asyncio.sleep(0)
            assert pool.connections == 1 and pool.in_flight == 2
            await wait_until_async(lambda: pool.connections == 2, WAIT)
            slow.append(asyncio.ensure_future(call(pool, service, "sleep", millis=2000)))
            await asyncio.sleep(0)
            assert sorted(c.in_flight for c in pool._conns) == [1, 2]
            await pool.close()  # the sleepers fail with ClosedError; no need to wait for them
            assert all(
                isinstance(r, ClosedError)
                for r in await asyncio.gather(*slow, return_exceptions=True)
            )
            assert server.accepted == 2
        finally:
            await pool.close()
            await server.stop()

    run(main())


def test_broken_connection_is_replaced_on_demand(
    run: Any, protocol: ProtocolName, fake_server: Any, service: ServiceInfo
) -> None:
    async def main() -> None:
        server = await fake_server(protocol).start()
        pool = ConnectionPool("127.0.0.1", server.port, ClientConfig(protocol=protocol), size=1)
        try:
            with pytest.raises(BrokenError) as info:
                await call(pool, service, "ping", msg="garbage")
            assert not isinstance(info.value, NotSentError)
            assert await call(pool, service, "ping", msg="again") == "again"
            with pytest.raises(BrokenError):
                await call(pool, service, "ping", msg="close")
            assert await call(pool, service, "ping", msg="and again") == "and again"
            assert server.accepted == 3
            assert pool.connections == 1
        finally:
            await pool.close()
            await server.stop()

    run(main())


def test_connect_refused_is_a_not_sent_connect_error(run: Any, service: ServiceInfo) -> None:
    async def main() -> None:
        pool = ConnectionPool("127.0.0.1", free_port(), ClientConfig(), size=2)
        try:
            results = await asyncio.gather(
                *(call(pool, service, "ping", msg="x") for _ in range(5)),
                return_exceptions=True,
            )
            for exc in results:
                assert isinstance(exc, ConnectError) and isinstance(exc, NotSentConnectError)
            assert pool.connections == 0 and pool.in_flight == 0
        finally:
            await pool.close()

    run(main())


def test_pool_is_bounded_by_size_times_max_in_flight(
    run: Any, fake_server: Any, service: ServiceInfo
) -> None:
    async def main() -> None:
        server = await fake_server().start()
        pool = ConnectionPool("127.0.0.1", server.port, ClientConfig(max_in_flight=2), size=2)
        try:
            assert await call(pool, service, "ping", msg="warm") == "warm"
            slow = []
            while pool.in_flight < 4:
                # only as many calls as the open connections take: the pool grows meanwhile
                if pool.in_flight < 2 * pool.connections:
                    slow.append(asyncio.ensure_future(call(pool, service, "sleep", millis=100)))
                await asyncio.sleep(0.002)
            with pytest.raises(Overloaded) as info:
                await call(pool, service, "ping", msg="one too many")
            assert isinstance(info.value, NotSentError)
            assert all(r == 100.0 for r in await asyncio.gather(*slow))
        finally:
            await pool.close()
            await server.stop()

    run(main())


def test_close_fails_pending_calls_and_refuses_new_ones(
    run: Any, fake_server: Any, service: ServiceInfo
) -> None:
    async def main() -> None:
        server = await fake_server().start()
        pool = ConnectionPool("127.0.0.1", server.port, ClientConfig(), size=4)
        try:
            slow = [
                asyncio.ensure_future(call(pool, service, "sleep", millis=2000)) for _ in range(20)
            ]
            await wait_until_async(lambda: len(server.received) == 20, WAIT)
            await pool.close()
            results = await asyncio.gather(*slow, return_exceptions=True)
            assert all(type(r) is ClosedError for r in results), results
            with pytest.raises(NotSentClosedError):
                await call(pool, service, "ping", msg="late")
            assert pool.is_closed and pool.connections == 0 and pool.in_flight == 0
            await pool.close()
        finally:
            await server.stop()

    run(main())  # the runner also checks that no task (a background connect) is left


def test_close_while_callers_wait_for_a_connect(run: Any, service: ServiceInfo) -> None:
    async def main() -> None:
        # A listener that never accepts: with its backlog full, connects hang until cancelled.
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", 0))
            listener.listen(0)
            port = listener.getsockname()[1]
            fillers = []
            for _ in range(8):
                s = socket.socket()
                s.setblocking(False)
                s.connect_ex(("127.0.0.1", port))  # EINPROGRESS, or a queued connection
                fillers.append(s)
            try:
                pool = ConnectionPool("127.0.0.1", port, ClientConfig(connect_timeout=5), size=2)
                waiting = [
                    asyncio.ensure_future(call(pool, service, "ping", msg="x")) for _ in range(3)
                ]
                # All three wait for the connect that cannot complete.
                await wait_until_async(lambda: pool.in_flight == 3, WAIT)
                await pool.close()
                results = await asyncio.gather(*waiting, return_exceptions=True)
                assert all(type(r) is NotSentClosedError for r in results), results
            finally:
                for s in fillers:
                    s.close()

    run(main())
