"""An asynchronous Thrift client that keeps many calls in flight on one connection.

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
the connection went) raises an error that is also a
:class:`~offloop.client.errors.NotSentError` (for example ``NotSentBrokenError``), so a caller
can safely retry it on another connection or backend. That is the whole sent / not-sent
convention: test ``isinstance(exc, NotSentError)``.

Encoding calls, numbering them and decoding replies is :class:`~offloop.codec.call.CallCodec`'s
work, shared with the blocking client; this module is only the asyncio I/O around it.

**Framing.** A connection sends plain framed calls or THeader frames carrying the call's info
headers (:func:`offloop.context.outgoing_headers`: request id, deadline, principal), as
``config.transport`` says, or in ``auto`` as a probe says: :meth:`ThriftConnection.connect`
then sends :meth:`~offloop.codec.call.CallCodec.encode_probe` first and waits for one frame,
at most ``connect_timeout``. A header frame back: header. Anything else (a framed reply, the
peer closing, as Apache's and thriftpy2's framed servers do, or silence) and the connection
is replaced by a framed one. The answer is :attr:`ThriftConnection.header`, which a pool
remembers for its backend (:attr:`ThriftConnection.probe_definite` says whether it may).

**Cancellation** (issue 13). A call that is cancelled or times out after its frame was queued
sends :meth:`~offloop.codec.call.CallCodec.encode_cancel` for its seqid on a header
connection, so that the worker drops it from its queue or stops it; a framed connection sends
nothing (only an offloop worker understands the message).

Cost per call is kept low, as this is the gateway's hot path: no task per call (a call is a
future, an optional timer handle and one dict entry); the frames of the calls made in one
loop iteration leave in a single ``write`` at its end; replies are decoded in
``data_received``.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any, cast

from offloop.client.config import ClientConfig
from offloop.client.errors import (
    BACKEND_UNAVAILABLE,
    NotSentBrokenError,
    NotSentClosedError,
    NotSentDeadline,
    NotSentOverloaded,
    NotSentWriteError,
    connect_error,
)
from offloop.client.network import TCP, Network
from offloop.codec.call import CallCodec
from offloop.codec.framing import FrameDecoder
from offloop.codec.header import is_header_frame
from offloop.context import outgoing_headers
from offloop.errors import BrokenError, ClosedError, DeadlineExceeded, RemoteProtocolError
from offloop.idl import MethodInfo
from offloop.runtime.limiter import Limiter

__all__ = ["ConnectionState", "ThriftConnection"]

logger = logging.getLogger(__name__)

#: How long ``close()`` lets the transport flush before aborting it; our pending calls have
#: already failed by then, so this only bounds the wait for a peer that stopped reading.
_CLOSE_GRACE = 1.0


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
        "_calls",
        "_config",
        "_decoder",
        "_drain_waiters",
        "_host",
        "_limiter",
        "_loop",
        "_lost",
        "_open",
        "_paused",
        "_peer",
        "_pending",
        "_port",
        "_probe",
        "_state",
        "_transport",
        "_wbuf",
        "_wseqids",
        "probe_definite",
    )

    def __init__(self, host: str, port: int, config: ClientConfig, *, header: bool = False) -> None:
        self._host = host
        self._port = port
        self._peer = f"{host}:{port}"
        self._config = config
        self._calls = CallCodec(
            config.protocol, config.max_frame_size, self._peer, config.decode, header=header
        )
        self._decoder = FrameDecoder(config.max_frame_size)
        # While a transport probe waits for its answer: whether it came as a header frame.
        self._probe: asyncio.Future[bool] | None = None
        #: Whether the probe's answer may be remembered for the backend (not a timeout).
        self.probe_definite = True
        # Calls sent and not answered, plus callers waiting for the write buffer to drain.
        self._limiter = Limiter(config.max_in_flight, name=f"calls in flight to {self._peer}")
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
        self._state = ConnectionState.OPEN
        self._open = False  # True once connected and while the state is OPEN
        self._lost: asyncio.Future[None] = self._loop.create_future()

    # -- opening ---------------------------------------------------------------------------

    @classmethod
    async def connect(
        cls,
        host: str,
        port: int,
        config: ClientConfig,
        *,
        network: Network = TCP,
        header: bool | None = None,
    ) -> ThriftConnection:
        """Open a connection to ``host:port``.

        Args:
            host: the server's host.
            port: the server's TCP port.
            config: how the connection behaves.
            network: how to connect (TCP by default; an in-memory pair in tests).
            header: THeader (True) or framed (False), as learnt earlier for this backend;
                None: as ``config.transport`` says (``auto``: probe).

        Raises:
            NotSentConnectError: the connection was refused, or not made within
                ``config.connect_timeout`` seconds.
        """
        if header is None and config.transport != "auto":
            header = config.transport == "header"
        conn = await cls._dial(host, port, config, network, header is not False)
        if header is not None:
            return conn
        if await conn._probe_header():
            return conn
        definite = conn.probe_definite
        await conn.close()
        logger.info(
            "%s does not speak THeader (%s): calls to it are plain framed",
            conn.peer,
            "it did not answer the probe in time" if not definite else "probe answered so",
        )
        conn = await cls._dial(host, port, config, network, False)
        conn.probe_definite = definite
        return conn

    @classmethod
    async def _dial(
        cls, host: str, port: int, config: ClientConfig, network: Network, header: bool
    ) -> ThriftConnection:
        conn = cls(host, port, config, header=header)
        try:
            async with asyncio.timeout(config.connect_timeout):
                await network.connect(lambda: conn, host, port)
        except OSError as exc:  # TimeoutError included
            raise connect_error(conn.peer, exc, config.connect_timeout) from exc
        return conn

    async def _probe_header(self) -> bool:
        """Send the transport probe and wait for its answer (see the module docstring)."""
        transport = self._transport
        if transport is None or not self._open:
            return False
        probe: asyncio.Future[bool] = self._loop.create_future()
        self._probe = probe
        try:
            transport.write(self._calls.encode_probe())
            async with asyncio.timeout(self._config.connect_timeout):
                return await asyncio.shield(probe)
        except TimeoutError:
            self.probe_definite = False
            return False
        finally:
            self._probe = None

    @property
    def header(self) -> bool:
        """Whether calls go out as THeader frames (else plain framed)."""
        return self._calls.header

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
        return self._limiter.borrowed

    @property
    def is_usable(self) -> bool:
        """Whether a call made now could be sent (open, and not known to be closing)."""
        transport = self._transport
        return self._open and transport is not None and not transport.is_closing()

    def load(self) -> int:
        """:attr:`in_flight` if the connection :attr:`is_usable`, else -1: what a pool
        compares its connections by, in one call per connection."""
        transport = self._transport
        if self._open and transport is not None and not transport.is_closing():
            return self._limiter.borrowed
        return -1

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
            EncodeError: ``args`` cannot be encoded.
            PayloadTooLarge: the call encodes to more than ``max_frame_size``.
            DeadlineExceeded: no reply within ``timeout`` (the call was sent).
            ClosedError: the connection was closed by us while the call was in flight.
            BrokenError: the peer closed the connection or sent garbage while the call was
                in flight.
            RemoteProtocolError: the reply is malformed, or names another method.
            RemoteApplicationError: the server answered with a ``TApplicationException``
                (offloop's faults as their own classes: see :mod:`offloop.codec.faults`).
            Exception: a declared Thrift exception of the method, as its own class.
        """
        if not self._open:
            raise self._not_sent_error()
        if timeout is not None and timeout <= 0:
            raise NotSentDeadline(f"call of {method.name} to {self._peer}: no time left")
        limiter = self._limiter
        if not limiter.try_acquire():
            raise NotSentOverloaded(
                f"{self._peer}: {limiter.borrowed} calls in flight, the limit is {limiter.limit}",
                public_message="backend overloaded",
            )
        try:
            return await self._call(method, args, timeout)
        finally:
            limiter.release()

    async def _call(self, method: MethodInfo, args: Any, timeout: float | None) -> Any:
        loop = self._loop
        deadline = None if timeout is None else loop.time() + timeout
        if self._paused:
            await self._wait_writable(method, deadline)
        pending = self._pending
        calls = self._calls
        seqid = calls.next_seqid(pending)
        headers = outgoing_headers(timeout, time.monotonic()) if calls.header else None
        frame = calls.encode_call(method, seqid, args, headers)
        transport = self._transport
        assert transport is not None  # _open implies connected
        if transport.is_closing():
            raise NotSentBrokenError(
                f"connection to {self._peer} is closing", public_message=BACKEND_UNAVAILABLE
            )
        # Frames queued in one loop iteration leave in one write (see _flush).
        wbuf = self._wbuf
        if not wbuf:
            loop.call_soon(self._flush)
        wbuf.append(frame)
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
            return await fut
        finally:
            if handle is not None:
                handle.cancel()
            # Still there only if we were cancelled: free the seqid; a late reply is dropped.
            if pending.get(seqid) is entry:
                del pending[seqid]
                self._send_cancel(seqid)

    def _expire(self, seqid: int, fut: asyncio.Future[Any], timeout: float | None) -> None:
        if fut.done():
            return
        entry = self._pending.get(seqid)
        name = "?"
        if entry is not None and entry[0] is fut:
            name = entry[1].name
            del self._pending[seqid]
            self._send_cancel(seqid)
        fut.set_exception(
            DeadlineExceeded(f"call of {name} to {self._peer}: no reply within {timeout}s")
        )

    def _send_cancel(self, seqid: int) -> None:
        """Issue 13: tell the server that the call ``seqid`` was given up (cancelled or timed
        out), so that it does not run it, or stops it. Only on a header connection (a framed
        server cannot be told, and Apache's would take the message for a call of an unknown
        method); queued like a call's frame, never blocking and never raising."""
        if not self._open or not self._calls.header:
            return
        try:
            frame = self._calls.encode_cancel(seqid)
        except Exception as exc:  # not expected: the caller must not hear of it either way
            logger.debug("%s: cannot encode the cancel of seqid %d: %s", self._peer, seqid, exc)
            return
        if not self._wbuf:
            self._loop.call_soon(self._flush)
        self._wbuf.append(frame)

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
                f"connection to {self._peer} was closed", public_message=BACKEND_UNAVAILABLE
            )
        if self._state is ConnectionState.BROKEN:
            return NotSentBrokenError(
                f"connection to {self._peer} was broken by the peer",
                public_message=BACKEND_UNAVAILABLE,
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
                    public_message=BACKEND_UNAVAILABLE,
                ),
                lambda: NotSentClosedError(
                    f"connection to {self._peer} was closed", public_message=BACKEND_UNAVAILABLE
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
        if self._probe is not None and not self._probe.done():
            self._probe.set_result(False)
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
                public_message=BACKEND_UNAVAILABLE,
            )
            err.__cause__ = cause
            return err

        def not_sent() -> Exception:
            err = not_sent_cls(
                f"connection to {self._peer} {why}", public_message=BACKEND_UNAVAILABLE
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

    def _on_frame(self, frame: bytes) -> None:
        probe = self._probe
        if probe is not None:
            if not probe.done():
                probe.set_result(is_header_frame(frame))
            return
        reply = self._calls.read_reply(frame)  # RemoteProtocolError: the connection goes
        entry = self._pending.pop(reply.seqid, None)
        if entry is None:
            logger.debug(
                "%s: discarding a reply with unknown seqid %d (timed out or cancelled)",
                self._peer,
                reply.seqid,
            )
            return
        fut, method = entry
        if fut.done():
            return
        try:
            value = self._calls.outcome(reply, method)
        except Exception as exc:  # this call's outcome: a declared exception, a fault...
            fut.set_exception(exc)
        else:
            fut.set_result(value)
