"""What a call carries across the tiers beside its arguments: request id, deadline, principal.

Each is a context variable, set for the duration of one call wherever that call is being
served (an HTTP request in the gateway, a call in a worker's pool thread or child process),
and each travels between the tiers as a THeader *info header* (:mod:`offloop.codec.header`):

====================  =========================  ==========================================
context variable      info header                value on the wire
====================  =========================  ==========================================
:data:`REQUEST_ID`    ``offloop-request-id``     the id, :func:`valid_request_id` chars
:data:`DEADLINE`      ``offloop-deadline-ms``    milliseconds left, an integer >= 0:
                                                 *relative*, as the hosts' clocks differ
:data:`PRINCIPAL`     ``offloop-principal``      who the gateway authenticated (free text)
:data:`TRACE_HEADERS` ``traceparent``,           the W3C trace context of the client span
                      ``tracestate``             of the call (:mod:`offloop.tracing`)
====================  =========================  ==========================================

:data:`DEADLINE` holds a :func:`time.monotonic` value, which every process of one host shares
(Linux's ``CLOCK_MONOTONIC``), so a worker turns the header into it once, on arrival, and the
same value is good in its pool threads and child processes.

The principal sent is :data:`PRINCIPAL` if set, else the caller the gateway's front door
authenticated (:data:`offloop.identity.CALLER`, as ``kind:name``, e.g. ``key:alice``; none
for an ``address`` identity, i.e. with authentication off). A worker believes the header only
from a peer it trusts (mutual TLS, or ``trust_principal``: :mod:`offloop.worker.server`);
offloop's clients read every variable when they encode a call (:func:`outgoing_headers`)
and a worker sets them from what arrives (:func:`CallContext.from_headers`, then
:meth:`CallContext.applied`). Handlers read them with :func:`deadline`, :func:`time_left`,
:func:`check_deadline`, :func:`current_request_id` and :func:`current_principal`.

**Cancellation** (issue 13) is not an info header but a message of its own: a client that
gives up on a call sends ``offloop.cancel`` naming its seqid (:mod:`offloop.worker.server`).
A thread-pool handler sees it through :data:`CANCEL`, read with :func:`cancelled` and
:func:`check_deadline` (which raises for a cancelled call as for one past its deadline).

Adding an item (trace context) is one more entry in :data:`INFO_HEADERS`, one
more field of :class:`CallContext` and its two conversions below.

This module is a layer-0 module: it imports nothing of offloop but :mod:`offloop.errors` and
:mod:`offloop.identity`.
"""

from __future__ import annotations

import itertools
import math
import os
import re
import time
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Final

from offloop.errors import DeadlineExceeded
from offloop.identity import CALLER

__all__ = [
    "CANCEL",
    "DEADLINE",
    "DEADLINE_HEADER",
    "INFO_HEADERS",
    "MAX_REQUEST_ID_LENGTH",
    "PRINCIPAL",
    "PRINCIPAL_HEADER",
    "REQUEST_ID",
    "REQUEST_ID_HEADER",
    "TRACEPARENT_HEADER",
    "TRACESTATE_HEADER",
    "TRACE_HEADERS",
    "CallContext",
    "cancelled",
    "check_deadline",
    "current_principal",
    "current_request_id",
    "deadline",
    "new_request_id",
    "outgoing_headers",
    "request_id_for",
    "time_left",
    "valid_request_id",
]

#: The id of the request being served (HTTP ``X-Request-Id``), for logs and error bodies.
REQUEST_ID: ContextVar[str | None] = ContextVar("offloop_request_id", default=None)
#: The :func:`time.monotonic` value by which the call being served must be answered.
DEADLINE: ContextVar[float | None] = ContextVar("offloop_deadline", default=None)
#: Who the gateway authenticated for the request being served, as the worker received it (in
#: the gateway, :data:`offloop.identity.CALLER` is sent when this is not set).
PRINCIPAL: ContextVar[str | None] = ContextVar("offloop_principal", default=None)


#: Set once the caller of the call being served gave up (it cancelled, or its time ran out):
#: the pool thread running the call holds it while the handler runs; None elsewhere.
class CancelFlag:
    """Set once when a call's caller gives up; read by its handler's thread.

    A plain attribute (writes and reads of one are atomic in CPython): a
    :class:`threading.Event` would build a lock and a condition per call, and nobody waits on
    this flag, they only look at it.
    """

    __slots__ = ("_set",)

    def __init__(self) -> None:
        self._set = False

    def set(self) -> None:
        self._set = True

    def is_set(self) -> bool:
        return self._set


CANCEL: ContextVar[CancelFlag | None] = ContextVar("offloop_cancel", default=None)

