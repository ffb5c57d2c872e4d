"""The access log: one line per request through the gateway core, when it is on."""

from __future__ import annotations

import asyncio
import logging

import pytest
from stub_caller import StubCaller

from offloop.demo.textlab import IDL_PATH
from offloop.gateway.config import GatewayConfig
from offloop.gateway.core import Gateway, Request
from offloop.idl import load_idl, service_info
from offloop.logs import ACCESS_LOGGER

IDL = str(IDL_PATH)
SERVICES = {"TextLab": service_info(load_idl(IDL), "TextLab")}


def _requests(gateway: Gateway) -> None:
    async def main() -> None:
        await gateway.startup()
        try:
            json = {"content-type": "application/json"}
            await gateway.handle(Request("POST", "/rpc/TextLab/ping", json, b'{"msg": "x"}'))
            await gateway.handle(Request("GET", "/nowhere", {}))
        finally:
            await gateway.shutdown(0)

    asyncio.run(main())


@pytest.mark.parametrize("on", [True, False])
def test_one_line_per_request_when_on(on: bool, caplog: pytest.LogCaptureFixture) -> None:
    # What --access-log does: the access logger's level (see offloop.logs.configure_logging).
    caplog.set_level(logging.INFO if on else logging.WARNING, logger=ACCESS_LOGGER)
    config = GatewayConfig(idl=IDL, backends={"*": (("stub", 1),)})
    _requests(Gateway(config, SERVICES, StubCaller()))
    lines = [r.getMessage() for r in caplog.records if r.name == ACCESS_LOGGER]
    if on:
        assert len(lines) == 2
        assert lines[0].startswith("POST /rpc/TextLab/ping 200 ")
        assert lines[1].startswith("GET /nowhere 404 ")
    else:
        assert lines == []
