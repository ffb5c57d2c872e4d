"""At start, the gateway logs one line per backend address that does not accept a connection,
naming its service and the address (issue 12, item 8)."""

from __future__ import annotations

import asyncio
import logging
import socket
from pathlib import Path

import pytest
from net import free_port

from offloop.app.gateway import report_unreachable
from offloop.gateway.config import GatewayConfig

IDL = str(Path(__file__).resolve().parents[2] / "src/offloop/demo/textlab.thrift")


def test_one_line_per_unreachable_backend_naming_its_service(
    caplog: pytest.LogCaptureFixture,
) -> None:
    closed_a, closed_b = free_port(), free_port()
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        open_port = listening.getsockname()[1]
        config = GatewayConfig(
            idl=IDL,
            backends={
                "Shop": (("127.0.0.1", closed_a), ("127.0.0.1", open_port)),
                "*": (("127.0.0.1", closed_b),),
            },
        )
        with caplog.at_level(logging.WARNING, logger="offloop"):
            lines = asyncio.run(report_unreachable(config, ["Shop", "Billing", "Stock"]))
    assert lines == [
        f"backend 127.0.0.1:{closed_a} of Shop is not reachable at start (connection refused); "
        "calls fail until it is",
        f"backend 127.0.0.1:{closed_b} of Billing, Stock is not reachable at start "
        "(connection refused); calls fail until it is",
    ]
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == lines


def test_nothing_is_logged_when_every_backend_answers(caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        port = listening.getsockname()[1]
        config = GatewayConfig(idl=IDL, backends={"*": (("127.0.0.1", port),)})
        with caplog.at_level(logging.WARNING, logger="offloop"):
            assert asyncio.run(report_unreachable(config, ["TextLab"])) == []
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