REQUEST_ID_HEADER: Final = "offloop-request-id"
DEADLINE_HEADER: Final = "offloop-deadline-ms"
PRINCIPAL_HEADER: Final = "offloop-principal"
#: W3C Trace Context, under its HTTP header names (issue 13, trace context).
TRACEPARENT_HEADER: Final = "traceparent"
TRACESTATE_HEADER: Final = "tracestate"

#: The trace context headers (``traceparent``, ``tracestate``) of the call being made: set by
#: :mod:`offloop.tracing` around each attempt to reach a backend while tracing is on, and sent
#: by :func:`outgoing_headers`; None otherwise. A worker reads them from a call's
#: :attr:`CallContext.headers`.
TRACE_HEADERS: ContextVar[Mapping[str, str] | None] = ContextVar(
    "offloop_trace_headers", default=None
)

#: The info headers offloop reads and writes, and what each carries.
INFO_HEADERS: Final[Mapping[str, str]] = {
    REQUEST_ID_HEADER: "the request id",
    DEADLINE_HEADER: "milliseconds left before the caller gives up",
    PRINCIPAL_HEADER: "who the gateway authenticated",
    TRACEPARENT_HEADER: "the W3C trace context of the call's client span (tracing on)",
    TRACESTATE_HEADER: "the W3C vendor trace state that goes with it",
}

#: The longest request id accepted: a UUID is 36 characters, a W3C trace id 32; 128 leaves
#: room for ids of other systems and keeps every log line about a request short.
MAX_REQUEST_ID_LENGTH: Final = 128
#: Characters of a request id: letters, digits and a few marks; no space, quote, ``=`` or
#: control character, so an id can neither forge a log line nor break a header.
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:@/+-]+")
_valid_id = _REQUEST_ID.fullmatch
#: The longest deadline accepted from the wire, in ms (a day): a longer one is as good as none.
MAX_DEADLINE_MS: Final = 24 * 3600 * 1000
#: The most digits of a deadline accepted from the wire (more is garbage, not a long wait).
_MAX_MS_DIGITS: Final = 10


def valid_request_id(value: str | None) -> str | None:
    """``value`` if it is an acceptable request id (1 to :data:`MAX_REQUEST_ID_LENGTH`
    characters of ``A-Z a-z 0-9 . _ : @ / + -``), else None."""
    if value and len(value) <= MAX_REQUEST_ID_LENGTH and _REQUEST_ID.fullmatch(value):
        return value
    return None


#: The random half of the request ids this process makes (a forked child draws its own).
_ID_PREFIX = os.urandom(8).hex()
_ID_COUNT = itertools.count()


def _new_id_prefix() -> None:
    global _ID_PREFIX
    _ID_PREFIX = os.urandom(8).hex()


os.register_at_fork(after_in_child=_new_id_prefix)


def request_id_for(value: str | None) -> str:
    """The id of a request whose ``X-Request-Id`` is ``value``: it, if acceptable
    (:func:`valid_request_id`), else a new one."""
    return valid_request_id(value) or new_request_id()


def new_request_id() -> str:
    """A fresh request id: 32 hex digits, the process's random half then a count (unique
    across processes and hosts without the cost of a UUID per request; not a secret)."""
    return f"{_ID_PREFIX}{next(_ID_COUNT) & 0xFFFFFFFFFFFFFFFF:016x}"


def deadline() -> float | None:
    """The :func:`time.monotonic` value by which the current call must be answered, or None
    when it has no deadline (or no call is being served)."""
    return DEADLINE.get()


def time_left() -> float | None:
    """Seconds left before the current call's deadline (0 or less once it has passed), or
    None when it has no deadline."""
    at = DEADLINE.get()
    return None if at is None else at - time.monotonic()


def cancelled() -> bool:
    """Whether the caller of the current call gave up on it: it cancelled the call (the HTTP
    client disconnected, the gateway gave up) or stopped waiting for it. Seen by handlers in
    a thread pool; False outside a call."""
    event = CANCEL.get()
    return event is not None and event.is_set()


def check_deadline() -> None:
    """Raise :class:`~offloop.errors.DeadlineExceeded` if the current call's deadline has
    passed or its caller gave up on it (:func:`cancelled`): a long handler calls it now and
    then to stop work nobody waits for. The worker answers the call with the ``deadline
    exceeded`` fault (a cancelled call's answer is dropped: nobody waits for it).

    Raises:
        DeadlineExceeded: the deadline has passed, or the call was cancelled.
    """
    at = DEADLINE.get()
    if at is not None and time.monotonic() >= at:
        raise DeadlineExceeded("the call's deadline passed while its handler ran")
    event = CANCEL.get()
    if event is not None and event.is_set():
        raise DeadlineExceeded("the call's caller gave up on it while its handler ran")


