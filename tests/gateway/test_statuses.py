"""The one error-to-status table, row by row, through the gateway core with a stub caller
(no sockets, no worker): each error a call can raise gives its status, Retry-After where the
call was refused, and the JSON error body."""

from __future__ import annotations

import asyncio
import json

import pytest
from stub_caller import StubCaller

from offloop.client.actors import ActorCrashed
from offloop.client.errors import NotSentConnectError, NotSentOverloaded
from offloop.demo.textlab import IDL_PATH
from offloop.errors import (
    BackendCrashed,
    BrokenError,
    ClosedError,
    DeadlineExceeded,
    EncodeError,
    LocalProtocolError,
    NoBackendError,
    OffloopError,
    Overloaded,
    PayloadTooLarge,
    PoolTimeout,
    RemoteApplicationError,
    RemoteBadRequest,
    RemoteProtocolError,
    ShuttingDown,
    TransportError,
    UnknownMethod,
)
from offloop.gateway.config import GatewayConfig
from offloop.gateway.core import Gateway, Request
from offloop.gateway.statuses import STATUS_TABLE, status_for
from offloop.idl import load_idl, service_info

IDL = str(IDL_PATH)
SERVICES = {"TextLab": service_info(load_idl(IDL), "TextLab")}


# Every row of the table, by an error that should land on it.
CASES: list[tuple[BaseException, int, bool]] = [
    (PayloadTooLarge("call of ping", 10, 5), 413, False),
    (LocalProtocolError("bad"), 400, False),
    (ActorCrashed("bug"), 500, False),
    (ShuttingDown("draining"), 503, True),
    (Overloaded("full"), 503, True),
    (NotSentOverloaded("connection full"), 503, True),
    (ClosedError("closed"), 503, True),
    (NoBackendError("nobody"), 503, True),
    (NotSentConnectError("refused"), 503, True),
    (PoolTimeout("slow"), 503, True),
    (DeadlineExceeded("late"), 504, False),
    (UnknownMethod("no such", type=1), 502, False),
    (RemoteBadRequest("cannot decode", type=7), 502, False),
    (BackendCrashed("died", type=6), 502, False),
    (RemoteApplicationError("failed", type=6), 502, False),
    (BrokenError("reset"), 502, False),
    (TransportError("failed"), 502, False),
    (RemoteProtocolError("garbage"), 502, False),
    (EncodeError("our bug"), 500, False),
    (OffloopError("ours"), 500, False),
    (RuntimeError("a bug"), 500, False),
]


def test_every_row_is_exercised() -> None:
    rows = {status_for(exc).error for exc, _, _ in CASES}
    assert rows >= {row.error for row in STATUS_TABLE}


def test_subclasses_come_before_their_bases() -> None:
    for i, row in enumerate(STATUS_TABLE):
        for later in STATUS_TABLE[i + 1 :]:
            assert not issubclass(later.error, row.error), (
                f"{later.error.__name__} is shadowed by {row.error.__name__}"
            )


@pytest.mark.parametrize(("error", "status", "retry_after"), CASES, ids=lambda v: repr(v)[:40])
def test_each_error_gets_its_status(error: BaseException, status: int, retry_after: bool) -> None:
    async def main() -> None:
        caller = StubCaller()
        config = GatewayConfig(idl=IDL, backends={"*": (("stub", 1),)})
        gateway = Gateway(config, SERVICES, caller)
        await gateway.startup()
        try:
            caller.error = error
            response = await gateway.handle(
                Request(
                    "POST",
                    "/rpc/TextLab/ping",
                    {"content-type": "application/json"},
                    b'{"msg": "x"}',
                )
            )
        finally:
            await gateway.shutdown(0)
        assert response.status == status
        headers = dict(response.headers)
        assert ("retry-after" in headers) is retry_after
        body = json.loads(response.body)
        assert body["error"]["code"] == status
        assert body["error"]["message"].startswith("TextLab.ping: ")

    asyncio.run(main())


def test_a_good_call_is_200_through_the_stub() -> None:
    async def main() -> None:
        gateway = Gateway(
            GatewayConfig(idl=IDL, backends={"*": (("stub", 1),)}), SERVICES, StubCaller()
        )
        await gateway.startup()
        response = await gateway.handle(
            Request(
                "POST", "/rpc/TextLab/ping", {"content-type": "application/json"}, b'{"msg":"hi"}'
            )
        )
        await gateway.shutdown(0)
        assert (response.status, json.loads(response.body)) == (200, {"result": "hi"})

    asyncio.run(main())
