"""Which refusals happened before anything was written: the client's not-sent errors.

Every client error that carries the :class:`NotSentError` marker is also one of the
:mod:`offloop.errors` classes (:class:`NotSentBrokenError` is a
:class:`~offloop.errors.BrokenError`, and so on), so code that does not care about retries can
ignore the marker, and code that retries tests ``isinstance(exc, NotSentError)``: the server
cannot have run such a call, so it is safe to send it elsewhere.
"""

from __future__ import annotations

from offloop.errors import (
    BrokenError,
    ClosedError,
    ConnectError,
    DeadlineExceeded,
    Overloaded,
    WriteError,
)

__all__ = [
    "NotSentBrokenError",
    "NotSentClosedError",
    "NotSentConnectError",
    "NotSentDeadline",
    "NotSentError",
    "NotSentOverloaded",
    "NotSentWriteError",
    "connect_error",
]

#: What a client sees when a backend cannot be reached; the log gets the address and cause.
BACKEND_UNAVAILABLE = "backend unavailable"


class NotSentError(Exception):
    """Marker: the call was refused before any byte of it was written."""


class NotSentConnectError(ConnectError, NotSentError):
    """The connection could not be opened (refused, unreachable, timed out)."""


class NotSentClosedError(ClosedError, NotSentError):
    """The connection (or pool) had been closed by us before the call was written."""


class NotSentBrokenError(BrokenError, NotSentError):
    """The connection had been broken by the peer before the call was written."""


class NotSentWriteError(WriteError, NotSentError):
    """The transport refused the write."""


class NotSentOverloaded(Overloaded, NotSentError):
    """The connection, pool or actor already holds its limit of calls."""


class NotSentDeadline(DeadlineExceeded, NotSentError):
    """The deadline passed before the call could be written."""


def connect_error(peer: str, exc: OSError, connect_timeout: float) -> NotSentConnectError:
    """The error for a failed connect to ``peer``, for ``raise ... from exc``.

    Args:
        peer: the server's address, ``host:port``.
        exc: what opening the connection raised (``TimeoutError``: no answer in time).
        connect_timeout: the limit that a ``TimeoutError`` ran into.
    """
    why = f"no answer within {connect_timeout}s" if isinstance(exc, TimeoutError) else exc
    return NotSentConnectError(
        f"cannot connect to {peer}: {why}", public_message=BACKEND_UNAVAILABLE
    )
