"""CORS in the gateway core: preflight answered before authentication, headers on the answers
to allowed origins only, nothing when off."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from configs import override
from stub_caller import StubCaller
from tokens import key_file

from offloop.demo.textlab import IDL_PATH
from offloop.gateway.config import CorsConfig, GatewayConfig
from offloop.gateway.core import Gateway, Request, Response
from offloop.idl import load_idl, service_info

IDL = str(IDL_PATH)
SERVICES = {"TextLab": service_info(load_idl(IDL), "TextLab")}
APP = "https://app.example.com"
KEY = "cors-key-0123456789"


def _run(config: GatewayConfig, *requests: Request) -> list[Response]:
    gateway = Gateway(config, SERVICES, StubCaller())

    async def main() -> list[Response]:
        await gateway.startup()
        try:
            return [await gateway.handle(r) for r in requests]
        finally:
            await gateway.shutdown(0)

    return asyncio.run(main())


def _config(**settings: Any) -> GatewayConfig:
    return override(GatewayConfig(idl=IDL, backends={"*": (("stub", 1),)}), **settings)


def _preflight(origin: str) -> Request:
    headers = {
        "origin": origin,
        "access-control-request-method": "POST",
        "access-control-request-headers": "authorization, content-type",
    }
    return Request("OPTIONS", "/rpc/TextLab/ping", headers)


def _ping(origin: str, **headers: str) -> Request:
    headers = {"content-type": "application/json", "origin": origin, **headers}
    return Request("POST", "/rpc/TextLab/ping", headers, b'{"msg": "hi"}')


def test_off_by_default() -> None:
    preflight, call = _run(_config(), _preflight(APP), _ping(APP))
    assert preflight.status == 405  # no CORS: OPTIONS is just a method not allowed
    assert call.status == 200
    assert not any(k.startswith("access-control-") for k, _ in call.headers)


def test_allowed_origin(tmp_path: Path) -> None:
    keys = key_file(tmp_path, {"app": (KEY, ["*"])})
    config = _config(cors_origin=(APP,), auth_api_keys=keys)
    preflight, call, refused = _run(
        config, _preflight(APP), _ping(APP, authorization=f"Bearer {KEY}"), _ping(APP)
    )
    # The preflight needs no credential (browsers send none with it).
    assert preflight.status == 200 and preflight.body == b""
    headers = dict(preflight.headers)
    assert headers["access-control-allow-origin"] == APP
    assert "POST" in headers["access-control-allow-methods"]
    assert "authorization" in headers["access-control-allow-headers"]
    assert "x-request-id" in headers["access-control-allow-headers"]  # item 16
    assert headers["access-control-max-age"] == "600"
    assert headers["vary"] == "Origin"
    assert call.status == 200
    assert dict(call.headers)["access-control-allow-origin"] == APP
    # A refusal carries the headers too, so the page can read its status and challenge.
    assert refused.status == 401
    refused_headers = dict(refused.headers)
    assert refused_headers["access-control-allow-origin"] == APP
    assert "www-authenticate" in refused_headers["access-control-expose-headers"]
    assert "x-request-id" in dict(call.headers)["access-control-expose-headers"]  # item 16


def test_other_origins_get_no_cors_headers() -> None:
    preflight, call = _run(
        _config(cors_origin=(APP,)),
        _preflight("https://evil.example"),
        _ping("https://evil.example"),
    )
    assert preflight.status == 403
    for response in (preflight, call):
        assert not any(k.startswith("access-control-") for k, _ in response.headers)
    assert call.status == 200  # not a browser's concern of ours: the page cannot read it


def test_any_origin_and_credentials() -> None:
    [call] = _run(_config(cors_origin=("*",)), _ping("https://anywhere.example"))
    assert dict(call.headers)["access-control-allow-origin"] == "*"
    [call] = _run(_config(cors_origin=(APP,), cors_credentials=True), _ping(APP))
    assert dict(call.headers)["access-control-allow-credentials"] == "true"


@pytest.mark.parametrize(
    "settings",
    [
        {"origins": ("app.example.com",)},
        {"origins": ("https://app.example.com/",)},
        {"origins": ("*",), "credentials": True},
        {"max_age": -1},
    ],
)
def test_bad_settings(settings: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        CorsConfig(**settings)
