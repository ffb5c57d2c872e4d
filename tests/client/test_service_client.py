"""Calling a worker by method name: offloop.Client (blocking) and offloop.AsyncClient, over
TCP against a real worker, with the same outcomes and errors."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import faulty
import pytest
from harness import ServerThread, running_worker, worker_config

from offloop import AsyncClient, Client, ClientConfig, LocalProtocolError, RemoteApplicationError

T = faulty._t


@pytest.fixture(scope="module", params=["binary", "compact"])
def worker(request: pytest.FixtureRequest) -> Iterator[ServerThread]:
    with running_worker(worker_config("thread", protocol=request.param)) as server:
        yield server


def _async(port: int, protocol: str, method: str, **args: Any) -> Any:
    async def main() -> Any:
        config = ClientConfig(protocol=protocol)  # type: ignore[arg-type]
        async with AsyncClient(faulty.IDL, "TextLab", f"127.0.0.1:{port}", config=config) as c:
            return await c.call(method, **args)

    return asyncio.run(main())


def _blocking(port: int, protocol: str, method: str, **args: Any) -> Any:
    config = ClientConfig(protocol=protocol)  # type: ignore[arg-type]
    with Client(faulty.IDL, "TextLab", ("127.0.0.1", port), config=config) as client:
        return client.call(method, **args)


@pytest.mark.parametrize("call", [_async, _blocking], ids=["async", "blocking"])
def test_values_declared_exceptions_and_faults(worker: ServerThread, call: Any) -> None:
    protocol = worker.config.protocol
    assert call(worker.port, protocol, "ping", msg="héllo") == "héllo"
    with pytest.raises(T.ParseError) as parse_error:
        call(worker.port, protocol, "parse", sentence="zzz")
    assert parse_error.value.unknown_words == ["x"]
    with pytest.raises(RemoteApplicationError, match="ValueError: boom"):
        call(worker.port, protocol, "ping", msg="raise")
    with pytest.raises(LocalProtocolError, match="no method 'nope'"):
        call(worker.port, protocol, "nope")
    with pytest.raises(LocalProtocolError, match="takes msg; not message"):
        call(worker.port, protocol, "ping", message="x")


def test_bad_address_is_refused_at_once() -> None:
    with pytest.raises(ValueError, match="host:port"):
        Client(faulty.IDL, "TextLab", "no-port")
