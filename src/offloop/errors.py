"""The errors offloop raises, arranged by who is at fault.

One root, :class:`OffloopError`. Below it:

- :class:`LocalProtocolError`: *we* (or our caller) got something wrong before anything was
  sent: bad arguments, an unknown method. Carries an HTTP status hint.
- :class:`RemoteProtocolError`: the *peer* sent something we cannot accept: a garbage frame,
  a frame over the limit, a reply for a call we never made.
- :class:`TransportError` and its phases (:class:`ConnectError`, :class:`ReadError`,
  :class:`WriteError`, :class:`PoolTimeout`): the network failed; raised at the edge with
  ``raise ... from exc`` so the OS error stays attached.
- :class:`ClosedError` (closed by us) versus :class:`BrokenError` (broken by the peer).
- :class:`Overloaded`: a bounded queue or limit is full; the caller may go elsewhere.
- :class:`DeadlineExceeded`: the call's deadline passed.
- :class:`RemoteApplicationError`: the peer answered with a Thrift ``TApplicationException``.

What a client sees (``public_message``) is kept apart from what the log says (``str(exc)``).
"""

from __future__ import annotations

__all__ = [
    "BrokenError",
    "ClosedError",
    "ConnectError",
    "DeadlineExceeded",
    "LocalProtocolError",
    "OffloopError",
    "Overloaded",
    "PoolTimeout",
    "ReadError",
    "RemoteApplicationError",
    "RemoteProtocolError",
    "TransportError",
    "WriteError",
]


class OffloopError(Exception):
    """Root of every error offloop raises on purpose.

    Attributes:
        status_hint: the HTTP status a front should map this error to.
        public_message: what may be shown to a client; ``str(exc)`` may hold more detail
            meant for the log.
    """

    status_hint: int = 500

    def __init__(self, message: str, *, public_message: str | None = None) -> None:
        super().__init__(message)
        self.public_message = message if public_message is None else public_message


class LocalProtocolError(OffloopError):
    """The caller broke the protocol before anything was sent (bad input, unknown method)."""

    status_hint = 400

    def __init__(
        self, message: str, *, status_hint: int = 400, public_message: str | None = None
    ) -> None:
        super().__init__(message, public_message=public_message)
        self.status_hint = status_hint


class RemoteProtocolError(OffloopError):
    """The peer sent bytes we cannot accept (garbage, oversized or truncated frames)."""

    status_hint = 502


class TransportError(OffloopError):
    """The network failed; see the phase subclasses."""

    status_hint = 502


class ConnectError(TransportError):
    """Could not connect (refused, unreachable, timed out while connecting)."""

    status_hint = 503


class ReadError(TransportError):
    """The connection failed while we were reading a reply."""


class WriteError(TransportError):
    """The connection failed while we were sending a call (it may not have been sent)."""


class PoolTimeout(TransportError):
    """No connection became available in time."""

    status_hint = 503


class ClosedError(TransportError):
    """The connection or pool was closed by us (shutdown); the call was not made."""

    status_hint = 503


class BrokenError(TransportError):
    """The connection was broken by the peer (it vanished or closed mid-call)."""


class Overloaded(OffloopError):
    """A bounded limit is full: the call was refused at once, not queued.

    The message of the Thrift ``TApplicationException`` that carries this starts with
    ``overloaded`` so that any client can recognise it and go elsewhere.
    """

    status_hint = 503


class DeadlineExceeded(OffloopError):
    """The call's deadline passed before its reply arrived."""

    status_hint = 504


class RemoteApplicationError(OffloopError):
    """The peer answered with a Thrift ``TApplicationException``.

    Attributes:
        type: the ``TApplicationException`` type code (``UNKNOWN_METHOD``, ``INTERNAL_ERROR``...).
    """

    status_hint = 502

    def __init__(self, message: str, *, type: int = 0) -> None:
        super().__init__(message)
        self.type = type

    @property
    def is_overloaded(self) -> bool:
        """Whether the peer refused the call because its queue was full."""
        return str(self).startswith("overloaded")
