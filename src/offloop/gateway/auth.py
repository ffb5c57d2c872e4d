"""Authentication: who a request comes from, and which methods they may call.

Two kinds of credential, both sent as ``Authorization: Bearer <credential>`` (an API key may
also come as ``X-API-Key: <key>``):

- **API keys**, from a file of hashed keys (:func:`parse_key_file`), one line per key::

      # NAME  HASH                   METHODS
      billing sha256:9f86d08...0f00a08 TextLab.ping,TextLab.count
      admin   sha256:2c26b46...7ae9    *

  A presented key is hashed once with SHA-256 and compared with every hash of the file by
  :func:`hmac.compare_digest`, without stopping at a match, so the time taken says nothing of
  which hash came close. SHA-256 rather than a slow password hash: the keys are random
  (``offloop hash-key --new`` draws 256 bits), so the hash cannot be reversed by guessing, and
  a slow hash would cost every request milliseconds of the loop for nothing.
- **JWT bearer tokens** (PyJWT, the ``auth`` extra): the header's ``alg`` must be in the
  allow-list (public-key algorithms only, so ``none`` and HMAC are refused whatever the
  token says), the signature must check against a key of the PEM file or of the JWKS, and
  ``exp``, ``iss``, ``aud`` and ``sub`` must be present and right (``nbf`` too, when given).
  The token's scopes (``scope``, space-separated, or ``scp``) map to the methods they allow
  (``AuthConfig.scopes``).

Method patterns are ``Service.method``, ``Service.*`` or ``*``.

:meth:`Authenticator.authenticate` answers a :class:`Grant` (who, and what they may call) or
a :class:`Denial`; it never says which part of a credential was wrong, beyond RFC 6750's
``invalid_token``. Only the JWKS fetch does I/O (:mod:`offloop.gateway.jwks`, off the loop).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from offloop.gateway.config import AuthConfig, parse_scope
from offloop.identity import Identity

if TYPE_CHECKING:
    from offloop.gateway.jwks import JwksCache

__all__ = [
    "KEY_HASH_PREFIX",
    "ApiKey",
    "ApiKeys",
    "Authenticator",
    "Denial",
    "Grant",
    "KeyFileError",
    "Permissions",
    "hash_key",
    "key_line",
    "new_key",
    "parse_key_file",
]

log = logging.getLogger("offloop.gateway.auth")

#: How a hash of the key file starts: the algorithm, so that another may follow one day.
KEY_HASH_PREFIX = "sha256:"
#: Random bytes in a key made by ``offloop hash-key --new``: 256 bits, beyond any guessing.
NEW_KEY_BYTES = 32
#: Shortest key ``hash-key`` accepts: a short key could be guessed through its fast hash.
MIN_KEY_LENGTH = 16
#: Most keys of ``--auth-jwt-key-file`` one token is checked against (those of its
#: algorithm's type, in file order): a signature check costs; a bad token costs at most this.
MAX_PEM_KEYS_TRIED = 8


class KeyFileError(ValueError):
    """A malformed line of the key file; the message names the file and the line."""


# -- method patterns -------------------------------------------------------------------------


@dataclass(frozen=True)
class Permissions:
    """The methods a caller may call.

    Attributes:
        everything: ``*`` was given.
        services: services whose every method is allowed (``Service.*``).
        methods: single methods allowed (``Service.method``).
    """

    everything: bool = False
    services: frozenset[str] = frozenset()
    methods: frozenset[str] = frozenset()

    @classmethod
    def parse(cls, patterns: Iterable[str]) -> Permissions:
        """From patterns ``Service.method``, ``Service.*`` or ``*``.

        Raises:
            ValueError: a pattern of another form.
        """
        everything = False
        services: set[str] = set()
        methods: set[str] = set()
        for pattern in patterns:
            if pattern == "*":
                everything = True
                continue
            service, dot, method = pattern.partition(".")
            if not dot or not service or not method or "." in method or "*" in service:
                raise ValueError(f"expected Service.method, Service.* or *, got {pattern!r}")
            if method == "*":
                services.add(service)
            elif "*" in method:
                raise ValueError(f"expected Service.method, Service.* or *, got {pattern!r}")
            else:
                methods.add(pattern)
        return cls(everything, frozenset(services), frozenset(methods))

    def __or__(self, other: Permissions) -> Permissions:
        return Permissions(
            self.everything or other.everything,
            self.services | other.services,
            self.methods | other.methods,
        )

    def allows(self, service: str, method: str) -> bool:
        """Whether ``Service.method`` may be called."""
        return self.everything or service in self.services or f"{service}.{method}" in self.methods


NOTHING = Permissions()


# -- API keys --------------------------------------------------------------------------------


def new_key() -> str:
    """A new random API key (URL-safe text of :data:`NEW_KEY_BYTES` random bytes)."""
    return secrets.token_urlsafe(NEW_KEY_BYTES)


def hash_key(key: str) -> str:
    """The hash of ``key`` as the key file holds it: ``sha256:`` and 64 hex digits."""
    return KEY_HASH_PREFIX + hashlib.sha256(key.encode()).hexdigest()


def key_line(name: str, key: str, methods: Iterable[str]) -> str:
    """One line of the key file for ``key``, called ``name``, allowed ``methods``.

    Raises:
        ValueError: a bad name, a key shorter than :data:`MIN_KEY_LENGTH` or not printable
            ASCII without spaces, or a bad pattern.
    """
    patterns = list(methods) or ["*"]
    Permissions.parse(patterns)
    if not name or any(c.isspace() for c in name) or name.startswith("#"):
        raise ValueError(f"a key's name must be one word, got {name!r}")
    if len(key) < MIN_KEY_LENGTH:
        raise ValueError(f"a key must have at least {MIN_KEY_LENGTH} characters")
    if not (key.isascii() and key.isprintable()) or any(c.isspace() for c in key):
        # Item 26: HTTP carries headers as bytes that servers decode as Latin-1 (or refuse),
        # so a key with other characters would never match its hash: refused here.
        raise ValueError(
            "a key must be printable ASCII without spaces (it travels in an HTTP header)"
        )
    return f"{name} {hash_key(key)} {','.join(patterns)}"


@dataclass(frozen=True)
class ApiKey:
    """One entry of the key file.

    Attributes:
        name: who holds the key (the identity of its calls).
        digest: the SHA-256 digest of the key.
        permissions: what it may call.
    """

    name: str
    digest: bytes = field(repr=False)
    permissions: Permissions


def parse_key_file(text: str, source: str = "key file") -> list[ApiKey]:
    """The keys of a key file's text; blank lines and ``#`` comments are skipped.

    Raises:
        KeyFileError: a malformed line, or a name given twice.
    """
    keys: list[ApiKey] = []
    names: set[str] = set()
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{source} line {number}"
        parts = line.split()
        if len(parts) != 3:
            raise KeyFileError(f"{where}: expected NAME HASH METHODS, got {len(parts)} fields")
        name, hashed, methods = parts
        hexdigest = hashed.removeprefix(KEY_HASH_PREFIX)
        if not hashed.startswith(KEY_HASH_PREFIX) or len(hexdigest) != 64:
            raise KeyFileError(f"{where}: the hash must be sha256: and 64 hex digits")
        try:
            digest = bytes.fromhex(hexdigest)
            permissions = Permissions.parse(methods.split(","))
        except ValueError as exc:
            raise KeyFileError(f"{where}: {exc}") from None
        if name in names:
            raise KeyFileError(f"{where}: the name {name!r} is given twice")
        names.add(name)
        keys.append(ApiKey(name, digest, permissions))
    return keys


class ApiKeys:
    """The keys of a key file, matched in constant time (see the module docstring)."""

    def __init__(self, keys: Iterable[ApiKey]) -> None:
        self._keys = tuple(keys)

    def __len__(self) -> int:
        return len(self._keys)

    def find(self, presented: str) -> ApiKey | None:
        """The entry of ``presented``, if it is a known key."""
        digest = hashlib.sha256(presented.encode("utf-8", "surrogateescape")).digest()
        found: ApiKey | None = None
        for key in self._keys:  # no early exit: the same work whichever key matches
            if hmac.compare_digest(digest, key.digest):
                found = key
        return found


# -- outcomes --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Grant:
    """An authenticated caller.

    Attributes:
        identity: who.
        permissions: what they may call.
    """

    identity: Identity
    permissions: Permissions


@dataclass(frozen=True)
class Denial:
    """No valid credential: 401, with the ``WWW-Authenticate`` challenge.

    Attributes:
        message: what the client is told.
        challenge: the ``WWW-Authenticate`` value.
        reason: what the log is told (never the client).
    """

    message: str
    challenge: str
    reason: str


# -- JWT -------------------------------------------------------------------------------------


def _jwt_module() -> Any:
    try:
        import jwt
    except ImportError:  # pragma: no cover - depends on the install
        raise ValueError("JWT bearer tokens need PyJWT: pip install 'offloop[auth]'") from None
    return jwt


def load_pem_keys(path: str) -> list[Any]:
    """The public keys of a PEM file (one or more ``PUBLIC KEY`` blocks or certificates).

    Raises:
        ValueError: the file holds no public key, or cannot be read.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    text = Path(path).read_bytes()
    keys: list[Any] = []
    marker = b"-----BEGIN "
    for block in text.split(marker)[1:]:
        pem = marker + block
        if pem.startswith(b"-----BEGIN CERTIFICATE-----"):
            keys.append(x509.load_pem_x509_certificate(pem).public_key())
        elif b"PUBLIC KEY-----" in pem.split(b"\n", 1)[0]:
            keys.append(load_pem_public_key(pem))
    if not keys:
        raise ValueError(f"{path}: no public key or certificate in the file")
    return keys


