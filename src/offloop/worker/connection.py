"""One client connection of the worker: frames in, replies out.

How resources are bounded: frames by ``max_frame_size``; calls by the pool's admission
(workers + ``max_queued``, beyond which a call is answered at once with ``overloaded``);
connections by ``max_connections``. Each connection, by what it may make the worker hold:

- *Calls in progress* (a task each, from its frame's arrival until its reply is written) by
  ``max_calls_per_connection``. At the bound the connection stops being read; frames
  already read wait (at most one read's worth) and the rest of its backlog stays in the
  kernel's socket buffers, not in this process. A pipelining client thereby
  holds at most its share of the pool's admission, and others keep theirs.
- *A frame not yet whole* by ``frame_timeout`` from its first byte (the connection is closed,
  one log line, ``protocol_errors{reason="frame_timeout"}``), and all connections' such
  bytes together by ``max_partial_bytes`` (past it the connections whose partial frame began
  longest ago are closed: a slow sender, not one at network speed). While the worker holds a
  connection back at its call bound, its frame clock stops: the wait is the worker's doing.
- *Replies not read*: a client that does not read its replies stops being read and its
  frames already read are not dispatched (transport flow control), so its replies are
  bounded by its calls in progress.

A connection's reading state is one decision (:meth:`Connection._update_reading`): read
unless it is at its call bound or its client is not reading replies.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from typing import TYPE_CHECKING, cast

from offloop.codec.call import CANCEL_METHOD
from offloop.codec.faults import FaultKind
from offloop.codec.framing import FrameDecoder, FrameError, encode_frame
from offloop.codec.header import HeaderParts, encode_header_reply
from offloop.codec.message import Header, MessageCodec
from offloop.context import REQUEST_ID_HEADER, CallContext
from offloop.tls import looks_like_tls
from offloop.worker.dispatch import Job

if TYPE_CHECKING:
    from offloop.worker.server import WorkerServer

__all__ = ["HOLD_BYTES", "Call", "Connection", "PlainConnection"]

log = logging.getLogger("offloop.worker")

#: Issue 13: a header connection at its call bound is read on (so that its client's cancels
#: arrive) while the frames it holds back take fewer bytes than this: one read's worth.
HOLD_BYTES = 64 * 1024
#: The longest frame that may be a cancel message (one is about 40 bytes).
_CANCEL_FRAME_MAX = 96
_CANCEL_NAME = CANCEL_METHOD.encode()


def _maybe_cancel(frame: bytes) -> bool:
    """A cheap first look: whether ``frame`` may be a cancel
    (:meth:`~offloop.worker.call_reader.CallReader.is_cancel` tells)."""
    return len(frame) <= _CANCEL_FRAME_MAX and _CANCEL_NAME in frame


class Connection(asyncio.Protocol):
    """One client connection: frames in, replies out (in completion order).

    Whole frames are taken out of the decoder as soon as they are read, and dispatched while
    the connection has fewer than the server's ``calls_per_connection`` calls in progress
    and its client reads its replies. At the call bound the connection is *throttled*, the
    worker's doing; when its client does not read replies, the client's. Either way it is not
    read, and the frames already read wait (at most what one read brought). What the decoder
    still holds is then exactly one partial frame, which the server times and bounds
    (:class:`~offloop.worker.partial_frames.PartialFrames`).
    """

    def __init__(self, server: WorkerServer) -> None:
        self._server = server
        self._decoder = FrameDecoder(server.config.limits.max_frame_size)
        self._pending: collections.deque[bytes] = collections.deque()
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        #: THeader (True) or plain framed (False), as its first frame said; None before.
        self.header: bool | None = None
        #: Calls of this connection in progress: dispatched, reply not yet written.
        self.in_flight = 0
        #: Bytes of the partial frame the decoder holds, as counted in the server's total.
        self.partial = 0
        #: Loop time the partial frame began arriving; None while none is timed.
        self.partial_since: float | None = None
        #: At its call bound: the worker, not the client, holds it back.
        self.throttled = False
        self.timer: asyncio.TimerHandle | None = None
        #: Its client does not read its replies: the client holds it back.
        self.writes_paused = False
        self._reading = True
        #: Replies made in this turn of the loop, written at its end (:meth:`send`).
        self._out: list[bytes] = []
        #: Issue 13: the calls of a header connection in progress, by seqid, that a cancel
        #: message may name (bounded by the call bound: one entry per call in flight).
        self.calls: dict[int, tuple[Call, asyncio.Task[None]]] = {}
        #: Bytes of the frames read and held back (``_pending``).
        self.held = 0
        #: Seqids cancelled while their call was still held back: dropped when taken
        #: (at most one per frame held back).
        self.early_cancels: set[int] = set()
        #: Item 2: an untrusted peer's ``offloop-principal`` was ignored (logged once).
        self.principal_ignored = False

    @property
    def closing(self) -> bool:
        return self.transport is None or self.transport.is_closing()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but quack alike.
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self._server.add_connection(self)

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return  # closed by us a moment ago: what still arrives is dropped
        try:
            self._decoder.feed(data)
        except FrameError as exc:
            self._server.protocol_error(self, type(exc).__name__, str(exc))
            return
        self.pump()

    def pump(self) -> None:
        """Take the whole frames read out of the decoder, dispatch those the call bound
        allows, then account for what is held and decide whether to read on."""
        server = self._server
        error: FrameError | None = None
        completed = False
        cancels: list[bytes] = []
        try:
            for frame in self._decoder.frames():
                if self.header and _maybe_cancel(frame) and server.reader.is_cancel(frame):
                    cancels.append(frame)  # issue 13: served now, never held back
                else:
                    self._pending.append(frame)
                    self.held += len(frame)
                completed = True
        except FrameError as exc:
            error = exc  # after the frames before it, as they came
        for frame in cancels:
            server.on_frame(self, frame)
        bound = server.calls_per_connection
        while self._pending and not self.writes_paused:
            if self.in_flight < bound:
                server.on_frame(self, self._take())
            elif server.admission_full():
                # Past its share while the pool has no room for anyone: refused at once,
                # without a slot, as any call to a full pool is, so that clients (a gateway
                # learning a backend's capacity) hear "overloaded" instead of waiting unread.
                server.on_frame(self, self._take(), refuse=True)
            else:
                break  # past its share while others may use the room: wait, unread
            if self.closing:
                return  # closed for an earlier frame of this read: one error, one log line
        if not self._pending and self.early_cancels:
            self.early_cancels.clear()  # issue 13: those left named no call held back
        if error is not None:
            server.protocol_error(self, type(error).__name__, str(error))
            return
        # Issue 13: a header connection at its bound is still read while the frames it holds
        # back are under HOLD_BYTES, so that a cancel reaches the worker.
        throttled = self.in_flight >= bound and (self.held >= HOLD_BYTES or not self.header)
        if throttled and not self.throttled:
            server.metrics.throttles.inc()
        self.throttled = throttled
        server.partials.account(self, self._decoder.buffered, completed)
        self._update_reading()

    def cancel(self, seqid: int) -> None:
        """This connection's client gave up on its call ``seqid``: stop serving it. A queued call
        leaves the pool's queue (or its forming batch) without running; a running one is
        stopped where that is safe (a process-pool child is replaced, a thread-pool handler
        sees :func:`offloop.cancelled`). Its answer is dropped. A seqid of no call in
        progress (it just finished, or never was) is ignored."""
        entry = self.calls.pop(seqid, None)
        if entry is None:
            if len(self.early_cancels) < len(self._pending):
                self.early_cancels.add(seqid)  # the call may be held back: dropped when taken
            else:
                log.debug("cancel from %s for seqid %d: no such call", self.peer, seqid)
            return
        call, task = entry
        call.cancelled = True
        if call.started:
            task.cancel()  # else it sees call.cancelled as it begins

    def _take(self) -> bytes:
        frame = self._pending.popleft()
        self.held -= len(frame)
        return frame

    def call_done(self) -> None:
        """One call of this connection finished and its reply, if any, is written."""
        self.in_flight -= 1
        if (self.throttled or self._pending) and not self.closing:
            self.pump()

    def _update_reading(self) -> None:
        want = not (self.throttled or self.writes_paused)
        if want == self._reading or self.closing:
            return
        self._reading = want
        assert self.transport is not None
        if want:
            self.transport.resume_reading()  # an in-memory transport may deliver right here
        else:
            self.transport.pause_reading()

    def eof_received(self) -> bool:
        try:
            self._decoder.close()
        except FrameError as exc:
            self._server.protocol_error(self, type(exc).__name__, str(exc))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._server.partials.account(self, 0, False)
        self._server.remove_connection(self)

    def pause_writing(self) -> None:
        # The client is not reading its replies: dispatch and read nothing more until it
        # does. Its frame clock keeps running: that wait is the client's doing.
        self.writes_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self.writes_paused = False
        if not self.closing:
            self.pump()

    def send(self, message: bytes, call: Call | None = None) -> None:
        """Write the reply ``message`` to ``call``, in the framing the call came in.

        Replies made in one turn of the loop go out in one write at its end (issue 16: a
        write per reply was a third of a light call's cost), in the order they were made.
        """
        if not self.closing:
            frame = None if call is None else call.frame
            if frame is None:
                data = encode_frame(message)
            else:
                rid = call.context.request_id if call is not None else None
                headers = {REQUEST_ID_HEADER: rid} if rid is not None else None
                data = encode_header_reply(frame, message, headers)
            if not self._out:
                asyncio.get_running_loop().call_soon(self._write_out)
            self._out.append(data)

    def _write_out(self) -> None:
        out, self._out = self._out, []
        if out and not self.closing:
            assert self.transport is not None
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))

    def close(self) -> None:
        """Close the connection and let go of the frames it holds. Replies already written
        are sent first, unless the client is not reading them: then the connection is
        aborted, or it and its replies would stay until the client reads."""
        if self.transport is not None:
            if self.writes_paused:
                self.transport.abort()
            else:
                self._write_out()  # replies made in this turn go first
                self.transport.close()
        self._decoder = FrameDecoder(self._server.config.limits.max_frame_size)
        self._pending.clear()
        self.held = 0
        self._server.partials.account(self, 0, False)


class Call:
    """One call read off a connection: its header, the codec of its protocol, the header
    frame it came in (its parts; None when framed), its context, and the job the pool runs."""

    __slots__ = ("cancelled", "codec", "context", "frame", "header", "job", "started")

    def __init__(
        self,
        header: Header,
        codec: MessageCodec,
        frame: HeaderParts | None,
        context: CallContext,
        job: Job,
    ) -> None:
        self.header = header
        self.codec = codec
        self.frame = frame
        self.context = context
        self.job = job
        #: Its client sent a cancel for it (issue 13): dropped, never answered.
        self.cancelled = False
        #: Its task has begun (a task cancelled before that would skip its own clean-up).
        self.started = False

    def fault(self, kind: FaultKind, detail: str) -> bytes:
        # Under the plain method name, as every reply (several services: services.py).
        name = self.header.name.rpartition(":")[2]
        return self.codec.fault(name, self.header.seqid, kind, detail)


class PlainConnection(Connection):
    """A connection to the plaintext port: a TLS ClientHello as its first bytes (a client
    with TLS on) closes it at once with one log line that says so, instead of being read as
    a frame of several hundred MiB."""

    _first = True

    def data_received(self, data: bytes) -> None:
        if self._first and data:
            self._first = False
            if looks_like_tls(data):
                self._server.protocol_error(
                    self,
                    "tls_on_plaintext",
                    "it sent a TLS handshake to this plaintext port: turn TLS on here "
                    "(--tls-cert, --tls-key) or off in the client",
                )
                return
        super().data_received(data)
