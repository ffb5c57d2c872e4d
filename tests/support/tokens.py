"""Credentials for the gateway's authentication tests, made in the test: RSA keys, JWTs, API
key files, and a JWKS served over HTTP on 127.0.0.1.

- :class:`Issuer` holds RSA keys by ``kid`` and signs tokens with the claims the gateway
  checks (``iss``, ``aud``, ``sub``, ``exp``), any of them overridden or removed.
- :class:`JwksServer` serves the issuer's public keys as a JWKS from a thread and counts the
  fetches; :meth:`JwksServer.close` stops it (use it as a context manager).
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from offloop.gateway.auth import key_line

__all__ = ["AUDIENCE", "ISSUER", "Issuer", "JwksServer", "key_file"]

ISSUER = "https://issuer.test"
AUDIENCE = "offloop-test"
#: Seconds a test token is valid: long enough for any slow test, short of real use.
LIFETIME = 600


class Issuer:
    """RSA signing keys by ``kid``, and tokens signed by them."""

    def __init__(self) -> None:
        self.keys: dict[str, rsa.RSAPrivateKey] = {}

    def key(self, kid: str) -> rsa.RSAPrivateKey:
        if kid not in self.keys:
            self.keys[kid] = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        return self.keys[kid]

    def public_pem(self, kid: str = "k1") -> bytes:
        return (
            self.key(kid)
            .public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )

    def jwk(self, kid: str) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(
            jwt.algorithms.RSAAlgorithm.to_jwk(self.key(kid).public_key())
        )
        data.update(kid=kid, use="sig", alg="RS256")
        return data

    def token(
        self,
        kid: str = "k1",
        *,
        alg: str = "RS256",
        headers: dict[str, Any] | None = None,
        signing_key: Any = None,
        **claims: Any,
    ) -> str:
        """A token of ``kid``'s key; ``claims`` override the defaults (``None`` removes one)."""
        now = int(time.time())
        body: dict[str, Any] = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": "alice",
            "iat": now,
            "exp": now + LIFETIME,
            "scope": "read",
        }
        body.update(claims)
        body = {k: v for k, v in body.items() if v is not None}
        key = signing_key if signing_key is not None else self.key(kid)
        if alg == "none":
            key = None  # an unsigned token
        return jwt.encode(body, key, algorithm=alg, headers={"kid": kid, **(headers or {})})


def key_file(directory: Path, entries: dict[str, tuple[str, list[str]]]) -> str:
    """Write an API key file of ``name -> (key, methods)``; its path."""
    path = directory / "api-keys"
    lines = ["# test keys"] + [key_line(n, k, m) for n, (k, m) in entries.items()]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


class JwksServer:
    """Serves ``kids``' public keys of ``issuer`` at ``/jwks.json`` on 127.0.0.1."""

    def __init__(self, issuer: Issuer, kids: list[str]) -> None:
        self.issuer = issuer
        self.kids = list(kids)
        self.fetches = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.fetches += 1
                body = json.dumps({"keys": [issuer.jwk(k) for k in server.kids]}).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return None

        self._http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(
            target=self._http.serve_forever, name="test-jwks", daemon=True
        )
        self._thread.start()
        self.url = f"http://127.0.0.1:{self._http.server_address[1]}/jwks.json"

    def close(self) -> None:
        self._http.shutdown()
        self._http.server_close()
        self._thread.join(10)

    def __enter__(self) -> JwksServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