def _fits(alg: str, key: Any) -> bool:
    """Whether ``key`` (a public key of the PEM file) is of the type algorithm ``alg`` uses."""
    from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

    if alg.startswith(("RS", "PS")):
        return isinstance(key, rsa.RSAPublicKey)
    if alg.startswith("ES"):
        return isinstance(key, ec.EllipticCurvePublicKey)
    if alg == "EdDSA":
        return isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey)
    return True  # an algorithm of a later PyJWT: let it judge the key


def _scopes(claims: Mapping[str, Any]) -> frozenset[str]:
    raw = claims.get("scope", claims.get("scp", ()))
    if isinstance(raw, str):
        return frozenset(raw.split())
    if isinstance(raw, list):
        return frozenset(s for s in raw if isinstance(s, str))
    return frozenset()


class _TokenChecker:
    """Checks JWT bearer tokens against the keys of a PEM file or of a JWKS."""

    def __init__(self, config: AuthConfig, jwks: JwksCache | None) -> None:
        self._jwt = _jwt_module()
        self._config = config
        self._algorithms = list(config.algorithms)
        self._pem = load_pem_keys(config.jwt_key_file) if config.jwt_key_file else []
        self._jwks = jwks
        scopes: dict[str, Permissions] = {}
        for text in config.scopes:
            scope, pattern = parse_scope(text)
            scopes[scope] = scopes.get(scope, NOTHING) | Permissions.parse([pattern])
        self._scopes = scopes

    async def check(self, token: str) -> Grant | str:
        """The grant of a valid token, or why it is not valid (for the log)."""
        jwt = self._jwt
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            return f"malformed token ({exc})"
        alg = header.get("alg")
        if alg not in self._algorithms:
            return f"algorithm {alg!r} not allowed"
        if self._jwks is not None:
            kid = header.get("kid")
            if not isinstance(kid, str):
                return "token without a kid"
            key = await self._jwks.key(kid)
            if key is None:
                return f"no key {kid!r} in the JWKS"
            candidates = [key]
        else:
            # Item 4: only the keys of the algorithm's type, and a bounded number of them.
            candidates = [k for k in self._pem if _fits(alg, k)][:MAX_PEM_KEYS_TRIED]
        reason = f"no key of the file fits {alg!r}"
        for key in candidates:
            try:
                claims = jwt.decode(
                    token,
                    key,
                    algorithms=self._algorithms,
                    audience=self._config.audience,
                    issuer=self._config.issuer,
                    leeway=self._config.leeway,
                    options={"require": ["exp", "iss", "aud", "sub"]},
                )
            except (jwt.InvalidSignatureError, jwt.InvalidKeyError, TypeError, ValueError) as exc:
                # The signature is checked before the claims: another key of the file may
                # have signed it (a key the algorithm cannot use is skipped likewise).
                reason = f"{type(exc).__name__}: {exc}"
                continue
            except jwt.PyJWTError as exc:
                return f"{type(exc).__name__}: {exc}"
            subject = claims.get("sub")
            if not isinstance(subject, str) or not subject:
                return "no subject"
            scopes = _scopes(claims)
            permissions = NOTHING
            for scope in scopes:
                permissions = permissions | self._scopes.get(scope, NOTHING)
            return Grant(Identity(subject, "jwt", scopes), permissions)
        return reason


