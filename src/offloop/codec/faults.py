"""The fault contract between offloop's tiers: each fault kind as a ``TApplicationException``.

A worker that cannot give a call its result answers with a standard Thrift
``TApplicationException``, so any Thrift client (Apache's included) sees a standard type and a
readable message. offloop's own clients must also know *which* fault it was (overloaded:
retry elsewhere; deadline exceeded: 504; crashed: the backend's fault...) without parsing
prose. The contract that makes both true:

- each :class:`FaultKind` has one standard type code (:data:`FAULT_TYPES`);
- the message starts with the kind's token and ``": "`` (``"overloaded: 2 workers busy and 8
  calls queued"``), and the rest is free text for people.

:func:`fault_exception` builds the exception a worker sends; :func:`fault_error` turns a
received one back into the typed error of :mod:`offloop.errors`. A ``TApplicationException``
that does not follow the contract (a foreign server's) becomes a plain
:class:`~offloop.errors.RemoteApplicationError` of kind :attr:`FaultKind.INTERNAL`, or
:class:`~offloop.errors.UnknownMethod` and :class:`~offloop.errors.RemoteBadRequest` by its
standard type alone.
"""

from __future__ import annotations

import enum

from thriftpy2.thrift import TApplicationException

from offloop.errors import (
    BackendCrashed,
    DeadlineExceeded,
    OffloopError,
    Overloaded,
    RemoteApplicationError,
    RemoteBadRequest,
    ShuttingDown,
    UnknownMethod,
)

__all__ = ["FAULT_TYPES", "FaultKind", "fault_error", "fault_exception", "fault_kind"]

_TAE = TApplicationException


class FaultKind(enum.Enum):
    """Why a worker could not give a call its result. The value is the message token."""

    #: Refused at admission, never run: every worker busy and the queue full.
    OVERLOADED = "overloaded"
    #: Refused, never run: the worker is draining before it stops.
    SHUTTING_DOWN = "shutting down"
    #: The call's deadline passed, queued or running.
    DEADLINE_EXCEEDED = "deadline exceeded"
    #: The process running the call died.
    CRASHED = "crashed"
    #: The service has no such method.
    UNKNOWN_METHOD = "unknown method"
    #: The call's arguments could not be decoded.
    BAD_REQUEST = "bad request"
    #: The handler failed (an undeclared exception, a result that breaks the IDL).
    INTERNAL = "internal error"


#: The standard ``TApplicationException`` type each kind is sent with.
FAULT_TYPES: dict[FaultKind, int] = {
    FaultKind.OVERLOADED: _TAE.INTERNAL_ERROR,
    FaultKind.SHUTTING_DOWN: _TAE.INTERNAL_ERROR,
    FaultKind.DEADLINE_EXCEEDED: _TAE.INTERNAL_ERROR,
    FaultKind.CRASHED: _TAE.INTERNAL_ERROR,
    FaultKind.UNKNOWN_METHOD: _TAE.UNKNOWN_METHOD,
    FaultKind.BAD_REQUEST: _TAE.PROTOCOL_ERROR,
    FaultKind.INTERNAL: _TAE.INTERNAL_ERROR,
}

_BY_TOKEN = {kind.value: kind for kind in FaultKind}

#: What a client sees of each kind (the detail goes to the log).
_PUBLIC = {
    FaultKind.OVERLOADED: "backend overloaded",
    FaultKind.SHUTTING_DOWN: "backend shutting down",
    FaultKind.DEADLINE_EXCEEDED: "deadline exceeded on the backend",
    FaultKind.CRASHED: "backend worker crashed",
    FaultKind.UNKNOWN_METHOD: "backend does not serve this method",
    FaultKind.BAD_REQUEST: "backend could not decode the call",
    FaultKind.INTERNAL: "backend error",
}


def fault_exception(kind: FaultKind, detail: str) -> TApplicationException:
    """The ``TApplicationException`` a worker sends for ``kind``.

    Args:
        kind: why the call has no result.
        detail: free text for people, after the kind's token.
    """
    return TApplicationException(FAULT_TYPES[kind], f"{kind.value}: {detail}")


def fault_kind(exc: TApplicationException) -> FaultKind | None:
    """The kind a received ``TApplicationException`` carries, or None if it does not follow
    the contract (its type and token must agree)."""
    message = exc.message or ""
    token, sep, _ = message.partition(": ")
    kind = _BY_TOKEN.get(token) if sep else None
    if kind is None or FAULT_TYPES[kind] != exc.type:
        return None
    return kind


def fault_error(exc: TApplicationException, *, where: str) -> OffloopError:
    """The typed error for a received ``TApplicationException``.

    Args:
        exc: what the peer sent.
        where: who sent it, for the log message (``"backend 10.0.0.7:9090"``).

    Returns:
        :class:`~offloop.errors.Overloaded`, :class:`~offloop.errors.ShuttingDown`,
        :class:`~offloop.errors.DeadlineExceeded`, :class:`~offloop.errors.BackendCrashed`,
        :class:`~offloop.errors.UnknownMethod`, :class:`~offloop.errors.RemoteBadRequest`, or
        :class:`~offloop.errors.RemoteApplicationError` for anything else.
    """
    kind = fault_kind(exc)
    text = exc.message or f"TApplicationException type {exc.type}"
    message = f"{where}: {text}"
    if kind is None:
        if exc.type == _TAE.UNKNOWN_METHOD:
            kind = FaultKind.UNKNOWN_METHOD
        elif exc.type == _TAE.PROTOCOL_ERROR:
            kind = FaultKind.BAD_REQUEST
        else:
            kind = FaultKind.INTERNAL
    public = _PUBLIC[kind]
    if kind is FaultKind.OVERLOADED:
        return Overloaded(message, public_message=public)
    if kind is FaultKind.SHUTTING_DOWN:
        return ShuttingDown(message, public_message=public)
    if kind is FaultKind.DEADLINE_EXCEEDED:
        return DeadlineExceeded(message, public_message=public)
    cls = {
        FaultKind.CRASHED: BackendCrashed,
        FaultKind.UNKNOWN_METHOD: UnknownMethod,
        FaultKind.BAD_REQUEST: RemoteBadRequest,
    }.get(kind, RemoteApplicationError)
    return cls(message, type=exc.type, public_message=public)
