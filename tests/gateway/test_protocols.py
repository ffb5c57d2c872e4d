"""The gateway speaks the worker's protocol: ``protocol`` is a client setting
(``offloop gateway --protocol compact``), on every front and in both modes."""

from __future__ import annotations

import pytest
from gateway_stack import GatewayFactory


@pytest.mark.parametrize("protocol", ["binary", "compact"])
def test_gateway_in_front_of_a_worker_of_either_protocol(
    gateway_factory: GatewayFactory, protocol: str
) -> None:
    stack = gateway_factory(worker={"protocol": protocol}, protocol=protocol)
    r = stack.call("ping", {"msg": "hi"})
    assert (r.status_code, r.json()) == (200, {"result": "hi"})
    r = stack.call("parse", {"sentence": "zzz"})
    assert r.status_code == 422 and r.json()["error"]["type"] == "ParseError"