# -- the authenticator -----------------------------------------------------------------------


class Authenticator:
    """Finds the caller of a request from its headers.

    Args:
        config: what credentials are accepted.
        keys: the API keys; ``None`` reads ``config.api_keys`` (at construction).
        jwks: the JWKS cache, when ``config.jwks_url`` is given; ``None`` makes one.

    Raises:
        ValueError: the key file or the PEM file is missing or malformed, or PyJWT is not
            installed for JWT.
    """

    def __init__(
        self, config: AuthConfig, keys: ApiKeys | None = None, jwks: JwksCache | None = None
    ) -> None:
        self.config = config
        if keys is None and config.api_keys:
            try:
                text = Path(config.api_keys).read_text()
            except OSError as exc:
                raise ValueError(f"cannot read the API key file: {exc}") from None
            keys = ApiKeys(parse_key_file(text, config.api_keys))
        self._keys = keys
        self._tokens: _TokenChecker | None = None
        if config.jwt:
            if jwks is None and config.jwks_url:
                from offloop.gateway.jwks import JwksCache

                jwks = JwksCache(
                    config.jwks_url,
                    min_interval=config.jwks_min_interval,
                    max_age=config.jwks_max_age,
                    timeout=config.jwks_timeout,
                )
            self._tokens = _TokenChecker(config, jwks)
        realm = f'Bearer realm="{config.realm}"'
        self._missing = Denial("authentication required", realm, "no credential")
        self._invalid_challenge = f'{realm}, error="invalid_token"'
        self.forbidden_challenge = f'{realm}, error="insufficient_scope"'

    async def authenticate(self, headers: Mapping[str, str]) -> Grant | Denial:
        """Who sent ``headers`` (names in lower case), or why nobody known did."""
        credential = ""
        authorization = headers.get("authorization")
        if authorization is not None:
            scheme, _, credential = authorization.strip().partition(" ")
            if scheme.lower() != "bearer" or not credential.strip():
                return self._denied("not a bearer credential")
            credential = credential.strip()
        else:
            credential = headers.get("x-api-key", "").strip()
            if not credential:
                return self._missing
            if self._keys is None:
                return self._denied("an API key, but none are configured")
        if self._tokens is not None and credential.count(".") == 2:
            outcome = await self._tokens.check(credential)
            if isinstance(outcome, Grant):
                return outcome
            return self._denied(outcome)
        if self._keys is not None:
            key = self._keys.find(credential)
            if key is not None:
                return Grant(Identity(key.name, "key"), key.permissions)
            return self._denied("unknown API key")
        return self._denied("not a JWT")

    def _denied(self, reason: str) -> Denial:
        return Denial("invalid credential", self._invalid_challenge, reason)


