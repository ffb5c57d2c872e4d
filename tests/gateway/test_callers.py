"""Limits per caller: the token bucket, the cap on calls in flight, the bounded table (pure),
then through the gateway core (429 with ``Retry-After``, callers kept apart)."""

from __future__ import annotations

import asyncio
import json
from collections import OrderedDict
from pathlib import Path
from typing import Any

import pytest
from configs import override
from stub_caller import StubCaller
from tokens import key_file

from offloop.demo.textlab import IDL_PATH
from offloop.gateway.callers import CallerTable, Refusal, Ticket
from offloop.gateway.config import CallerLimits, GatewayConfig
from offloop.gateway.core import Gateway, Request, Response
from offloop.idl import MethodInfo, load_idl, service_info

IDL = str(IDL_PATH)
SERVICES = {"TextLab": service_info(load_idl(IDL), "TextLab")}
JSON = {"content-type": "application/json"}


# -- the table, pure -------------------------------------------------------------------------


def test_bucket_allows_burst_then_rate_and_says_when() -> None:
    table = CallerTable(CallerLimits(rate=2.0, burst=4))
    t = 100.0
    for _ in range(4):
        ticket = table.admit("a", t)
        assert isinstance(ticket, Ticket)
        table.release(ticket)
    refused = table.admit("a", t)
    assert refused == Refusal(429, "rate limit: 2 calls/s per caller", 1)
    assert isinstance(table.admit("b", t), Ticket)  # another caller is not touched
    assert isinstance(table.admit("a", t + 0.5), Ticket)  # one token back after 1/rate s
    assert isinstance(table.admit("a", t + 0.5), Refusal)


def test_retry_after_rounds_up_the_wait_for_a_token() -> None:
    table = CallerTable(CallerLimits(rate=0.1, burst=1))
    assert isinstance(table.admit("a", 0.0), Ticket)
    refused = table.admit("a", 2.0)
    assert isinstance(refused, Refusal) and refused.retry_after == 8  # 0.2 of 1 token: 8 s


def test_default_burst_is_the_rate_rounded_up() -> None:
    assert CallerLimits(rate=2.5).bucket == 3.0
    assert CallerLimits(rate=0.2).bucket == 1.0
    assert CallerLimits(rate=5, burst=20).bucket == 20.0


def test_inflight_cap_per_caller() -> None:
    table = CallerTable(CallerLimits(max_inflight=2), retry_after=3)
    first, second = table.admit("a", 0.0), table.admit("a", 0.0)
    assert isinstance(first, Ticket) and isinstance(second, Ticket)
    refused = table.admit("a", 0.0)
    assert isinstance(refused, Refusal) and refused.status == 429 and refused.retry_after == 3
    assert isinstance(table.admit("b", 0.0), Ticket)
    table.release(first)
    assert isinstance(table.admit("a", 0.0), Ticket)


def test_table_is_bounded_and_forgets_idle_callers_first() -> None:
    table = CallerTable(CallerLimits(rate=1.0, burst=1, max_inflight=1, max_tracked=3))
    busy = table.admit("busy", 0.0)  # holds a call in flight throughout
    assert isinstance(busy, Ticket)
    for name in ("a", "b"):
        ticket = table.admit(name, 0.0)
        assert isinstance(ticket, Ticket)
        table.release(ticket)
    assert len(table) == 3
    # Full: a new caller takes the place of the idle one used longest ago, never "busy".
    ticket = table.admit("c", 0.0)
    assert isinstance(ticket, Ticket)
    assert len(table) == 3
    assert isinstance(table.admit("busy", 0.0), Refusal)  # still tracked: still capped
    # With every entry busy, a new caller is refused 503.
    table2 = CallerTable(CallerLimits(max_inflight=1, max_tracked=1))
    assert isinstance(table2.admit("x", 0.0), Ticket)
    refused = table2.admit("y", 0.0)
    assert isinstance(refused, Refusal) and refused.status == 503


def test_callers_whose_bucket_refilled_are_dropped() -> None:
    table = CallerTable(CallerLimits(rate=10.0, burst=1))
    for n in range(100):
        ticket = table.admit(f"c{n}", float(n))  # one call each, a second apart
        assert isinstance(ticket, Ticket)
        table.release(ticket)
    assert len(table) <= 2  # each is dropped once its bucket is full again