def current_request_id() -> str | None:
    """The id of the request being served, or None."""
    return REQUEST_ID.get()


def current_principal() -> str | None:
    """Who the gateway authenticated for the request being served, or None."""
    return PRINCIPAL.get()


@dataclass(frozen=True, slots=True)
class CallContext:
    """The context of one call, as it arrived (worker) or as it leaves (client).

    Attributes:
        request_id: the request id, or None.
        deadline: a :func:`time.monotonic` value, or None.
        principal: the authenticated caller, or None.
        headers: every info header of the call as received (offloop's and any others),
            for handlers and later features; empty for a framed call.
    """

    request_id: str | None = None
    deadline: float | None = None
    principal: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict, hash=False)

    @classmethod
    def from_headers(cls, headers: Mapping[str, str], now: float) -> CallContext:
        """The context a call's info headers describe, received at ``now`` (monotonic).

        A request id that :func:`valid_request_id` refuses and a deadline that is not a
        plain non-negative integer are ignored (as if absent): they are the caller's data,
        and the call itself may still be good.
        """
        if not headers:
            return _EMPTY
        # A worker's hot path (every call in a header frame): no regex, no dataclass __init__.
        get = headers.get
        at: float | None = None
        ms = get(DEADLINE_HEADER)
        if ms is not None and len(ms) <= _MAX_MS_DIGITS and ms.isdigit() and ms.isascii():
            at = now + min(int(ms), MAX_DEADLINE_MS) / 1000
        rid = get(REQUEST_ID_HEADER)
        if rid is not None and (len(rid) > MAX_REQUEST_ID_LENGTH or not _valid_id(rid)):
            rid = None  # as valid_request_id
        context = _new(cls)
        _set_request_id(context, rid)
        _set_deadline(context, at)
        _set_principal(context, get(PRINCIPAL_HEADER))
        _set_headers(context, headers)
        return context

    def applied(self) -> AbstractContextManager[None]:
        """Set the context variables to this context while the block runs."""
        return _Applied(self)

    def expired(self, now: float) -> bool:
        """Whether the deadline has passed at ``now`` (monotonic)."""
        return self.deadline is not None and now >= self.deadline


class _Applied:
    """:meth:`CallContext.applied`: a class, not a ``contextlib.contextmanager`` generator,
    which cost a worker as much per call as decoding the call's header frame."""

    __slots__ = ("_context", "_tokens")

    def __init__(self, context: CallContext) -> None:
        self._context = context

    def __enter__(self) -> None:
        context = self._context
        self._tokens = (
            REQUEST_ID.set(context.request_id),
            DEADLINE.set(context.deadline),
            PRINCIPAL.set(context.principal),
        )

    def __exit__(self, *exc_info: object) -> None:
        request_id, deadline, principal = self._tokens
        PRINCIPAL.reset(principal)
        DEADLINE.reset(deadline)
        REQUEST_ID.reset(request_id)


_EMPTY: Final = CallContext()
_new = object.__new__


def _slot_setter(cls: type, name: str) -> Callable[[object, Any], None]:
    """The setter of slot ``name``, which a frozen dataclass's __setattr__ does not guard."""
    setter: Callable[[object, Any], None] = cls.__dict__[name].__set__
    return setter


_set_request_id = _slot_setter(CallContext, "request_id")
_set_deadline = _slot_setter(CallContext, "deadline")
_set_principal = _slot_setter(CallContext, "principal")
_set_headers = _slot_setter(CallContext, "headers")


def outgoing_headers(timeout: float | None, now: float) -> dict[str, str]:
    """The info headers of a call made now from the current context.

    Args:
        timeout: seconds the caller waits for the reply, or None; the deadline sent is the
            nearer of it and the current context's :data:`DEADLINE` (a handler calling
            another worker passes its own deadline on).
        now: :func:`time.monotonic` now.
    """
    headers: dict[str, str] = {}
    left = None if timeout is None else timeout
    at = DEADLINE.get()
    if at is not None:
        left = at - now if left is None else min(left, at - now)
    if left is not None and math.isfinite(left):
        # Rounded up: a call with 0.4 ms left still has time, and 0 means "none left".
        headers[DEADLINE_HEADER] = str(max(0, math.ceil(left * 1000)))
    request_id = REQUEST_ID.get()
    if request_id is not None:
        headers[REQUEST_ID_HEADER] = request_id
    principal = PRINCIPAL.get()
    if principal is None:
        caller = CALLER.get()
        # Item 2: an address is no authentication (auth off): no principal is sent.
        if caller is not None and caller.kind != "address":
            principal = str(caller)
    if principal is not None:
        headers[PRINCIPAL_HEADER] = principal
    trace = TRACE_HEADERS.get()
    if trace:
        headers.update(trace)
    return headers