# -- the OpenAPI document ---------------------------------------------------------------------

#: Paths of the OpenAPI document that need no credential whatever the config.
_OPEN_OPERATIONS = ("/healthz", "/readyz")


def document_security(document: dict[str, Any], config: AuthConfig) -> dict[str, Any]:
    """``document`` (an OpenAPI document of :func:`~offloop.gateway.openapi.build_openapi`)
    with the security schemes ``config`` accepts, so that a client generator or an
    "Authorize" button knows how to send a credential; unchanged when authentication is off.

    The document is changed in place and returned.
    """
    if not config.enabled:
        return document
    schemes: dict[str, Any] = {}
    if config.jwt:
        schemes["bearer"] = {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "JWT",
            "description": "A JWT bearer token (or an API key, sent the same way).",
        }
    if config.api_keys:
        schemes.setdefault(
            "bearer",
            {"type": "http", "scheme": "bearer", "description": "An API key."},
        )
        schemes["apiKey"] = {"type": "apiKey", "in": "header", "name": "X-API-Key"}
    document.setdefault("components", {})["securitySchemes"] = schemes
    document["security"] = [{name: []} for name in schemes]
    open_paths = list(_OPEN_OPERATIONS)
    if not config.close_metrics:
        open_paths.append("/metrics")
    for path in open_paths:
        for operation in document.get("paths", {}).get(path, {}).values():
            if isinstance(operation, dict):
                operation["security"] = []
    return document