@pytest.mark.parametrize(
    "settings", [{"rate": -1.0}, {"burst": -1}, {"max_inflight": -1}, {"max_tracked": 0}]
)
def test_limits_are_checked(settings: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        CallerLimits(**settings)


# -- through the core ------------------------------------------------------------------------


class HeldCaller(StubCaller):
    """Holds every ``ping("hold")`` until :attr:`release` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()
        self.held = 0

    async def call(
        self, service: str, method: MethodInfo, args: Any, *, timeout: float, idempotent: bool
    ) -> Any:
        if args.msg == "hold":
            self.held += 1
            await self.release.wait()
        return args.msg


def _ping(msg: str = "hi", client: str = "10.0.0.1", **headers: str) -> Request:
    body = json.dumps({"msg": msg}).encode()
    return Request("POST", "/rpc/TextLab/ping", {**JSON, **headers}, body, client)


def _retry_after(response: Response) -> int:
    return int(dict(response.headers)["retry-after"])


def test_rate_per_client_address_when_authentication_is_off() -> None:
    config = override(GatewayConfig(idl=IDL, backends={"*": (("stub", 1),)}), caller_rate=0.01)
    gateway = Gateway(config, SERVICES, StubCaller())

    async def main() -> list[Response]:
        await gateway.startup()
        try:
            return [
                await gateway.handle(_ping(client="10.0.0.1")),
                await gateway.handle(_ping(client="10.0.0.1")),
                await gateway.handle(_ping(client="10.0.0.2")),
                await gateway.handle(Request("GET", "/healthz", {}, b"", "10.0.0.1")),
            ]
        finally:
            await gateway.shutdown(0)

    first, second, other, health = asyncio.run(main())
    assert first.status == 200
    assert second.status == 429 and _retry_after(second) >= 1
    assert json.loads(second.body)["error"]["message"].startswith("rate limit")
    assert other.status == 200  # another address, its own bucket
    assert health.status == 200  # only calls are limited


def test_inflight_cap_per_api_key(tmp_path: Path) -> None:
    keys = key_file(
        tmp_path, {"flood": ("flood-key-0123456789", ["*"]), "calm": ("calm-key-0123456789", ["*"])}
    )
    config = override(
        GatewayConfig(idl=IDL, backends={"*": (("stub", 1),)}),
        auth_api_keys=keys,
        caller_max_inflight=2,
    )
    caller = HeldCaller()
    gateway = Gateway(config, SERVICES, caller)
    flood = {"authorization": "Bearer flood-key-0123456789"}
    calm = {"authorization": "Bearer calm-key-0123456789"}

    async def main() -> None:
        await gateway.startup()
        try:
            held = [asyncio.create_task(gateway.handle(_ping("hold", **flood))) for _ in range(2)]
            while caller.held < 2:
                await asyncio.sleep(0)
            over = await gateway.handle(_ping(**flood))
            assert over.status == 429 and _retry_after(over) >= 1
            assert "in flight" in json.loads(over.body)["error"]["message"]
            # Same address, another key: its own cap.
            assert (await gateway.handle(_ping(**calm))).status == 200
            caller.release.set()
            assert [r.status for r in await asyncio.gather(*held)] == [200, 200]
            assert (await gateway.handle(_ping(**flood))).status == 200  # served again
        finally:
            await gateway.shutdown(0)

    asyncio.run(main())


class _NoScan(OrderedDict[str, Ticket]):
    """A table that fails a test which walks all its entries."""

    def items(self) -> Any:
        raise AssertionError("the whole table was scanned")

    def values(self) -> Any:
        raise AssertionError("the whole table was scanned")


def test_making_room_never_scans_the_table() -> None:
    # Item 13: with every entry busy, each new caller cost a walk of the whole table.
    table = CallerTable(CallerLimits(max_inflight=1, max_tracked=500))
    busy = [table.admit(f"busy{n}", 0.0) for n in range(499)]
    idle = table.admit("idle", 0.0)
    assert isinstance(idle, Ticket) and all(isinstance(t, Ticket) for t in busy)
    table._entries = _NoScan(table._entries)
    for n in range(200):
        refused = table.admit(f"new{n}", 0.0)
        assert isinstance(refused, Refusal) and refused.status == 503
    table.release(idle)  # now free: the next new caller takes its place
    assert isinstance(table.admit("newest", 0.0), Ticket)
    assert len(table) == 500


def test_ipv6_addresses_of_one_slash_64_share_a_bucket() -> None:
    table = CallerTable(CallerLimits(rate=1.0, burst=1))
    first = table.admit("address:2001:db8:1:2::1", 0.0)
    assert isinstance(first, Ticket)
    table.release(first)
    # Another address of the same /64: the same caller, its token spent.
    assert isinstance(table.admit("address:2001:db8:1:2:ffff::9", 0.0), Refusal)
    assert isinstance(table.admit("address:2001:db8:1:3::1", 0.0), Ticket)  # another /64
    assert isinstance(table.admit("address:192.0.2.1", 0.0), Ticket)  # IPv4: as it is
    assert isinstance(table.admit("address:192.0.2.2", 0.0), Ticket)
