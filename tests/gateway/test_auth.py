"""Authentication in the gateway core: API keys, JWT bearer tokens (PEM file and JWKS), 401,
403, open and closed routes, the caller's identity in the context and in the access log.

These drive :meth:`Gateway.handle` directly over a stub caller (no HTTP server, no worker);
``test_auth_fronts.py`` provokes the same refusals through both HTTP fronts.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from configs import override
from stub_caller import StubCaller
from tokens import AUDIENCE, ISSUER, Issuer, JwksServer, key_file
from waiting import wait_until_async

from offloop.demo.textlab import IDL_PATH
from offloop.gateway.auth import (
    ApiKeys,
    Authenticator,
    Denial,
    Grant,
    KeyFileError,
    Permissions,
    hash_key,
    parse_key_file,
)
from offloop.gateway.config import AuthConfig, GatewayConfig
from offloop.gateway.core import Gateway, Request, Response
from offloop.gateway.jwks import JwksCache
from offloop.identity import Identity, current_caller
from offloop.idl import MethodInfo, load_idl, service_info
from offloop.logs import ACCESS_LOGGER

IDL = str(IDL_PATH)
SERVICES = {"TextLab": service_info(load_idl(IDL), "TextLab")}
JSON = {"content-type": "application/json"}
KEY = "k" * 8 + "-billing-0123456789"
ADMIN_KEY = "a" * 8 + "-admin-0123456789"


@pytest.fixture(scope="module")
def issuer() -> Issuer:
    return Issuer()


class Stub(StubCaller):
    """Answers ``ping`` with its message and ``burn`` with 7."""

    async def call(
        self, service: str, method: MethodInfo, args: Any, *, timeout: float, idempotent: bool
    ) -> Any:
        return getattr(args, "msg", 7)


def _gateway(caller: Any = None, **settings: Any) -> Gateway:
    config = override(GatewayConfig(idl=IDL, backends={"*": (("stub", 1),)}), **settings)
    return Gateway(config, SERVICES, caller or Stub())


def _run(gateway: Gateway, *requests: Request) -> list[Response]:
    async def main() -> list[Response]:
        await gateway.startup()
        try:
            return [await gateway.handle(r) for r in requests]
        finally:
            await gateway.shutdown(0)

    return asyncio.run(main())


def _call(method: str = "ping", headers: dict[str, str] | None = None) -> Request:
    body = b'{"msg": "hi"}' if method == "ping" else b'{"millis": 1}'
    return Request("POST", f"/rpc/TextLab/{method}", {**JSON, **(headers or {})}, body)


def _bearer(credential: str) -> dict[str, str]:
    return {"authorization": f"Bearer {credential}"}


def _error(response: Response) -> dict[str, Any]:
    payload: dict[str, Any] = json.loads(response.body)["error"]
    return payload


@pytest.fixture
def keys(tmp_path: Path) -> str:
    return key_file(
        tmp_path, {"billing": (KEY, ["TextLab.ping"]), "admin": (ADMIN_KEY, ["TextLab.*"])}
    )


# -- the key file ----------------------------------------------------------------------------


def test_key_file_lines_parse_and_match_in_constant_time_per_key() -> None:
    text = f"# comment\n\nbilling {hash_key(KEY)} TextLab.ping,Other.*\n"
    [entry] = parse_key_file(text)
    assert entry.name == "billing"
    assert entry.permissions.allows("TextLab", "ping")
    assert entry.permissions.allows("Other", "anything")
    assert not entry.permissions.allows("TextLab", "burn")
    table = ApiKeys([entry])
    assert table.find(KEY) is entry
    assert table.find(KEY + "x") is None
    assert table.find("") is None


@pytest.mark.parametrize(
    "line",
    [
        "billing sha256:abc TextLab.ping",  # short hash
        f"billing {hash_key(KEY)[7:]} TextLab.ping",  # no algorithm
        f"billing {hash_key(KEY)}",  # no methods
        f"billing {hash_key(KEY)} TextLab",  # not a pattern
        f"billing {hash_key(KEY)} Text*.ping",
        f"billing {hash_key(KEY)} *\nbilling {hash_key(ADMIN_KEY)} *",  # a name twice
    ],
)
def test_bad_key_file_lines_are_refused_with_their_line(line: str) -> None:
    with pytest.raises(KeyFileError, match=r"keys line \d"):
        parse_key_file(line, "keys")


def test_permissions_patterns() -> None:
    assert Permissions.parse(["*"]).allows("Any", "thing")
    p = Permissions.parse(["A.x", "B.*"])
    assert p.allows("A", "x") and p.allows("B", "y")
    assert not p.allows("A", "y") and not p.allows("C", "x")
    assert not Permissions().allows("A", "x")


# -- API keys through the core ---------------------------------------------------------------


def test_api_keys(keys: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=ACCESS_LOGGER)
    gateway = _gateway(auth_api_keys=keys)
    missing, bad, wrong_scheme, good, header_key, forbidden, admin, after = _run(
        gateway,
        _call(),
        _call(headers=_bearer("not-a-key-0123456789")),
        _call(headers={"authorization": f"Basic {KEY}"}),
        _call(headers=_bearer(KEY)),
        _call(headers={"x-api-key": KEY}),
        _call("burn", _bearer(KEY)),
        _call("burn", _bearer(ADMIN_KEY)),
        _call(headers=_bearer(KEY)),
    )
    assert missing.status == 401
    assert ("www-authenticate", 'Bearer realm="offloop"') in missing.headers
    assert _error(missing)["message"] == "authentication required"
    for refused in (bad, wrong_scheme):
        assert refused.status == 401
        challenge = 'Bearer realm="offloop", error="invalid_token"'
        assert ("www-authenticate", challenge) in refused.headers
        assert _error(refused)["message"] == "invalid credential"  # nothing about why
    assert good.status == 200 and json.loads(good.body) == {"result": "hi"}
    assert header_key.status == 200
    assert forbidden.status == 403
    assert any(k == "www-authenticate" and "insufficient_scope" in v for k, v in forbidden.headers)
    assert admin.status == 200
    assert after.status == 200  # still serving
    lines = [r.getMessage() for r in caplog.records if r.name == ACCESS_LOGGER]
    assert lines[0].startswith("POST /rpc/TextLab/ping 401 ") and "caller=" not in lines[0]
    assert lines[3].endswith("caller=key:billing")
    assert lines[5].startswith("POST /rpc/TextLab/burn 403 ")
    assert lines[6].endswith("caller=key:admin")


def test_probes_stay_open_and_metrics_and_docs_close_by_setting(keys: str) -> None:
    paths = ["/healthz", "/readyz", "/metrics", "/openapi.json", "/docs", "/docs/docs.js"]
    requests = [Request("GET", p, {}) for p in paths]
    opened = _run(_gateway(auth_api_keys=keys), *requests)
    assert [r.status for r in opened] == [200] * len(paths)
    closed = _run(
        _gateway(auth_api_keys=keys, auth_close_metrics=True, auth_close_docs=True), *requests
    )
    assert [r.status for r in closed] == [200, 200, 401, 401, 200, 200]
    with_key = [Request("GET", p, _bearer(KEY)) for p in paths]
    gateway = _gateway(auth_api_keys=keys, auth_close_metrics=True, auth_close_docs=True)
    assert [r.status for r in _run(gateway, *with_key)] == [200] * len(paths)


def test_unknown_routes_need_a_credential_first(keys: str) -> None:
    # Without a credential nobody learns which services and methods exist.
    nowhere, unknown = _run(
        _gateway(auth_api_keys=keys), Request("GET", "/nowhere", {}), _call("nope")
    )
    assert nowhere.status == 401 and unknown.status == 401


def test_the_identity_is_in_the_context_of_the_call(keys: str) -> None:
    seen: list[Identity | None] = []

    class Recording(Stub):
        async def call(
            self, service: str, method: MethodInfo, args: Any, *, timeout: float, idempotent: bool
        ) -> Any:
            seen.append(current_caller())
            return await super().call(service, method, args, timeout=timeout, idempotent=idempotent)

    [ok] = _run(_gateway(Recording(), auth_api_keys=keys), _call(headers=_bearer(KEY)))
    assert ok.status == 200
    assert seen == [Identity("billing", "key")]
    assert current_caller() is None  # reset after the call


def test_a_missing_key_file_fails_at_construction(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot read the API key file"):
        _gateway(auth_api_keys=str(tmp_path / "none"))


# -- JWT with a PEM file ---------------------------------------------------------------------


def _jwt_settings(tmp_path: Path, issuer: Issuer, **more: Any) -> dict[str, Any]:
    """Gateway settings for JWT signed by ``issuer``'s k1 (a PEM file); ``more``: AuthConfig
    fields."""
    pem = tmp_path / "issuer.pem"
    pem.write_bytes(issuer.public_pem("k1"))
    auth = AuthConfig(
        jwt_key_file=str(pem),
        issuer=ISSUER,
        audience=AUDIENCE,
        scopes=("read=TextLab.ping", "compute=TextLab.*"),
        **more,
    )
    return {"auth": auth}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _hs256(header: dict[str, Any], claims: dict[str, Any], secret: bytes) -> str:
    signed = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    signature = hmac.new(secret, signed.encode(), hashlib.sha256).digest()
    return f"{signed}.{_b64(signature)}"


def _bad_tokens(issuer: Issuer) -> dict[str, str]:
    now = int(time.time())
    other = Issuer()
    # The public key used as an HMAC secret: the "key confusion" attack. PyJWT will not
    # sign that, so the token is made by hand.
    hs = _hs256(
        {"alg": "HS256", "typ": "JWT", "kid": "k1"},
        {"iss": ISSUER, "aud": AUDIENCE, "sub": "eve", "exp": now + 600, "scope": "read"},
        issuer.public_pem("k1"),
    )
    unsigned = jwt.encode(
        {"iss": ISSUER, "aud": AUDIENCE, "sub": "eve", "exp": now + 600, "scope": "read"},
        None,
        algorithm="none",
    )
    return {
        "expired": issuer.token(exp=now - 60),
        "wrong audience": issuer.token(aud="someone-else"),
        "wrong issuer": issuer.token(iss="https://evil.test"),
        "not yet valid": issuer.token(nbf=now + 3600),
        "alg none": unsigned,
        "HS256 with the public key": hs,
        "another key": other.token("k1"),
        "no expiry": issuer.token(exp=None),
        "no subject": issuer.token(sub=None),
        "garbage": "eyJ.not.atoken",
        "tampered": issuer.token()[:-4] + "AAAA",
    }


#: What the log says (at DEBUG, never to the client) of each bad token of _bad_tokens.
REASONS = {
    "expired": "ExpiredSignature",
    "wrong audience": "InvalidAudience",
    "wrong issuer": "InvalidIssuer",
    "not yet valid": "ImmatureSignature",
    "alg none": "algorithm 'none' not allowed",
    "HS256 with the public key": "algorithm 'HS256' not allowed",
    "another key": "Signature verification failed",
    "no expiry": '"exp"',
    "no subject": '"sub"',
    "garbage": "malformed",
    "tampered": "Signature verification failed",
}


def test_jwt_from_a_pem_file(
    tmp_path: Path, issuer: Issuer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="offloop.gateway.auth")
    gateway = _gateway(**_jwt_settings(tmp_path, issuer))
    bad = _bad_tokens(issuer)
    responses = _run(
        gateway,
        _call(headers=_bearer(issuer.token())),
        *(_call(headers=_bearer(token)) for token in bad.values()),
        _call("burn", _bearer(issuer.token())),  # scope read: ping only
        _call("burn", _bearer(issuer.token(scope="compute"))),
        _call("burn", _bearer(issuer.token(scp=["read", "compute"], scope=None))),
        _call(headers=_bearer(issuer.token(scope="unknown"))),
        _call(headers=_bearer(issuer.token())),
    )
    ok, *refused, forbidden, compute, scp, unscoped, after = responses
    assert ok.status == 200
    for name, response in zip(bad, refused, strict=True):
        assert response.status == 401, name
        assert _error(response)["message"] == "invalid credential", name
        challenge = 'Bearer realm="offloop", error="invalid_token"'
        assert ("www-authenticate", challenge) in response.headers, name
    reasons = [r.getMessage() for r in caplog.records if r.getMessage().startswith("401 ")]
    assert len(reasons) == len(bad)
    for (name, fragment), reason in zip(REASONS.items(), reasons, strict=True):
        assert fragment in reason, (name, reason)
    assert forbidden.status == 403
    assert compute.status == 200 and scp.status == 200
    assert unscoped.status == 403
    assert after.status == 200


def _public_pem(key: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


async def _authenticate_all(auth: Authenticator, *tokens: str) -> list[Grant | Denial]:
    return [await auth.authenticate(_bearer(t)) for t in tokens]


def test_a_pem_file_of_mixed_key_types(tmp_path: Path, issuer: Issuer) -> None:
    # Item 4: an EC key before the RSA one (and the other way round) must not refuse tokens.
    from cryptography.hazmat.primitives.asymmetric import ec

    ec_key = ec.generate_private_key(ec.SECP256R1())
    for order in ((ec_key, issuer.key("k1")), (issuer.key("k1"), ec_key)):
        pem = tmp_path / "mixed.pem"
        pem.write_bytes(b"".join(_public_pem(k) for k in order))
        auth = Authenticator(
            AuthConfig(
                jwt_key_file=str(pem),
                issuer=ISSUER,
                audience=AUDIENCE,
                algorithms=("RS256", "ES256"),
                scopes=("read=TextLab.ping",),
            )
        )
        rs = issuer.token("k1")
        es = issuer.token("k1", alg="ES256", signing_key=ec_key)
        other = issuer.token("k2")  # a key not in the file

        granted, ec_granted, refused = asyncio.run(_authenticate_all(auth, rs, es, other))
        assert isinstance(granted, Grant) and isinstance(ec_granted, Grant)
        assert isinstance(refused, Denial)


def test_a_token_is_tried_against_a_bounded_number_of_keys(tmp_path: Path, issuer: Issuer) -> None:
    # Item 14: a file of many keys: the signer past MAX_PEM_KEYS_TRIED is never reached.
    from offloop.gateway.auth import MAX_PEM_KEYS_TRIED

    kids = [f"x{n}" for n in range(MAX_PEM_KEYS_TRIED)]
    pem = tmp_path / "many.pem"
    pem.write_bytes(b"".join(issuer.public_pem(k) for k in [*kids, "k1"]))
    auth = Authenticator(
        AuthConfig(jwt_key_file=str(pem), issuer=ISSUER, audience=AUDIENCE, scopes=("r=*",))
    )

    async def main() -> list[Grant | Denial]:
        return [await auth.authenticate(_bearer(issuer.token(k))) for k in ("x0", "k1")]

    first, past_the_cap = asyncio.run(main())
    assert isinstance(first, Grant)
    assert isinstance(past_the_cap, Denial)


def test_leeway_accepts_a_token_just_expired(tmp_path: Path, issuer: Issuer) -> None:
    token = issuer.token(exp=int(time.time()) - 5)
    strict = _gateway(**_jwt_settings(tmp_path, issuer))
    lenient = _gateway(**_jwt_settings(tmp_path, issuer, leeway=3600.0))
    assert _run(strict, _call(headers=_bearer(token)))[0].status == 401
    assert _run(lenient, _call(headers=_bearer(token)))[0].status == 200


def test_api_keys_and_jwt_together(tmp_path: Path, issuer: Issuer, keys: str) -> None:
    gateway = _gateway(**_jwt_settings(tmp_path, issuer, api_keys=keys))
    key, token, bad = _run(
        gateway,
        _call(headers=_bearer(KEY)),
        _call(headers=_bearer(issuer.token())),
        _call(headers=_bearer("x.y.z")),
    )
    assert (key.status, token.status, bad.status) == (200, 200, 401)


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        ({"jwt_key_file": "x.pem"}, "issuer and an audience"),
        ({"algorithms": ("none",)}, "not accepted"),
        ({"algorithms": ("HS256",)}, "not accepted"),
        (
            {"jwt_key_file": "x", "jwks_url": "https://x", "issuer": "i", "audience": "a"},
            "not both",
        ),
        ({"jwks_url": "file:///etc/passwd", "issuer": "i", "audience": "a"}, "http"),
        ({"scopes": ("read",)}, "SCOPE="),
    ],
)
def test_config_refuses_unsafe_or_incomplete_settings(settings: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        AuthConfig(**settings)


# -- JWT with a JWKS -------------------------------------------------------------------------


@pytest.fixture
def jwks(issuer: Issuer) -> Iterator[JwksServer]:
    with JwksServer(issuer, ["k1"]) as server:
        yield server


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _jwks_auth(url: str, clock: _Clock) -> Authenticator:
    config = AuthConfig(
        jwks_url=url,
        issuer=ISSUER,
        audience=AUDIENCE,
        scopes=("read=TextLab.ping",),
        jwks_min_interval=10.0,
        jwks_max_age=600.0,
    )
    cache = JwksCache(url, min_interval=10.0, max_age=600.0, timeout=5.0, clock=clock)
    return Authenticator(config, jwks=cache)


def test_jwks_fetched_once_then_again_for_an_unknown_kid(jwks: JwksServer, issuer: Issuer) -> None:
    clock = _Clock()
    auth = _jwks_auth(jwks.url, clock)

    async def check(token: str) -> Grant | Denial:
        return await auth.authenticate(_bearer(token))

    async def main() -> None:
        # Concurrent first requests share one fetch.
        first = await asyncio.gather(*(check(issuer.token("k1")) for _ in range(5)))
        assert all(isinstance(g, Grant) for g in first)
        assert jwks.fetches == 1
        assert isinstance(await check(issuer.token("k1")), Grant)
        assert jwks.fetches == 1  # cached
        # The issuer rotates to k2; a k2 token sooner than min_interval is refused unfetched.
        jwks.kids = ["k2"]
        assert isinstance(await check(issuer.token("k2")), Denial)
        assert jwks.fetches == 1
        clock.now += 10.0
        grant = await check(issuer.token("k2", sub="bob"))
        assert isinstance(grant, Grant) and grant.identity == Identity(
            "bob", "jwt", frozenset({"read"})
        )
        assert jwks.fetches == 2
        # A flood of made-up kids costs no fetch within the interval.
        for n in range(20):
            assert isinstance(await check(issuer.token(f"bogus{n}")), Denial)
        assert jwks.fetches == 2
        # k1 is gone from the set: refused.
        clock.now += 10.0
        assert isinstance(await check(issuer.token("k1")), Denial)
        assert jwks.fetches == 3
        # Past max_age the set is fetched again even for a known kid: in the background,
        # the request answered with the cached key meanwhile.
        clock.now += 600.0
        assert isinstance(await check(issuer.token("k2")), Grant)
        await wait_until_async(lambda: jwks.fetches == 4 and auth_idle(auth), 10.0)

    asyncio.run(main())


def auth_idle(auth: Authenticator) -> bool:
    """No JWKS fetch of ``auth`` under way."""
    cache = auth._tokens._jwks if auth._tokens is not None else None
    return cache is None or cache._pending is None


def test_a_stale_jwks_never_stalls_a_known_kid(issuer: Issuer) -> None:
    # Item 3: the issuer hangs; a cached kid is answered at once, an unknown one within
    # the fetch timeout (refused), and neither waits for the hung fetch.
    clock = _Clock()
    body = json.dumps({"keys": [issuer.jwk("k1")]}).encode()
    hang = threading.Event()
    release = threading.Event()
    calls: list[str] = []

    def fetch(url: str, timeout: float) -> bytes:
        calls.append(url)
        if hang.is_set():
            release.wait(30)
            raise OSError("issuer down")
        return body

    cache = JwksCache(
        "https://issuer/jwks",
        min_interval=10.0,
        max_age=600.0,
        timeout=0.05,
        fetch=fetch,
        clock=clock,
    )

    async def main() -> None:
        assert await cache.key("k1") is not None
        hang.set()
        clock.now += 700.0  # stale
        assert await cache.key("k1") is not None  # cached key, refresh started behind
        assert len(calls) == 2
        assert await cache.key("k1") is not None  # the hung fetch holds nobody
        assert await cache.key("k9") is None  # unknown: waits at most the timeout
        assert len(calls) == 2  # joined the fetch under way
        release.set()
        await wait_until_async(lambda: cache._pending is None, 10.0)
        assert await cache.key("k1") is not None  # the failed fetch kept the old keys

    try:
        asyncio.run(main())
    finally:
        release.set()


def test_jwks_down_keeps_the_keys_fetched_before(jwks: JwksServer, issuer: Issuer) -> None:
    clock = _Clock()
    auth = _jwks_auth(jwks.url, clock)

    async def main() -> None:
        assert isinstance(await auth.authenticate(_bearer(issuer.token("k1"))), Grant)
        jwks.close()
        clock.now += 700.0  # stale: a fetch is tried, fails, the old keys stay
        assert isinstance(await auth.authenticate(_bearer(issuer.token("k1"))), Grant)

    asyncio.run(main())


def test_jwks_through_the_gateway(jwks: JwksServer, issuer: Issuer) -> None:
    auth = AuthConfig(
        jwks_url=jwks.url, issuer=ISSUER, audience=AUDIENCE, scopes=("read=TextLab.ping",)
    )
    gateway = _gateway(auth=auth)
    ok, forbidden, unknown = _run(
        gateway,
        _call(headers=_bearer(issuer.token("k1"))),
        _call("burn", _bearer(issuer.token("k1"))),
        _call(headers=_bearer(issuer.token("k9"))),
    )
    assert (ok.status, forbidden.status, unknown.status) == (200, 403, 401)


# -- the OpenAPI document --------------------------------------------------------------------


def test_openapi_names_the_security_schemes(keys: str, tmp_path: Path, issuer: Issuer) -> None:
    from openapi_spec_validator import validate

    def document(gateway: Gateway) -> dict[str, Any]:
        request = Request("GET", "/openapi.json", {"authorization": f"Bearer {KEY}"})
        [response] = _run(gateway, request)
        assert response.status == 200
        payload: dict[str, Any] = json.loads(response.body)
        return payload

    plain = document(_gateway())
    assert "security" not in plain
    both = document(_gateway(**_jwt_settings(tmp_path, issuer, api_keys=keys)))
    validate(both)
    schemes = both["components"]["securitySchemes"]
    assert schemes["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
        "description": "A JWT bearer token (or an API key, sent the same way).",
    }
    assert schemes["apiKey"] == {"type": "apiKey", "in": "header", "name": "X-API-Key"}
    assert both["security"] == [{"bearer": []}, {"apiKey": []}]
    assert both["paths"]["/healthz"]["get"]["security"] == []
    assert "security" not in both["paths"]["/rpc/TextLab/ping"]["post"]  # the global one


def test_docs_page_has_a_credential_box() -> None:
    [page] = _run(_gateway(), Request("GET", "/docs", {}))
    assert b'id="credential"' in page.body


# -- offloop hash-key ------------------------------------------------------------------------


def test_hash_key_command_makes_a_line_of_the_key_file(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import io

    from offloop.cli import main

    monkeypatch.setattr("sys.stdin", io.StringIO(KEY + "\n"))
    assert main(["hash-key", "billing", "TextLab.ping", "TextLab.*"]) == 0
    [entry] = parse_key_file(capsys.readouterr().out)
    assert entry.name == "billing" and ApiKeys([entry]).find(KEY) is entry
    assert main(["hash-key", "--new", "ops"]) == 0
    out, err = capsys.readouterr()
    new = err.strip().splitlines()[-1]
    [entry] = parse_key_file(out)
    assert ApiKeys([entry]).find(new) is entry and entry.permissions.everything
    monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
    assert main(["hash-key", "x"]) == 2
    assert "at least 16" in capsys.readouterr().err


@pytest.mark.parametrize(
    "key", ["clé-très-secrète-0123", "with spaces 0123456789", "tab\tkey-0123456789"]
)
def test_hash_key_refuses_a_key_that_cannot_travel_in_a_header(
    key: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Item 26: a non-ASCII key would be hashed as UTF-8 but arrive decoded as Latin-1.
    import io

    from offloop.cli import main

    monkeypatch.setattr("sys.stdin", io.StringIO(key + "\n"))
    assert main(["hash-key", "x"]) == 2
    assert "printable ASCII" in capsys.readouterr().err


def test_refusals_log_the_raw_path_quoted(keys: str, caplog: pytest.LogCaptureFixture) -> None:
    # Item 12: a path (or a token's subject) with a line break cannot forge a log line.
    caplog.set_level(logging.DEBUG, logger="offloop.gateway.auth")
    gateway = _gateway(auth=AuthConfig(api_keys=keys))
    forged = "/rpc/TextLab/ping\n2026-01-01 INFO granted admin"
    [response] = _run(gateway, Request("POST", forged, dict(JSON), b'{"msg": "hi"}'))
    assert response.status == 401
    [line] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("401 ")]
    assert "\n" not in line and "\\n2026-01-01" in line


def test_readyz_lists_the_backends_only_to_an_authenticated_caller(keys: str) -> None:
    # Item 10: /readyz stays open to probes, but the backends' addresses are not for anyone.
    gateway = _gateway(auth=AuthConfig(api_keys=keys))
    anonymous, wrong, known = _run(
        gateway,
        Request("GET", "/readyz", {}),
        Request("GET", "/readyz", _bearer("x" * 32)),
        Request("GET", "/readyz", _bearer(KEY)),
    )
    assert json.loads(anonymous.body) == {"ready": True}
    assert json.loads(wrong.body) == {"ready": True}  # refused nothing, told nothing more
    assert "backends" in json.loads(known.body)
    assert anonymous.status == wrong.status == known.status == 200
    [open_gateway] = _run(_gateway(), Request("GET", "/readyz", {}))
    assert "backends" in json.loads(open_gateway.body)  # auth off: as before


def test_refused_methods_do_not_tell_which_methods_exist(keys: str) -> None:
    # Item 11: a method Tornado does not route is answered without the door; with
    # authentication on, an anonymous PROPFIND must not tell 405 (exists) from 404.
    guarded = _gateway(auth=AuthConfig(api_keys=keys))
    answers = {
        path: guarded.refuse_method(Request("PROPFIND", path, {}))
        for path in ("/rpc/TextLab/ping", "/rpc/TextLab/no_such_method", "/nowhere")
    }

    def told(response: Response) -> tuple[int, dict[str, Any], tuple[tuple[str, str], ...]]:
        """What a response tells, but for its own request id (each answer has a new one)."""
        error = json.loads(response.body)["error"]
        rid = error.pop("request_id")
        headers = tuple(h for h in response.headers if h != ("x-request-id", rid))
        assert len(headers) == len(response.headers) - 1  # the id is in both places
        return response.status, error, headers

    told_all = [told(r) for r in answers.values()]
    assert all(t == told_all[0] for t in told_all), told_all
    assert answers["/nowhere"].status == 405
    opened = _gateway()  # auth off: nothing to hide
    assert opened.refuse_method(Request("PROPFIND", "/rpc/TextLab/ping", {})).status == 405
    assert opened.refuse_method(Request("PROPFIND", "/nowhere", {})).status == 404
