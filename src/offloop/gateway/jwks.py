"""The JSON Web Key Set of a JWT issuer: fetched off the loop, cached, refreshed when needed.

:meth:`JwksCache.key` answers the key of a ``kid`` from the cache. The set is fetched when
nothing is cached yet, when the cache is older than ``max_age``, or when a token names a
``kid`` the cache lacks (the issuer rotated its keys), but never twice within
``min_interval`` seconds: a stream of tokens with made-up ``kid`` values costs one fetch per
interval, not one per token. One fetch at a time: concurrent requests wait for the same one.
Only a request whose ``kid`` is not cached waits, and at most ``timeout`` seconds; a cached
``kid`` is answered at once while a stale set is refreshed in the background, so an issuer
that is down or slow never stalls requests with known keys.

The fetch (``urllib``, in a daemon thread, so the loop never blocks on the network) reads at
most :data:`MAX_JWKS_BYTES`. A failed fetch is logged and the keys fetched before stay in use.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
import urllib.request
from collections.abc import Callable
from typing import Any

__all__ = ["MAX_JWKS_BYTES", "JwksCache", "fetch_url"]

log = logging.getLogger("offloop.gateway.auth")

#: Largest JWKS document read: a set holds a handful of keys of a few KiB each.
MAX_JWKS_BYTES = 1024 * 1024


def fetch_url(url: str, timeout: float) -> bytes:
    """GET ``url`` (blocking; run off the loop) and return at most :data:`MAX_JWKS_BYTES`.

    Raises:
        OSError: the fetch failed or the document is too large.
    """
    request = urllib.request.Request(url, headers={"accept": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as reply:
        body: bytes = reply.read(MAX_JWKS_BYTES + 1)
    if len(body) > MAX_JWKS_BYTES:
        raise OSError(f"the JWKS is larger than {MAX_JWKS_BYTES} bytes")
    return body


def parse_jwks(body: bytes) -> dict[str, Any]:
    """The keys of a JWKS document, by ``kid`` (keys without one, or unusable, are skipped).

    Raises:
        ValueError: the document is not a JWKS.
    """
    import jwt

    data = json.loads(body)
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
        raise ValueError("not a JWKS: no 'keys' list")
    keys: dict[str, Any] = {}
    for entry in data["keys"]:
        if not isinstance(entry, dict) or not isinstance(entry.get("kid"), str):
            continue
        if entry.get("use", "sig") != "sig":
            continue
        try:
            keys[entry["kid"]] = jwt.PyJWK.from_dict(entry).key
        except (jwt.PyJWTError, ValueError, TypeError, KeyError) as exc:
            log.warning("JWKS key %r skipped: %s", entry["kid"], exc)
    return keys


class JwksCache:
    """The keys of a JWKS URL (see the module docstring).

    Args:
        url: where the JWKS is.
        min_interval: least seconds between two fetches.
        max_age: seconds a fetched set is used before it is fetched again.
        timeout: seconds one fetch may take.
        fetch: ``fetch(url, timeout) -> bytes``, blocking (tests may give their own).
        clock: the monotonic clock.
    """

    def __init__(
        self,
        url: str,
        *,
        min_interval: float,
        max_age: float,
        timeout: float,
        fetch: Callable[[str, float], bytes] = fetch_url,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self.min_interval = min_interval
        self.max_age = max_age
        self.timeout = timeout
        self._fetch = fetch
        self._clock = clock
        self._keys: dict[str, Any] = {}
        self._fetched_at: float | None = None  # last successful fetch
        self._tried_at: float | None = None  # last attempt
        self._pending: asyncio.Future[None] | None = None
        #: Fetches attempted (for tests and the log).
        self.fetches = 0

    async def key(self, kid: str) -> Any | None:
        """The key of ``kid``, fetching the set where the module docstring says.

        A cached ``kid`` is answered at once, a stale set being refreshed in the background;
        only an unknown ``kid`` waits for a fetch, and at most ``timeout`` seconds.
        """
        now = self._clock()
        key = self._keys.get(kid)
        if key is not None:
            stale = self._fetched_at is None or now - self._fetched_at >= self.max_age
            if stale and self._may_fetch(now):
                self._start_fetch()  # in the background: a down issuer stalls nobody
            return key
        if self._may_fetch(now):
            pending = self._start_fetch()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.timeout):
                    await asyncio.shield(pending)
        return self._keys.get(kid)

    def _may_fetch(self, now: float) -> bool:
        if self._pending is not None:
            return True  # join the fetch under way
        return self._tried_at is None or now - self._tried_at >= self.min_interval

    def _start_fetch(self) -> asyncio.Future[None]:
        """The fetch under way, started now if none is."""
        if self._pending is None:
            self._tried_at = self._clock()
            self.fetches += 1
            loop = asyncio.get_running_loop()
            self._pending = loop.create_future()
            threading.Thread(
                target=self._fetch_in_thread,
                args=(loop, self._pending),
                name="offloop-jwks-fetch",
                daemon=True,
            ).start()
        return self._pending

    def _fetch_in_thread(self, loop: asyncio.AbstractEventLoop, done: asyncio.Future[None]) -> None:
        keys: dict[str, Any] | None = None
        error: Exception | None = None
        try:
            keys = parse_jwks(self._fetch(self.url, self.timeout))
        except Exception as exc:  # any failure keeps the old keys; the loop logs it
            error = exc
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody waits
            loop.call_soon_threadsafe(self._fetched, done, keys, error)

    def _fetched(
        self, done: asyncio.Future[None], keys: dict[str, Any] | None, error: Exception | None
    ) -> None:
        if keys is not None:
            self._keys = keys
            self._fetched_at = self._clock()
            log.info("fetched the JWKS of %s: %d keys", self.url, len(keys))
        else:
            log.warning("could not fetch the JWKS of %s: %s", self.url, error)
        self._pending = None
        if not done.done():
            done.set_result(None)
