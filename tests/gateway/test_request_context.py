"""Request id, deadline and principal from the HTTP request to the handler, over THeader.

Real gateways (uvicorn and Tornado, loop and actor mode) in front of real workers (thread and
process pools) with ``context_handler:Handler``, whose ``ping("context")`` returns what the
handler sees.
"""

from __future__ import annotations

import io
import json
import logging
import re
from pathlib import Path

import pytest
from gateway_stack import GatewayFactory
from tokens import key_file

from offloop.context import MAX_REQUEST_ID_LENGTH
from offloop.logs import LogConfig, build_handler

HANDLER = {"handler": "context_handler:Handler"}


@pytest.mark.parametrize("pool", ["thread", "process"])
def test_the_request_id_reaches_the_handler_and_comes_back(
    gateway_factory: GatewayFactory, pool: str
) -> None:
    stack = gateway_factory(pool, worker=HANDLER)
    response = stack.call("ping", {"msg": "context"}, headers={"x-request-id": "client-id-1"})
    assert response.status_code == 200
    assert response.headers["x-request-id"] == "client-id-1"
    seen = json.loads(response.json()["result"])
    assert seen["request_id"] == "client-id-1"
    # The gateway's timeout (2 s in these stacks) travels as the deadline.
    assert seen["deadline"] is True
    assert 0 < seen["time_left"] <= 2.0


def test_a_missing_or_invalid_request_id_is_replaced(gateway_factory: GatewayFactory) -> None:
    stack = gateway_factory(worker=HANDLER)
    for headers in ({}, {"x-request-id": "bad id\\"}, {"x-request-id": "x" * 129}):
        response = stack.call("ping", {"msg": "context"}, headers=headers)
        rid = response.headers["x-request-id"]
        assert re.fullmatch(r"[0-9a-f]{32}", rid), rid
        assert json.loads(response.json()["result"])["request_id"] == rid
    longest = "y" * MAX_REQUEST_ID_LENGTH
    response = stack.call("ping", {"msg": "context"}, headers={"x-request-id": longest})
    assert response.headers["x-request-id"] == longest


def test_every_error_body_names_the_request(gateway_factory: GatewayFactory) -> None:
    stack = gateway_factory(worker=HANDLER)
    headers = {"x-request-id": "err-1"}
    answers = [
        stack.call("ping", {"msg": "raise"}, headers=headers),  # the handler fails: 502
        stack.call("parse", {"sentence": "zz"}, headers=headers),  # declared exception
        stack.call("nope", {}, headers=headers),  # unknown method: 404
        stack.call("ping", {"wrong": 1}, headers=headers),  # bad arguments: 400
        stack.client.get("/rpc/TextLab/ping", headers=headers),  # 405
    ]
    for response in answers:
        assert response.status_code >= 400, response.text
        assert response.headers["x-request-id"] == "err-1"
        assert response.json()["error"]["request_id"] == "err-1", response.text
    ok = stack.client.get("/healthz", headers=headers)
    assert ok.headers["x-request-id"] == "err-1"
    assert "request_id" not in ok.json()


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_log_lines_of_both_tiers_name_the_request(
    gateway_factory: GatewayFactory, fmt: str
) -> None:
    stack = gateway_factory(worker=HANDLER)  # a thread pool: its lines are this process's
    out = io.StringIO()
    handler = build_handler(LogConfig(format=fmt), stream=out)  # type: ignore[arg-type]
    loggers = [logging.getLogger("offloop.worker"), logging.getLogger("offloop.gateway")]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        response = stack.call("ping", {"msg": "raise"}, headers={"x-request-id": "logged-1"})
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
    assert response.status_code >= 500
    lines = [
        line
        for line in out.getvalue().splitlines()
        if "boom" in line and (fmt == "json" or re.match(r"\d{4}-\d\d-\d\d ", line))
    ]
    tiers = set()
    for line in lines:
        if fmt == "json":
            entry = json.loads(line)
            assert entry["request_id"] == "logged-1", line
            tiers.add(entry["logger"])
        else:
            assert line.endswith(" request_id=logged-1"), line
            tiers.add(line.split()[3].split("[")[0])
    assert tiers == {"offloop.worker", "offloop.gateway"}, out.getvalue()


def test_the_authenticated_caller_reaches_the_handler(
    gateway_factory: GatewayFactory, tmp_path: Path
) -> None:
    key = "k" * 32
    keys = key_file(tmp_path, {"alice": (key, ["TextLab.*"])})
    # Item 2: the worker believes the principal only from peers it trusts.
    stack = gateway_factory(worker={**HANDLER, "trust_principal": True}, auth_api_keys=keys)
    response = stack.call("ping", {"msg": "context"}, headers={"authorization": f"Bearer {key}"})
    assert response.status_code == 200, response.text
    assert json.loads(response.json()["result"])["principal"] == "key:alice"
    refused = stack.call("ping", {"msg": "context"})
    assert refused.status_code == 401
    assert refused.json()["error"]["request_id"] == refused.headers["x-request-id"]


def test_no_principal_is_sent_with_authentication_off(gateway_factory: GatewayFactory) -> None:
    # Item 2: an address identity authenticates nobody, so even a trusting worker sees none.
    stack = gateway_factory(worker={**HANDLER, "trust_principal": True})
    response = stack.call("ping", {"msg": "context"})
    assert response.status_code == 200, response.text
    assert json.loads(response.json()["result"])["principal"] is None
