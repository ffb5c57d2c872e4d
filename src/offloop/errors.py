"""The errors offloop raises, arranged by who is at fault.

One root, :class:`OffloopError`, whose :attr:`~OffloopError.blame` says who is at fault:

- :attr:`Blame.CALLER`: whoever made the call got something wrong (bad arguments, a body or
  call over a limit, a method the backend does not serve).
- :attr:`Blame.BACKEND`: the backend, or the network to it, failed or refused: it sent
  garbage, went away, was full, crashed, or took too long.
- :attr:`Blame.OFFLOOP`: offloop itself: a bug, or a part of it that was closed by us.

Below the root:

- :class:`LocalProtocolError` (caller): we or our caller got something wrong before anything
  was sent. :class:`PayloadTooLarge` is the one for sizes over a limit.
- :class:`RemoteProtocolError` (backend): the *peer* sent bytes we cannot accept.
- :class:`TransportError` and its phases (:class:`ConnectError`, :class:`ReadError`,
  :class:`WriteError`, :class:`PoolTimeout`), raised at the edge with ``raise ... from exc``;
  :class:`ClosedError` (closed by us) versus :class:`BrokenError` (broken by the peer).
- :class:`Overloaded` (a bounded place is full: the call was refused, not run) and its
  :class:`ShuttingDown`; :class:`DeadlineExceeded`.
- :class:`RemoteApplicationError`: the peer answered with a Thrift ``TApplicationException``;
  the kinds offloop's workers send (:mod:`offloop.codec.faults`) arrive as their own classes:
  :class:`BackendCrashed`, :class:`UnknownMethod`, :class:`RemoteBadRequest`, or as
  :class:`Overloaded`, :class:`ShuttingDown` and :class:`DeadlineExceeded`.

What a client may see (``public_message``) is kept apart from what the log says
(``str(exc)``). HTTP statuses are not here: only the gateway knows them
(:mod:`offloop.gateway.statuses`).
"""

from __future__ import annotations

import enum

__all__ = [
    "BackendCrashed",
    "Blame",
    "BrokenError",
    "ClosedError",
    "ConnectError",
    "DeadlineExceeded",
    "EncodeError",
    "LocalProtocolError",
    "NoBackendError",
    "OffloopError",
    "Overloaded",
    "PayloadTooLarge",
    "PoolTimeout",
    "ReadError",
    "RemoteApplicationError",
    "RemoteBadRequest",
    "RemoteProtocolError",
    "ShuttingDown",
    "TransportError",
    "UnknownMethod",
    "WriteError",
]


class Blame(enum.Enum):
    """Who is at fault for an error."""

    CALLER = "caller"
    BACKEND = "backend"
    OFFLOOP = "offloop"


class OffloopError(Exception):
    """Root of every error offloop raises on purpose.

    Attributes:
        blame: who is at fault (class attribute; see :class:`Blame`).
        public_message: what may be shown to a client; ``str(exc)`` may hold more detail
            meant for the log. Unless given, the class's :attr:`PUBLIC` text, or the
            message itself for classes without one (the caller's own mistakes).
    """

    blame: Blame = Blame.OFFLOOP
    #: What a client sees unless the raiser says otherwise; None: the message itself.
    PUBLIC: str | None = "internal error"

    def __init__(self, message: str, *, public_message: str | None = None) -> None:
        super().__init__(message)
        if public_message is None:
            public_message = message if self.PUBLIC is None else self.PUBLIC
        self.public_message = public_message


class LocalProtocolError(OffloopError):
    """The caller broke the protocol before anything was sent (bad input, unknown method)."""

    blame = Blame.CALLER
    PUBLIC = None  # the caller needs to know what was wrong with what they sent


class PayloadTooLarge(LocalProtocolError):
    """A body or an encoded call is over its size limit.

    Attributes:
        size: the size found, in bytes.
        limit: the limit, in bytes.
    """

    def __init__(self, what: str, size: int, limit: int) -> None:
        super().__init__(f"{what} of {size} bytes is over the limit of {limit} bytes")
        self.size = size
        self.limit = limit


class EncodeError(OffloopError):
    """Arguments could not be encoded as the IDL says.

    offloop's fault when the gateway built them from JSON it had validated; the Python
    clients (:class:`offloop.Client`, :class:`offloop.AsyncClient`) raise
    :class:`LocalProtocolError` instead, since there the values are the caller's.
    """


class RemoteProtocolError(OffloopError):
    """The peer sent bytes we cannot accept (garbage, oversized or truncated frames)."""

    blame = Blame.BACKEND
    PUBLIC = "bad reply from backend"


class TransportError(OffloopError):
    """The network failed; see the phase subclasses."""

    blame = Blame.BACKEND
    PUBLIC = "backend unavailable"


class ConnectError(TransportError):
    """Could not connect (refused, unreachable, timed out while connecting)."""


class NoBackendError(ConnectError):
    """No backend of the service is reachable."""

    PUBLIC = "no backend available"


class ReadError(TransportError):
    """The connection failed while we were reading a reply."""


class WriteError(TransportError):
    """The connection failed while we were sending a call (it may not have been sent)."""


class PoolTimeout(TransportError):
    """No connection became available in time."""


class ClosedError(TransportError):
    """The connection or pool was closed by us (shutdown); the call was not made."""

    blame = Blame.OFFLOOP
    PUBLIC = "shutting down"


class BrokenError(TransportError):
    """The connection was broken by the peer (it vanished or closed mid-call)."""


class Overloaded(OffloopError):
    """A bounded place is full: the call was refused at once, not queued, and not run.

    The caller may go elsewhere or try again later.
    """

    blame = Blame.BACKEND
    PUBLIC = "overloaded"


class ShuttingDown(Overloaded):
    """The server is draining before it stops: the call was refused, not run."""

    PUBLIC = "shutting down"


class DeadlineExceeded(OffloopError):
    """The call's deadline passed before its reply arrived (or before it could start)."""

    blame = Blame.BACKEND
    PUBLIC = "deadline exceeded"


class RemoteApplicationError(OffloopError):
    """The peer answered with a Thrift ``TApplicationException``.

    Attributes:
        type: the ``TApplicationException`` type code (``UNKNOWN_METHOD``, ``INTERNAL_ERROR``...).
    """

    blame = Blame.BACKEND
    PUBLIC = "backend error"

    def __init__(self, message: str, *, type: int = 0, public_message: str | None = None) -> None:
        super().__init__(message, public_message=public_message)
        self.type = type


class BackendCrashed(RemoteApplicationError):
    """The process running the call on the backend died (killed, segfault, ``os._exit``)."""


class UnknownMethod(RemoteApplicationError):
    """The backend does not serve the method called (the two tiers' IDLs differ)."""

    blame = Blame.CALLER


class RemoteBadRequest(RemoteApplicationError):
    """The backend could not decode the call's arguments."""

    blame = Blame.CALLER
