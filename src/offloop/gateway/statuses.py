"""The one table from errors to HTTP statuses. No other module knows a status for an error.

:func:`status_for` walks :data:`STATUS_TABLE` in order and takes the first row whose class the
error is an instance of, so subclasses come before their bases. Declared Thrift exceptions are
not here: they are the IDL's, and get ``422`` or the status configured for their type
(``GatewayConfig.exception_status``).

=============================  ======  ===========  =========================================
error                          status  Retry-After  why
=============================  ======  ===========  =========================================
``PayloadTooLarge``            413                  the caller sent (or built) too much
``LocalProtocolError``         400                  the caller's input is wrong
``ActorCrashed``               500                  a bug of ours; the backend is not to blame
``ShuttingDown``               503     yes          refused, not run: try again later
``Overloaded``                 503     yes          refused, not run: try again later
``ClosedError``                503     yes          we are shutting down
``ConnectError``               503     yes          no backend reachable (``NoBackendError``)
``PoolTimeout``                503     yes          no connection in time
``DeadlineExceeded``           504                  no answer in time
``UnknownMethod``              502                  the tiers' IDLs differ
``RemoteBadRequest``           502                  the tiers' IDLs differ
``BackendCrashed``             502                  the backend's worker died mid-call
``RemoteApplicationError``     502                  the backend failed
``TransportError``             502                  the connection failed mid-call
``RemoteProtocolError``        502                  the backend sent garbage
``OffloopError``               500                  our fault (``EncodeError`` among them)
anything else                  500                  a bug
=============================  ======  ===========  =========================================
"""

from __future__ import annotations

from dataclasses import dataclass

from offloop.client.actors import ActorCrashed
from offloop.errors import (
    BackendCrashed,
    ClosedError,
    ConnectError,
    DeadlineExceeded,
    LocalProtocolError,
    OffloopError,
    Overloaded,
    PayloadTooLarge,
    PoolTimeout,
    RemoteApplicationError,
    RemoteBadRequest,
    RemoteProtocolError,
    ShuttingDown,
    TransportError,
    UnknownMethod,
)

__all__ = ["STATUS_TABLE", "StatusRow", "status_for"]


@dataclass(frozen=True, slots=True)
class StatusRow:
    """One row of the table.

    Attributes:
        error: the error class the row matches (and its subclasses).
        status: the HTTP status.
        retry_after: whether the response carries ``Retry-After`` (the call was not run and
            may succeed later).
    """

    error: type[BaseException]
    status: int
    retry_after: bool = False


STATUS_TABLE: tuple[StatusRow, ...] = (
    StatusRow(PayloadTooLarge, 413),
    StatusRow(LocalProtocolError, 400),
    StatusRow(ActorCrashed, 500),
    StatusRow(ShuttingDown, 503, retry_after=True),
    StatusRow(Overloaded, 503, retry_after=True),
    StatusRow(ClosedError, 503, retry_after=True),
    StatusRow(ConnectError, 503, retry_after=True),
    StatusRow(PoolTimeout, 503, retry_after=True),
    StatusRow(DeadlineExceeded, 504),
    StatusRow(UnknownMethod, 502),
    StatusRow(RemoteBadRequest, 502),
    StatusRow(BackendCrashed, 502),
    StatusRow(RemoteApplicationError, 502),
    StatusRow(TransportError, 502),
    StatusRow(RemoteProtocolError, 502),
    StatusRow(OffloopError, 500),
)

_FALLBACK = StatusRow(BaseException, 500)


def status_for(exc: BaseException) -> StatusRow:
    """The first row of :data:`STATUS_TABLE` that ``exc`` is an instance of (500 if none)."""
    for row in STATUS_TABLE:
        if isinstance(exc, row.error):
            return row
    return _FALLBACK
