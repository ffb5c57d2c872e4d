"""Authentication, limits per caller and CORS through real HTTP fronts (uvicorn and Tornado)
in front of a real worker: every refusal provoked over the wire, answered as specified, and
the gateway still serving afterwards."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from gates import Gate
from gateway_stack import GatewayFactory, Stack, worker_config
from tokens import AUDIENCE, ISSUER, Issuer, JwksServer, key_file
from waiting import wait_until

from offloop.gateway.config import AuthConfig

KEY = "front-key-0123456789abcdef"
OTHER_KEY = "other-key-0123456789abcdef"
INVALID = 'Bearer realm="offloop", error="invalid_token"'


@pytest.fixture(scope="module")
def issuer() -> Issuer:
    return Issuer()


def _bearer(credential: str) -> dict[str, str]:
    return {"authorization": f"Bearer {credential}"}


def _in_background(fn: Callable[[], httpx.Response]) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []

    def target() -> None:
        try:
            out.append(fn())
        except Exception as exc:
            out.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, out


def test_every_refusal_over_the_wire(
    gateway_factory: GatewayFactory, tmp_path: Path, issuer: Issuer
) -> None:
    pem = tmp_path / "issuer.pem"
    pem.write_bytes(issuer.public_pem("k1"))
    keys = key_file(tmp_path, {"billing": (KEY, ["TextLab.ping"])})
    auth = AuthConfig(
        api_keys=keys,
        jwt_key_file=str(pem),
        issuer=ISSUER,
        audience=AUDIENCE,
        scopes=("read=TextLab.ping",),
        close_metrics=True,
    )
    stack = gateway_factory(auth=auth)
    now = int(time.time())
    unsigned = issuer.token(alg="none")
    refusals: dict[str, dict[str, str]] = {
        "no credential": {},
        "bad key": _bearer("wrong-key-0123456789abcdef"),
        "expired": _bearer(issuer.token(exp=now - 60)),
        "wrong audience": _bearer(issuer.token(aud="other")),
        "wrong issuer": _bearer(issuer.token(iss="https://evil.test")),
        "not yet valid": _bearer(issuer.token(nbf=now + 3600)),
        "alg none": _bearer(unsigned),
        "another signer": _bearer(Issuer().token()),
    }
    for name, headers in refusals.items():
        r = stack.call("ping", {"msg": "x"}, headers=headers)
        assert r.status_code == 401, name
        assert r.headers["www-authenticate"].startswith('Bearer realm="offloop"'), name
        if headers:
            assert r.headers["www-authenticate"] == INVALID, name
        assert r.json()["error"]["code"] == 401
    forbidden = stack.call("burn", {"millis": 1}, headers=_bearer(KEY))
    assert forbidden.status_code == 403
    assert "insufficient_scope" in forbidden.headers["www-authenticate"]
    assert stack.call("burn", {"millis": 1}, headers=_bearer(issuer.token())).status_code == 403
    # Still serving, by key and by token; the probes open, /metrics closed.
    assert stack.call("ping", {"msg": "k"}, headers=_bearer(KEY)).json() == {"result": "k"}
    assert stack.call("ping", {"msg": "t"}, headers=_bearer(issuer.token())).status_code == 200
    assert stack.client.get("/healthz").status_code == 200
    assert stack.client.get("/readyz").status_code == 200
    assert stack.client.get("/metrics").status_code == 401
    assert stack.client.get("/metrics", headers=_bearer(KEY)).status_code == 200


@pytest.fixture
def jwks(issuer: Issuer) -> Iterator[JwksServer]:
    with JwksServer(issuer, ["k1"]) as server:
        yield server


@pytest.mark.parametrize("mode", ["loop"])
def test_jwks_refreshed_for_an_unknown_kid(
    gateway_factory: GatewayFactory, jwks: JwksServer, issuer: Issuer
) -> None:
    interval = 0.05
    auth = AuthConfig(
        jwks_url=jwks.url,
        issuer=ISSUER,
        audience=AUDIENCE,
        scopes=("read=*",),
        jwks_min_interval=interval,
    )
    stack = gateway_factory(auth=auth)
    assert stack.call("ping", {"msg": "x"}, headers=_bearer(issuer.token("k1"))).status_code == 200
    assert jwks.fetches == 1
    jwks.kids = ["k2"]  # the issuer rotates its key
    fetched = time.monotonic()
    wait_until(lambda: time.monotonic() - fetched > interval, timeout=5)
    r = stack.call("ping", {"msg": "y"}, headers=_bearer(issuer.token("k2")))
    assert r.status_code == 200 and r.json() == {"result": "y"}
    assert jwks.fetches == 2


def _limited_stack(stack_factory: Callable[[str, str], Stack], server: str, **config: Any) -> Stack:
    stack = stack_factory(server, "loop")
    worker = stack.start_worker(worker_config("thread"))
    stack.start_gateway([("127.0.0.1", worker.port)], **config)
    return stack


def test_rate_limit_429(stack_factory: Callable[[str, str], Stack], server: str) -> None:
    # Authentication off: the caller is the client's address (127.0.0.1 here).
    stack = _limited_stack(stack_factory, server, caller_rate=0.01, caller_burst=2)
    assert [stack.call("ping", {"msg": "x"}).status_code for _ in range(2)] == [200, 200]
    r = stack.call("ping", {"msg": "x"})
    assert r.status_code == 429
    assert int(r.headers["retry-after"]) >= 1
    assert r.json()["error"]["message"].startswith("rate limit")
    assert stack.client.get("/healthz").status_code == 200  # still serving


def test_inflight_cap_429(
    stack_factory: Callable[[str, str], Stack], server: str, tmp_path: Path
) -> None:
    keys = key_file(tmp_path, {"flood": (KEY, ["*"]), "calm": (OTHER_KEY, ["*"])})
    stack = _limited_stack(
        stack_factory, server, auth_api_keys=keys, caller_max_inflight=1, retry_after=2
    )
    gateway = stack.gateway
    assert gateway is not None
    with Gate(tmp_path) as gate:
        thread, out = _in_background(
            lambda: stack.call("ping", {"msg": gate.message}, headers=_bearer(KEY))
        )
        wait_until(lambda: gateway.inflight == 1, timeout=10)
        r = stack.call("ping", {"msg": "x"}, headers=_bearer(KEY))
        assert r.status_code == 429 and r.headers["retry-after"] == "2"
        assert not out, "the refusal waited for the held call"
        calm = stack.call("ping", {"msg": "calm"}, headers=_bearer(OTHER_KEY))
        assert calm.status_code == 200  # the other caller is served meanwhile
        gate.open()
        thread.join(30)
    assert out[0].status_code == 200 and out[0].json() == {"result": "opened"}
    assert stack.call("ping", {"msg": "x"}, headers=_bearer(KEY)).status_code == 200


def test_cors_preflight_and_headers(
    stack_factory: Callable[[str, str], Stack], server: str
) -> None:
    app = "https://app.example.com"
    stack = _limited_stack(stack_factory, server, cors_origin=(app,))
    preflight = stack.client.options(
        "/rpc/TextLab/ping",
        headers={
            "origin": app,
            "access-control-request-method": "POST",
            "access-control-request-headers": "content-type",
        },
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == app
    assert "POST" in preflight.headers["access-control-allow-methods"]
    r = stack.call("ping", {"msg": "x"}, headers={"origin": app})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == app
    r = stack.call("ping", {"msg": "x"}, headers={"origin": "https://evil.example"})
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers
