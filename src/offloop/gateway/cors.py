"""CORS: which browser origins may call the gateway, as headers (sans-I/O).

A browser asks before a cross-origin call that is not "simple" (a JSON body, an
``Authorization`` header): ``OPTIONS`` with ``Origin`` and ``Access-Control-Request-Method``.
:meth:`Cors.preflight` answers it (200, empty, with the allowed methods and headers, or 403 for an
origin not on the list) before authentication, since browsers send no credential with it.
Every other answer to an allowed origin gets :meth:`Cors.headers` (``Access-Control-Allow-
Origin`` and the headers a page may read, ``Retry-After``, ``WWW-Authenticate`` and
``X-Request-Id``); an origin
not on the list gets none, so the browser keeps the answer from the page.
"""

from __future__ import annotations

from collections.abc import Mapping

from offloop.gateway.config import CorsConfig

__all__ = ["ALLOWED_HEADERS", "ALLOWED_METHODS", "Cors"]

#: Methods a cross-origin page may use: those the gateway's routes take.
ALLOWED_METHODS = "GET, HEAD, POST"
#: Request headers a cross-origin page may send: those the gateway reads.
ALLOWED_HEADERS = "authorization, content-type, x-api-key, x-request-id, x-request-timeout"
#: Response headers a cross-origin page may read beyond the safe-listed ones.
EXPOSED_HEADERS = "retry-after, www-authenticate, x-request-id"


class Cors:
    """The CORS policy of ``config`` (see the module docstring)."""

    def __init__(self, config: CorsConfig) -> None:
        self._any = "*" in config.origins
        self._origins = frozenset(config.origins)
        self._credentials = config.credentials
        self._max_age = str(config.max_age)

    def allowed(self, origin: str) -> bool:
        """Whether pages of ``origin`` may call."""
        return self._any or origin in self._origins

    def headers(self, origin: str) -> list[tuple[str, str]]:
        """The headers of an answer to a request from ``origin``."""
        if not self.allowed(origin):
            return [("vary", "Origin")]
        found = [
            ("access-control-allow-origin", "*" if self._any else origin),
            ("access-control-expose-headers", EXPOSED_HEADERS),
        ]
        if not self._any:
            found.append(("vary", "Origin"))
        if self._credentials:
            found.append(("access-control-allow-credentials", "true"))
        return found

    @staticmethod
    def is_preflight(method: str, headers: Mapping[str, str]) -> bool:
        """Whether a request is a CORS preflight request."""
        if method != "OPTIONS":
            return False
        return "origin" in headers and "access-control-request-method" in headers

    def preflight(self, headers: Mapping[str, str]) -> tuple[int, list[tuple[str, str]]]:
        """The status and headers of the answer to a preflight request."""
        origin = headers["origin"]
        if not self.allowed(origin):
            return 403, [("vary", "Origin")]
        return 200, [
            *self.headers(origin),
            ("access-control-allow-methods", ALLOWED_METHODS),
            ("access-control-allow-headers", ALLOWED_HEADERS),
            ("access-control-max-age", self._max_age),
        ]
