"""The front door: CORS, authentication and limits per caller, before a request is routed.

:meth:`Door.serve` wraps the gateway core's routing (:class:`~offloop.gateway.core.Gateway`
calls it from ``handle`` with its ``_route``), so both HTTP fronts and both modes share it. In
order:

1. CORS preflight (``OPTIONS`` with ``Origin`` and ``Access-Control-Request-Method``): answered
   here, 200 or 403 (:mod:`offloop.gateway.cors`); no credential is asked of it.
2. Authentication (:mod:`offloop.gateway.auth`): every path but ``/healthz``, ``/readyz``
   and the page ``/docs`` (and ``/metrics`` and ``/openapi.json`` unless closed by the config)
   needs a valid credential, else 401 with ``WWW-Authenticate``; a call
   (``/rpc/Service/method``) needs the right to call that method, else 403.
3. Limits per caller (:mod:`offloop.gateway.callers`), for calls only: 429 with
   ``Retry-After``. The caller is the authenticated identity, or the client's address.
4. The route itself, with the caller's identity in :data:`offloop.identity.CALLER`.

Then CORS headers are added to the answer of an allowed origin. With all three off,
:meth:`Door.serve` only awaits the route. Refusals are counted under the route ``refused``
(never the path a client made up) and logged at DEBUG with the reason the client is not told.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Generic, Protocol, TypeVar

from offloop.gateway.auth import Authenticator, Denial
from offloop.gateway.callers import CallerTable, Refusal, Ticket
from offloop.gateway.config import GatewayConfig
from offloop.gateway.cors import Cors
from offloop.identity import CALLER, Identity

__all__ = ["REFUSED_ROUTE", "Door"]

log = logging.getLogger("offloop.gateway.auth")

#: The route label of a request refused at the door (metrics).
REFUSED_ROUTE = "refused"
#: Paths answered without a credential whatever the config: probes must always work.
ALWAYS_OPEN = frozenset({"/healthz", "/readyz"})
#: Open routes that tell an authenticated caller more than anyone else (item 10: /readyz lists
#: the backends only to one, or with authentication off).
DETAILED_FOR_CALLERS = frozenset({"/readyz"})


def _has_credential(headers: Mapping[str, str]) -> bool:
    return "authorization" in headers or "x-api-key" in headers


_JSON = "application/json"


class RequestLike(Protocol):
    """What the door reads of a request (:class:`offloop.gateway.core.Request`)."""

    @property
    def method(self) -> str: ...
    @property
    def path(self) -> str: ...
    @property
    def headers(self) -> Mapping[str, str]: ...
    @property
    def client(self) -> str: ...


class ResponseLike(Protocol):
    """What the door reads of a response (:class:`offloop.gateway.core.Response`)."""

    @property
    def status(self) -> int: ...
    @property
    def body(self) -> bytes: ...
    @property
    def headers(self) -> list[tuple[str, str]]: ...


Q = TypeVar("Q", bound=RequestLike)
R = TypeVar("R", bound=ResponseLike)


class Door(Generic[R]):
    """CORS, authentication and limits per caller of ``config`` (see the module docstring).

    Args:
        config: the gateway's configuration (``auth``, ``callers``, ``cors``).
        response: makes a response from ``(status, body, headers)``.
        clock: the monotonic clock of the rate limit.

    Raises:
        ValueError: the key file or the PEM file cannot be read, or PyJWT is missing.
    """

    def __init__(
        self,
        config: GatewayConfig,
        response: Callable[[int, bytes, list[tuple[str, str]]], R],
        *,
        auth: Authenticator | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._response = response
        self._clock = clock
        if auth is None and config.auth.enabled:
            auth = Authenticator(config.auth)
        self.auth = auth
        self.callers = (
            CallerTable(config.callers, config.front.retry_after)
            if config.callers.enabled
            else None
        )
        self.cors = Cors(config.cors) if config.cors.origins else None
        self.active = self.auth is not None or self.callers is not None or self.cors is not None
        open_paths = set(ALWAYS_OPEN)
        if not config.auth.close_metrics:
            open_paths.add("/metrics")
        if not config.auth.close_docs:
            open_paths.add("/openapi.json")
        self._open = frozenset(open_paths)

    async def serve(
        self, request: Q, route: Callable[[Q], Awaitable[tuple[str, R]]]
    ) -> tuple[str, R, Identity | None]:
        """Answer ``request`` through ``route`` once it passed the door.

        Returns:
            the route's label, the response, and the caller (``None`` if unknown).
        """
        if not self.active:
            name, response = await route(request)
            return name, response, None
        cors = self.cors
        origin = request.headers.get("origin") if cors is not None else None
        if cors is not None and cors.is_preflight(request.method, request.headers):
            status, headers = cors.preflight(request.headers)
            return "preflight", self._response(status, b"", headers), None
        name, response, identity = await self._guarded(request, route)
        if origin is not None and cors is not None:
            response = self._response(
                response.status, response.body, [*response.headers, *cors.headers(origin)]
            )
        return name, response, identity

    def _needs_credential(self, path: str) -> bool:
        # The page /docs and its assets hold nothing of the API: they stay open, and the page
        # sends the credential typed in it for /openapi.json and the calls.
        if path in self._open or path == "/docs":
            return False
        return not path.startswith("/docs/")

    async def _guarded(
        self, request: Q, route: Callable[[Q], Awaitable[tuple[str, R]]]
    ) -> tuple[str, R, Identity | None]:
        path = request.path
        identity: Identity | None = None
        auth = self.auth
        if auth is not None and path in DETAILED_FOR_CALLERS and _has_credential(request.headers):
            # Item 10: open, but an authenticated caller is told more (the route reads CALLER).
            grant = await auth.authenticate(request.headers)
            if not isinstance(grant, Denial):
                identity = grant.identity
        elif auth is not None and self._needs_credential(path):
            grant = await auth.authenticate(request.headers)
            if isinstance(grant, Denial):
                # Item 12: the raw path and what the token said, quoted (%r): a control
                # character in them cannot forge a log line.
                log.debug("401 for %r %r: %r", request.method, path, grant.reason)
                headers = [("www-authenticate", grant.challenge)]
                return REFUSED_ROUTE, self._error(401, grant.message, headers), None
            identity = grant.identity
            if path.startswith("/rpc/"):
                service, _, method = path[5:].partition("/")
                if not grant.permissions.allows(service, method):
                    log.debug("403 for %r on %r", str(identity), path)
                    headers = [("www-authenticate", auth.forbidden_challenge)]
                    message = f"{identity.name} may not call {service}.{method}"
                    return REFUSED_ROUTE, self._error(403, message, headers), identity
        ticket: Ticket | None = None
        callers = self.callers
        if callers is not None and path.startswith("/rpc/") and request.method == "POST":
            if identity is None:
                identity = Identity(request.client or "unknown", "address")
            admitted = callers.admit(str(identity), self._clock())
            if isinstance(admitted, Refusal):
                headers = [("retry-after", str(admitted.retry_after))]
                response = self._error(admitted.status, admitted.message, headers)
                return REFUSED_ROUTE, response, identity
            ticket = admitted
        token = CALLER.set(identity)
        try:
            name, response = await route(request)
        finally:
            CALLER.reset(token)
            if ticket is not None and callers is not None:
                callers.release(ticket)
        return name, response, identity

    def _error(self, status: int, message: str, headers: list[tuple[str, str]]) -> R:
        body = json.dumps({"error": {"code": status, "message": message}}).encode()
        return self._response(status, body, [("content-type", _JSON), *headers])
