"""A multiplexed asynchronous Thrift client over framed transport.

One :class:`ThriftConnection` carries many calls at once. Each call gets its own sequence id
(seqid); the server may answer out of order, and each reply is handed to the call whose seqid
it carries. A call that times out or is cancelled gives up its seqid at once; a late reply for
it is discarded, so it can neither break the connection nor reach another call.

A connection is in one of three states (:class:`ConnectionState`)::

    OPEN --close()----------------------------> CLOSED   (by us: calls raise ClosedError)
    OPEN --peer closes / sends garbage--------> BROKEN   (by the peer: calls raise BrokenError)

Leaving ``OPEN`` fails every pending call. A call that was already written fails with a plain
:class:`~offloop.errors.ClosedError` or :class:`~offloop.errors.BrokenError`: the server may
have run it. A call none of whose bytes were written (refused at once, or still queued when
the connection went) raises an error that is also a :class:`NotSentError` (for example
:class:`NotSentBrokenError`), so a caller can safely retry it on another connection or
backend. That is the whole sent / not-sent convention: test ``isinstance(exc, NotSentError)``.

Cost per call is kept low, as this is the gateway's hot path: no task per call (a call is a
future, an optional timer handle and one dict entry); the frames of the calls made in one
loop iteration leave in a single ``write`` at its end; replies are decoded in
``data_received`` with thriftpy2's Cython codec.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from thriftpy2.thrift import TApplicationException

from offloop.codec.framing import DEFAULT_MAX_FRAME_SIZE, FrameDecoder, encode_frame
from offloop.codec.message import EXCEPTION, REPLY, MessageCodec, ProtocolName
from offloop.errors import (
    BrokenError,
    ClosedError,
    ConnectError,
    DeadlineExceeded,
    LocalProtocolError,
    Overloaded,
    RemoteApplicationError,
    RemoteProtocolError,
    WriteError,
)
from offloop.idl import MethodInfo

__all__ = [
    "ClientConfig",
    "ConnectionState",
    "NotSentBrokenError",
    "NotSentClosedError",
    "NotSentConnectError",
    "NotSentDeadline",
    "NotSentError",
    "NotSentOverloaded",
    "NotSentWriteError",
    "ThriftConnection",
    "connect_error",
]

logger = logging.getLogger(__name__)

#: Seqids are non-negative i32 values; the counter wraps to 0 after 2**31 - 1.
_SEQID_MASK = 0x7FFFFFFF

#: How long ``close()`` lets the transport flush before aborting it; our pending calls have
#: already failed by then, so this only bounds the wait for a peer that stopped reading.
_CLOSE_GRACE = 1.0

# -- errors: which refusals happened before anything was written ---------------------------


class NotSentError(Exception):
    """Marker: the call was refused before any byte of it was written.

    The server cannot have run it, so it is safe to retry on another connection or backend.
    Every error that carries this marker is also one of the :mod:`offloop.errors` classes
    (``NotSentBrokenError`` is a :class:`~offloop.errors.BrokenError`, and so on), so code
    that does not care about retries can ignore the marker.
    """


class NotSentConnectError(ConnectError, NotSentError):
    """The connection could not be opened (refused, unreachable, timed out)."""


class NotSentClosedError(ClosedError, NotSentError):
    """The connection (or pool) had been closed by us before the call was written."""


class NotSentBrokenError(BrokenError, NotSentError):
    """The connection had been broken by the peer before the call was written."""


class NotSentWriteError(WriteError, NotSentError):
    """The transport refused the write."""


class NotSentOverloaded(Overloaded, NotSentError):
    """The connection (or pool) already holds its limit of calls in flight."""


class NotSentDeadline(DeadlineExceeded, NotSentError):
    """The deadline passed while the call waited for the write buffer to drain."""


def connect_error(peer: str, exc: OSError, connect_timeout: float) -> NotSentConnectError:
    """The error for a failed connect to ``peer``, for ``raise ... from exc``.

    Args:
        peer: the server's address, ``host:port``.
        exc: what opening the connection raised (``TimeoutError``: no answer in time).
        connect_timeout: the limit that a ``TimeoutError`` ran into.
    """
    why = f"no answer within {connect_timeout}s" if isinstance(exc, TimeoutError) else exc
    return NotSentConnectError(
        f"cannot connect to {peer}: {why}", public_message="backend unavailable"
    )


# -- configuration -------------------------------------------------------------------------


@dataclass(frozen=True)
class ClientConfig:
    """How a client connection behaves. Make variants with :func:`dataclasses.replace`.

    Attributes:
        protocol: the Thrift protocol on the wire, ``"binary"`` or ``"compact"``.
        max_frame_size: the largest frame accepted from the server and sent to it, in bytes.
        connect_timeout: seconds allowed to open a TCP connection.
        max_in_flight: calls one connection may carry at once; one more raises
            :class:`NotSentOverloaded` at once (there is no queue).
        write_buffer_high: bytes the transport may buffer before callers wait for it to
            drain (the asyncio high-water mark; the low-water mark is a quarter of it).
    """

    protocol: ProtocolName = "binary"
    max_frame_size: int = DEFAULT_MAX_FRAME_SIZE
    connect_timeout: float = 2.0
    max_in_flight: int = 1024
    write_buffer_high: int = 1024 * 1024

    def __post_init__(self) -> None:
        if self.protocol not in ("binary", "compact"):
            raise ValueError(f"protocol must be 'binary' or 'compact', not {self.protocol!r}")
        if self.max_frame_size <= 0:
            raise ValueError(f"max_frame_size must be positive, not {self.max_frame_size}")
        if not self.connect_timeout > 0:
            raise ValueError(f"connect_timeout must be positive, not {self.connect_timeout}")
        if not 1 <= self.max_in_flight <= _SEQID_MASK:
            raise ValueError(f"max_in_flight must be in 1..2**31-1, not {self.max_in_flight}")
        if self.write_buffer_high <= 0:
            raise ValueError(f"write_buffer_high must be positive, not {self.write_buffer_high}")


class ConnectionState(enum.Enum):
    """Where a connection stands; see the module docstring."""

    OPEN = "open"
    CLOSED = "closed"
    BROKEN = "broken"


# -- the connection ------------------------------------------------------------------------


class ThriftConnection(asyncio.Protocol):
    """One multiplexed client connection to a Thrift server over framed transport.

    Open it with :meth:`connect`; the object is the ``asyncio.Protocol`` of its transport,
    and its protocol callbacks are not for callers. Calls are bounded by
    ``config.max_in_flight``; there is no queue.

    Args:
        host: the server's host.
        port: the server's TCP port.
        config: how the connection behaves.
    """

    __slots__ = (
        "_codec",
        "_config",
        "_decoder",
        "_drain_waiters",
        "_host",
        "_loop",
        "_lost",
        "_max_frame_size",
        "_max_in_flight",
        "_open",
        "_paused",
        "_peer",
        "_pending",
        "_port",
        "_seqid",
        "_state",
        "_transport",
        "_wbuf",
        "_wseqids",
    )

    def __init__(self, host: str, port: int, config: ClientConfig) -> None:
        self._host = host
        self._port = port
        self._peer = f"{host}:{port}"
        self._config = config
        self._codec = MessageCodec(config.protocol)
        self._decoder = FrameDecoder(config.max_frame_size)
        self._max_frame_size = config.max_frame_size
        self._max_in_flight = config.max_in_flight
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        # seqid -> (future, method) of every call written and not yet answered
        self._pending: dict[int, tuple[asyncio.Future[Any], MethodInfo]] = {}
        # callers waiting for the write buffer to drain; they count as in flight
        self._drain_waiters: deque[asyncio.Future[None]] = deque()
        # frames queued for the next flush, and the seqids of the calls among them
        self._wbuf: list[bytes] = []
        self._wseqids: list[int] = []
        self._paused = False
        self._seqid = 0
        self._state = ConnectionState.OPEN
        self._open = False  # True once connected and while the state is OPEN
        self._lost: asyncio.Future[None] = self._loop.create_future()

    # -- opening ---------------------------------------------------------------------------

    @classmethod
    async def connect(cls, host: str, port: int, config: ClientConfig) -> ThriftConnection:
        """Open a connection to ``host:port``.

        Raises:
            NotSentConnectError: the connection was refused, or not made within
                ``config.connect_timeout`` seconds.
        """
        loop = asyncio.get_running_loop()
        conn = cls(host, port, config)
        try:
            async with asyncio.timeout(config.connect_timeout):
                await loop.create_connection(lambda: conn, host, port)
        except OSError as exc:  # TimeoutError included
            raise connect_error(conn.peer, exc, config.connect_timeout) from exc
        return conn

    # -- what callers and balancers look at ------------------------------------------------

    @property
    def peer(self) -> str:
        """The server's address, ``host:port``."""
        return self._peer

    @property
    def state(self) -> ConnectionState:
        """Whether the connection is open, closed by us or broken by the peer."""
        return self._state

    @property
    def in_flight(self) -> int:
        """Calls sent and not yet answered, plus calls waiting for the write buffer."""
        return len(self._pending) + len(self._drain_waiters)

    @property
    def is_usable(self) -> bool:
        """Whether a call made now could be sent (open, and not known to be closing)."""
        transport = self._transport
        return self._open and transport is not None and not transport.is_closing()

    def __repr__(self) -> str:
        return f"<ThriftConnection {self._peer} {self._state.value} in_flight={self.in_flight}>"

    # -- calling ---------------------------------------------------------------------------

    async def call(self, method: MethodInfo, args: Any, *, timeout: float | None) -> Any:
        """Call ``method`` with its ``<method>_args`` struct and wait for the reply.

        Args:
            method: the method to call.
            args: an instance of ``method.args_cls``.
            timeout: seconds to wait for the reply (``None``: no limit).

        Returns:
            The method's return value; ``None`` for a void or oneway method. A oneway call
            returns at once; its frame is written at the end of the loop iteration, and is
            lost without a word if the connection goes first.

        Raises:
            NotSentError: (with one of the classes below) nothing was written; safe to retry.
            NotSentOverloaded: ``max_in_flight`` calls are already in flight.
            NotSentClosedError: the connection was closed by us.
            NotSentBrokenError: the connection was broken by the peer.
            NotSentDeadline: the deadline passed while waiting for the write buffer.
            LocalProtocolError: ``args`` cannot be encoded, or encode over ``max_frame_size``.
            DeadlineExceeded: no reply within ``timeout`` (the call was sent).
            ClosedError: the connection was closed by us while the call was in flight.
            BrokenError: the peer closed the connection or sent garbage while the call was
                in flight.
            RemoteProtocolError: the reply is malformed, or names another method.
            RemoteApplicationError: the server answered with a ``TApplicationException``.
            Exception: a declared Thrift exception of the method, as its own class.
        """
        if not self._open:
            raise self._not_sent_error()
        pending = self._pending
        if len(pending) + len(self._drain_waiters) >= self._max_in_flight:
            raise NotSentOverloaded(
                f"{self._peer}: {self.in_flight} calls in flight, the limit is "
                f"{self._max_in_flight}",
                public_message="backend overloaded",
            )
        if timeout is not None and timeout <= 0:
            raise NotSentDeadline(f"call of {method.name} to {self._peer}: no time left")

        loop = self._loop
        deadline = None if timeout is None else loop.time() + timeout
        if self._paused:
            await self._wait_writable(method, deadline)
            pending = self._pending

        seqid = self._seqid
        while True:
            seqid = (seqid + 1) & _SEQID_MASK
            if seqid not in pending:
                break
        self._seqid = seqid
        try:
            payload = self._codec.encode_call(method, seqid, args)
        except Exception as exc:
            raise LocalProtocolError(
                f"cannot encode the arguments of {method.name}: {type(exc).__name__}: {exc}"
            ) from exc
        if len(payload) > self._max_frame_size:
            raise LocalProtocolError(
                f"call of {method.name} encodes to {len(payload)} bytes, over the frame limit "
                f"of {self._max_frame_size}",
                status_hint=413,
            )

        transport = self._transport
        assert transport is not None  # _open implies connected
        if transport.is_closing():
            raise NotSentBrokenError(
                f"connection to {self._peer} is closing", public_message="backend unavailable"
            )
        # Frames queued in one loop iteration leave in one write (see _flush).
        wbuf = self._wbuf
        if not wbuf:
            loop.call_soon(self._flush)
        wbuf.append(encode_frame(payload))
        if method.oneway:
            return None

        fut: asyncio.Future[Any] = loop.create_future()
        entry = (fut, method)
        pending[seqid] = entry
        self._wseqids.append(seqid)
        handle = (
            None if deadline is None else loop.call_at(deadline, self._expire, seqid, fut, timeout)
        )
        try:
            body = await fut
        finally:
            if handle is not None:
                handle.cancel()
            # Still there only if we were cancelled: free the slot; a late reply is dropped.
            if pending.get(seqid) is entry:
                del pending[seqid]
        return self._result(method, body)

    @staticmethod
    def _result(method: MethodInfo, body: Any) -> Any:
        if type(body) is TApplicationException:
            raise RemoteApplicationError(
                body.message or f"{method.name} failed on the server", type=body.type
            )
        value = getattr(body, "success", None)
        if value is not None:
            return value
        for name, _cls in method.exceptions:
            exc = getattr(body, name, None)
            if exc is not None:
                raise exc
        if hasattr(body, "success"):
            raise RemoteApplicationError(
                f"{method.name} returned no result", type=TApplicationException.MISSING_RESULT
            )
        return None

    def _expire(self, seqid: int, fut: asyncio.Future[Any], timeout: float | None) -> None:
        if fut.done():
            return
        entry = self._pending.get(seqid)
        name = "?"
        if entry is not None and entry[0] is fut:
            name = entry[1].name
            del self._pending[seqid]
        fut.set_exception(
            DeadlineExceeded(f"call of {name} to {self._peer}: no reply within {timeout}s")
        )

    async def _wait_writable(self, method: MethodInfo, deadline: float | None) -> None:
        loop = self._loop
        while self._paused:
            waiter: asyncio.Future[None] = loop.create_future()
            self._drain_waiters.append(waiter)
            handle = (
                None
                if deadline is None
                else loop.call_at(deadline, self._expire_waiter, waiter, method.name)
            )
            try:
                await waiter
            finally:
                if handle is not None:
                    handle.cancel()
                if waiter in self._drain_waiters:  # resume_writing may have taken it
                    self._drain_waiters.remove(waiter)
            if not self._open:
                raise self._not_sent_error()

    def _expire_waiter(self, waiter: asyncio.Future[None], name: str) -> None:
        if not waiter.done():
            waiter.set_exception(
                NotSentDeadline(
                    f"call of {name} to {self._peer}: deadline passed while waiting to write"
                )
            )

    def _not_sent_error(self) -> Exception:
        if self._state is ConnectionState.CLOSED:
            return NotSentClosedError(
                f"connection to {self._peer} was closed", public_message="backend unavailable"
            )
        if self._state is ConnectionState.BROKEN:
            return NotSentBrokenError(
                f"connection to {self._peer} was broken by the peer",
                public_message="backend unavailable",
            )
        return NotSentBrokenError(f"connection to {self._peer} is not open")

    # -- closing ---------------------------------------------------------------------------

    async def close(self) -> None:
        """Close the connection: fail every pending call with :class:`ClosedError`.

        Idempotent. Returns once the transport is gone: after a flush of what is buffered,
        or after a short grace period if the peer stopped reading.
        """
        if self._state is ConnectionState.OPEN:
            self._state = ConnectionState.CLOSED
            self._open = False
            n = self.in_flight
            self._fail_all(
                lambda: ClosedError(
                    f"connection to {self._peer} closed by us while {n} calls were in flight",
                    public_message="backend unavailable",
                ),
                lambda: NotSentClosedError(
                    f"connection to {self._peer} was closed", public_message="backend unavailable"
                ),
            )
            if self._transport is not None:
                self._transport.close()
        if self._transport is None:
            return
        try:
            async with asyncio.timeout(_CLOSE_GRACE):
                await asyncio.shield(self._lost)
        except TimeoutError:
            self._transport.abort()
            await asyncio.shield(self._lost)

    def _lose(
        self,
        why: str,
        cause: BaseException | None,
        *,
        not_sent_cls: type[NotSentBrokenError | NotSentWriteError] = NotSentBrokenError,
        abort: bool = True,
    ) -> None:
        """Go from OPEN to BROKEN: fail every call, and drop the transport.

        Args:
            why: what happened, completing "connection to host:port ...".
            cause: the error behind it, chained to the errors the calls raise.
            not_sent_cls: what calls not yet written raise.
            abort: whether to abort the transport (not when it is already gone).
        """
        if self._state is not ConnectionState.OPEN:
            return
        self._state = ConnectionState.BROKEN
        self._open = False
        n = self.in_flight
        if n:
            logger.warning("connection to %s %s with %d calls in flight", self._peer, why, n)

        def sent() -> Exception:
            err = BrokenError(
                f"connection to {self._peer} {why} while {n} calls were in flight",
                public_message="backend unavailable",
            )
            err.__cause__ = cause
            return err

        def not_sent() -> Exception:
            err = not_sent_cls(
                f"connection to {self._peer} {why}", public_message="backend unavailable"
            )
            err.__cause__ = cause
            return err

        self._fail_all(sent, not_sent)
        if abort and self._transport is not None:
            self._transport.abort()

    def _fail_all(self, sent: Callable[[], Exception], not_sent: Callable[[], Exception]) -> None:
        """Fail pending calls with ``sent()``, or ``not_sent()`` for those still queued."""
        unsent = set(self._wseqids)
        self._wbuf, self._wseqids = [], []
        pending, self._pending = self._pending, {}
        for seqid, (fut, _method) in pending.items():
            if not fut.done():
                fut.set_exception(not_sent() if seqid in unsent else sent())
        waiters, self._drain_waiters = self._drain_waiters, deque()
        for waiter in waiters:
            if not waiter.done():
                waiter.set_exception(not_sent())

    def _flush(self) -> None:
        """Write every frame queued since the last flush, in one ``write``.

        Scheduled with ``call_soon`` by the first call that queues a frame, so that the
        calls made in one loop iteration cost one system call, not one each.
        """
        frames = self._wbuf
        transport = self._transport
        if not frames or not self._open or transport is None or transport.is_closing():
            return  # what is still queued is failed as not sent when the connection goes
        seqids = self._wseqids
        self._wbuf, self._wseqids = [], []
        try:
            transport.write(frames[0] if len(frames) == 1 else b"".join(frames))
        except Exception as exc:
            self._wseqids = seqids  # not written: fail them as not sent
            self._lose(f"broken: a write failed ({exc})", exc, not_sent_cls=NotSentWriteError)

    # -- asyncio.Protocol callbacks --------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        transport = cast(asyncio.Transport, transport)
        self._transport = transport
        transport.set_write_buffer_limits(high=self._config.write_buffer_high)
        self._open = self._state is ConnectionState.OPEN

    def connection_lost(self, exc: Exception | None) -> None:
        how = f" ({exc})" if exc is not None else ""
        self._lose(f"closed by peer{how}", exc, abort=False)
        if not self._lost.done():
            self._lost.set_result(None)

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        waiters, self._drain_waiters = self._drain_waiters, deque()
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def eof_received(self) -> bool:
        return False  # let the transport close; connection_lost fails what is pending

    def data_received(self, data: bytes) -> None:
        if not self._open:
            return
        decoder = self._decoder
        try:
            decoder.feed(data)
            for frame in decoder.frames():
                self._on_frame(frame)
                if not self._open:
                    return
        except RemoteProtocolError as exc:
            self._lose(f"broken: the peer sent garbage ({exc})", exc)

    def _reply_protocol(self, frame: bytes) -> Any:
        # Bounded by the frame: a declared length past its end raises, never allocates.
        return self._codec.reader(frame)

    def _on_frame(self, frame: bytes) -> None:
        proto = self._reply_protocol(frame)
        try:
            name, mtype, seqid = proto.read_message_begin()
        except Exception as exc:
            raise RemoteProtocolError(
                f"{self._peer} sent an undecodable {self._config.protocol} message header: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        entry = self._pending.pop(seqid, None)
        if entry is None:
            logger.debug(
                "%s: discarding a reply with unknown seqid %d (timed out or cancelled)",
                self._peer,
                seqid,
            )
            return
        fut, method = entry
        if fut.done():
            return
        if isinstance(name, bytes):
            name = name.decode("utf-8", "replace")
        if name != method.name:
            fut.set_exception(
                RemoteProtocolError(
                    f"{self._peer} answered seqid {seqid} of {method.name} with a reply "
                    f"named {name!r}"
                )
            )
            return
        if mtype == REPLY:
            body: Any = method.result_cls()
        elif mtype == EXCEPTION:
            body = TApplicationException()
        else:
            fut.set_exception(
                RemoteProtocolError(
                    f"{self._peer} answered {method.name} with message type {mtype}, not a reply"
                )
            )
            return
        try:
            proto.read_struct(body)
        except Exception as exc:
            err = RemoteProtocolError(
                f"malformed reply to {method.name} from {self._peer}: {type(exc).__name__}: {exc}"
            )
            err.__cause__ = exc
            fut.set_exception(err)
            return
        fut.set_result(body)
