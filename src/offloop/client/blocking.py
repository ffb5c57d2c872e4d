"""A blocking Thrift client: one socket, one call at a time (actor mode, scripts, tests).

It is the socket I/O around :class:`~offloop.codec.call.CallCodec`, the same call layer the
async client uses, so both encode, number and decode calls alike and map errors alike: a
refused connect raises ``NotSentConnectError``, a peer that closes mid-call
:class:`~offloop.errors.BrokenError`, a call past its deadline
:class:`~offloop.errors.DeadlineExceeded`, a fault the typed error of
:mod:`offloop.codec.faults`, a declared exception itself.

Life of its socket: *no socket* -> (first call) *connected* -> (a broken connection,
garbage, a timeout on a framed connection, or :meth:`BlockingClient.reset`) *no socket* again.
It never takes a reply to an earlier call for the current one: after any error that leaves the
stream unknown it closes the socket and reconnects lazily, before reusing an idle socket it
checks that the peer has not closed it, and on a THeader connection, where a call past its
deadline or given up is cancelled instead (below), replies are matched to calls by seqid.

Framing is :attr:`ClientConfig.transport <offloop.client.config.ClientConfig.transport>`'s,
as in the async client: in ``auto`` the first socket sends the transport probe and waits for
one frame (at most ``connect_timeout``); a header frame back makes every call a THeader frame
carrying the context's info headers (:func:`offloop.context.outgoing_headers`), anything else
makes them plain framed on a new socket. A THeader answer is kept for the client's life; a
framed one for :data:`~offloop.client.config.REPROBE_FRAMED_AFTER` seconds (a socket made
later asks again: the server may have been replaced by an offloop worker); no answer in time,
or a header frame followed by more bytes, is not kept (the next socket asks again).

Giving up a call (issue 13, actor mode): the thread that waits for a call's outcome may give it
up from another thread with a :class:`GiveUp` handed to :meth:`BlockingClient.call` (the
gateway's task was cancelled, or its deadline passed). The client's thread waits for the reply
in ``poll(2)`` on its socket and on a wake-up socket pair that :meth:`GiveUp.set` writes one
byte to, so only the client's own thread ever writes to the connection. A call given up before
it was written is not sent (``NotSentClosedError``). One given up in flight, or past its
deadline, on a THeader connection is cancelled: the client writes ``offloop.cancel`` for its
seqid (a small frame, written without blocking; if it does not fit whole the socket is reset
instead, which cancels the call as well) and returns at once, keeping the connection. The
worker does not answer a cancelled call, but a reply already on its way may still come: from
then on, before its next call the client reads whatever the idle socket holds and drops whole
replies (by seqid, never taken for a later call's; a partial one is finished by that call's
read, bounded by the frame limit), and anything else than replies resets it. A framed
connection cannot be told: its client keeps waiting for the reply (or the deadline, which
resets the socket), so a backend that runs every call to its end never has more calls from
this client than one.
"""

from __future__ import annotations

import contextlib
import logging
import math
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

from offloop.client.config import REPROBE_FRAMED_AFTER, ClientConfig
from offloop.client.errors import (
    BACKEND_UNAVAILABLE,
    NotSentClosedError,
    NotSentDeadline,
    NotSentWriteError,
    connect_error,
)
from offloop.codec.call import CallCodec
from offloop.codec.framing import FrameDecoder, FrameError
from offloop.codec.header import is_header_frame
from offloop.context import outgoing_headers
from offloop.errors import (
    BrokenError,
    ClosedError,
    DeadlineExceeded,
    OffloopError,
    RemoteProtocolError,
)
from offloop.idl import MethodInfo
from offloop.tls import ClientTLS, TLSHandshakeError, describe_handshake_error

__all__ = ["BlockingClient", "GiveUp"]

log = logging.getLogger("offloop.client")

#: Bytes asked of the socket per read: a typical reply in one syscall.
_RECV_SIZE = 64 * 1024


def _peer_closed(sock: socket.socket) -> bool:
    """Whether an idle socket is unusable: the peer closed it, or sent bytes nobody asked for."""
    if isinstance(sock, ssl.SSLSocket):  # no MSG_PEEK through TLS: read, and lose, a byte
        try:
            sock.settimeout(0.0)
            sock.recv(1)
        except ssl.SSLWantReadError:
            return False  # no application data (a TLS 1.3 session ticket, perhaps): open
        except OSError:
            return True
        return True
    try:
        sock.settimeout(0.0)
        sock.recv(1, socket.MSG_PEEK)
    except BlockingIOError:
        return False  # nothing to read: still open
    except OSError:
        return True
    return True  # b"" (end of stream) or a stray byte


class GiveUp:
    """Gives up one call of a :class:`BlockingClient` from another thread (see the module
    docstring): the caller no longer waits for its outcome.

    :meth:`set` may be called from any thread, at any time, any number of times, and never
    blocks: it takes a lock that is only held for as long, and writes at most one byte, without
    waiting, to the wake-up socket of the client running the call.
    """

    __slots__ = ("_lock", "_set", "_wake")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._set = False
        self._wake: Callable[[], None] | None = None

    @property
    def is_set(self) -> bool:
        """Whether the call was given up."""
        return self._set

    def set(self) -> None:
        """Give the call up: it is not sent if it was not yet, cancelled if it is in flight."""
        with self._lock:
            if self._set:
                return
            self._set = True
            if self._wake is not None:
                self._wake()  # under the lock: the client may not close its pair meanwhile

    def _attach(self, wake: Callable[[], None]) -> bool:
        """The client's thread starts the call; True if it was given up already."""
        with self._lock:
            self._wake = wake
            return self._set

    def _detach(self) -> None:
        with self._lock:
            self._wake = None


class BlockingClient:
    """A blocking Thrift client of one server.

    Only one thread calls :meth:`call`, :meth:`reset` and :meth:`close`; :meth:`interrupt`
    may be called from any thread, and so may :meth:`GiveUp.set` of a call's ``give_up``.

    Args:
        host: the server's host.
        port: the server's TCP port.
        config: protocol, frame limit and connect timeout.
        tls: TLS for its connections (the server's certificate verified, a client
            certificate presented if it has one); None for plain TCP. The handshake runs
            within the connect timeout.
    """

    def __init__(
        self, host: str, port: int, config: ClientConfig, *, tls: ClientTLS | None = None
    ) -> None:
        self._host = host
        self._port = port
        self._tls = tls
        self._peer = f"{host}:{port}"
        self._config = config
        self._calls = CallCodec(config.protocol, config.max_frame_size, self._peer, config.decode)
        # THeader or framed; None until a probe has told (transport "auto").
        self._header: bool | None = (
            None if config.transport == "auto" else (config.transport == "header")
        )
        self._calls.header = bool(self._header)
        # When a framed answer is asked again (transport "auto"; items 17, 19).
        self._reprobe_at = math.inf
        self._sock: socket.socket | None = None
        self._closed = False
        # Guards swapping ``_sock`` against interrupt() from another thread; never held
        # during a blocking socket operation.
        self._lock = threading.Lock()
        # Replies to calls given up may still arrive on the socket (see the module docstring).
        self._late = False
        # The wake-up pair of GiveUp.set (read end, write end); made by the first call that
        # can be given up, closed by close().
        self._wake_pair: tuple[socket.socket, socket.socket] | None = None
        self._connects = 0

    @property
    def peer(self) -> str:
        """The server's address, ``host:port``."""
        return self._peer

    @property
    def header(self) -> bool | None:
        """Whether calls go out as THeader frames; None while not yet known (``auto``)."""
        return self._header

    @property
    def connects(self) -> int:
        """Connections opened so far (a framed answer to the probe opens a second one)."""
        return self._connects

    @property
    def connected(self) -> bool:
        """Whether a socket is open (it is opened lazily by the next call)."""
        return self._sock is not None

    def call(
        self,
        method: MethodInfo,
        args: Any,
        deadline: float,
        timeout: float,
        *,
        give_up: GiveUp | None = None,
    ) -> Any:
        """Call ``method`` and wait for its reply until ``deadline``.

        Args:
            method: the method to call.
            args: an instance of ``method.args_cls``.
            deadline: ``time.monotonic()`` value by which the reply must have arrived.
            timeout: the call's whole timeout, for messages.
            give_up: lets another thread give the call up (see the module docstring).

        Returns:
            The method's value; None for a void or oneway method.

        Raises:
            NotSentClosedError: the client was closed or interrupted, or the call was given
                up before it was written.
            NotSentDeadline: the deadline passed before the call was written.
            NotSentConnectError: no connection could be opened.
            NotSentWriteError: the socket refused the call.
            EncodeError: ``args`` cannot be encoded.
            PayloadTooLarge: the call encodes to more than the frame limit.
            DeadlineExceeded: no reply before the deadline (the call was sent).
            ClosedError: interrupted by us while the call was in flight, or given up in
                flight (on a THeader connection, which cancelled it).
            BrokenError: the peer closed the connection or sent garbage mid-call.
            RemoteProtocolError: the reply is malformed or not for this call.
            RemoteApplicationError: the server answered with a ``TApplicationException``
                (offloop's faults as their own classes).
            Exception: a declared exception of the method, as itself.
        """
        if give_up is None:
            return self._call(method, args, deadline, timeout, None)
        if self._wake_pair is None and not self._closed:
            pair = self._wake_pair = socket.socketpair()
            for end in pair:
                end.setblocking(False)
        if give_up._attach(self._wake):
            raise self._given_up_error(method)
        try:
            return self._call(method, args, deadline, timeout, give_up)
        finally:
            give_up._detach()

    def _call(
        self,
        method: MethodInfo,
        args: Any,
        deadline: float,
        timeout: float,
        give_up: GiveUp | None,
    ) -> Any:
        if self._closed:
            raise self._closed_error()
        if deadline - time.monotonic() <= 0:
            raise NotSentDeadline(f"call of {method.name} to {self._peer}: no time left")
        calls = self._calls
        seqid = calls.next_seqid()
        message = calls.encode_message(method, seqid, args)  # refused before connecting
        decoder = FrameDecoder(self._config.max_frame_size)
        sock = self._sock
        if sock is not None and not self._idle_usable(sock, decoder):
            self.reset()
            decoder = FrameDecoder(self._config.max_frame_size)
            sock = None
        if sock is None:
            sock = self._connect(method, deadline)
            if self._header is False and time.monotonic() >= self._reprobe_at:
                self._header = None  # item 19: a framed answer is asked again, rarely
            if self._header is None:
                sock = self._probe(sock, method, deadline)
        headers = None
        if calls.header:
            now = time.monotonic()
            headers = outgoing_headers(deadline - now, now)
        frame = calls.frame_message(message, seqid, headers)
        if give_up is not None and give_up.is_set:
            if decoder.buffered:
                self.reset()  # part of a late reply is read: the rest would pass for a frame
            raise self._given_up_error(method)
        self._send(sock, method, frame, deadline)
        if method.oneway:
            return None
        while True:
            reply_frame = self._receive(sock, decoder, method, deadline, timeout, seqid, give_up)
            try:
                reply = calls.read_reply(reply_frame)
            except RemoteProtocolError as exc:
                self.reset()
                raise BrokenError(
                    f"connection to {self._peer} broken: {exc}",
                    public_message="bad reply from backend",
                ) from exc
            if reply.seqid == seqid:
                break
            # As in the async client: a reply nobody waits for is dropped (a late reply to a
            # call given up, or a stranger's).
            log.debug("%s: discarding a reply with unknown seqid %d", self._peer, reply.seqid)
        if decoder.buffered:  # bytes after the reply: nothing more on this stream is trusted
            self.reset()
        return calls.outcome(reply, method)

    def reset(self) -> None:
        """Close the socket; the next call opens a new one."""
        with self._lock:
            sock, self._sock = self._sock, None
        self._late = False
        if sock is not None:
            sock.close()

    def close(self) -> None:
        """Close the socket for good: later calls raise ``NotSentClosedError``."""
        self._closed = True
        self.reset()
        pair, self._wake_pair = self._wake_pair, None
        for end in pair or ():
            end.close()

    def interrupt(self) -> None:
        """Close for good from another thread, waking a call blocked on the socket (it
        raises :class:`~offloop.errors.ClosedError`). The owning thread closes the socket."""
        with self._lock:
            self._closed = True
            if self._sock is not None:
                with contextlib.suppress(OSError):
                    self._sock.shutdown(socket.SHUT_RDWR)

    # -- giving a call up ------------------------------------------------------------------

    def _wake(self) -> None:
        """Wake the client's thread from its wait for a reply (GiveUp.set, any thread)."""
        pair = self._wake_pair
        if pair is not None:
            with contextlib.suppress(OSError):  # full: a wake-up is pending already
                pair[1].send(b"\0")

    def _wait_readable(self, sock: socket.socket, remaining: float) -> bool:
        """Wait until ``sock`` can be read (True) or a GiveUp woke us (False).

        Raises:
            TimeoutError: neither within ``remaining`` seconds.
        """
        if isinstance(sock, ssl.SSLSocket) and sock.pending():
            return True  # decrypted bytes already buffered: poll would not see them
        pair = self._wake_pair
        assert pair is not None  # made by call() before any GiveUp is attached
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        poller.register(pair[0], select.POLLIN)
        events = poller.poll(remaining * 1000)
        if not events:
            raise TimeoutError("no time left")
        if any(fd == pair[0].fileno() for fd, _ in events):
            with contextlib.suppress(OSError):
                pair[0].recv(64)
            return False
        return True

    def _cancel(self, sock: socket.socket, seqid: int) -> None:
        """Tell the server that call ``seqid``, in flight, was given up (THeader only), and
        keep the socket; if the cancel cannot be written whole at once, reset instead."""
        whole = False
        try:
            frame = self._calls.encode_cancel(seqid)
            sock.settimeout(0.0)
            whole = sock.send(frame) == len(frame)
        except (OSError, OffloopError) as exc:
            log.debug("%s: cannot send the cancel of seqid %d: %s", self._peer, seqid, exc)
        if not whole:
            self.reset()  # closing a THeader connection cancels its calls too
            return
        self._late = True

    def _idle_usable(self, sock: socket.socket, decoder: FrameDecoder) -> bool:
        """Whether an idle socket may carry the next call: the peer has not closed it and
        sent nothing, or, after a call given up, only replies (dropped; a partial one is left
        in ``decoder``, for the next call's read to finish)."""
        if not self._late:
            return not _peer_closed(sock)
        try:
            sock.settimeout(0.0)
            while True:
                chunk = sock.recv(_RECV_SIZE)
                if not chunk:
                    return False
                decoder.feed(chunk)
        except (BlockingIOError, ssl.SSLWantReadError):
            pass
        except OSError:
            return False
        try:
            for frame in decoder.frames():
                late = self._calls.read_reply(frame)
                log.debug("%s: dropping a late reply, seqid %d", self._peer, late.seqid)
        except RemoteProtocolError:
            return False
        return True

    def _given_up_error(self, method: MethodInfo) -> Exception:
        return NotSentClosedError(
            f"call of {method.name} to {self._peer} given up before it was sent",
            public_message=BACKEND_UNAVAILABLE,
        )

    # -- the phases of a call --------------------------------------------------------------

    def _connect(self, method: MethodInfo, deadline: float) -> socket.socket:
        limit = min(self._config.connect_timeout, deadline - time.monotonic())
        until = time.monotonic() + limit
        try:
            sock = socket.create_connection((self._host, self._port), timeout=limit)
        except OSError as exc:  # TimeoutError included
            if isinstance(exc, TimeoutError) and limit < self._config.connect_timeout:
                raise NotSentDeadline(
                    f"call of {method.name} to {self._peer}: deadline passed while connecting"
                ) from exc
            raise connect_error(self._peer, exc, self._config.connect_timeout) from exc
        self._connects += 1
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self._tls is not None:
            sock = self._handshake(sock, until, limit)
        with self._lock:
            if not self._closed:
                self._sock = sock
                return sock
        sock.close()
        raise self._closed_error()

    def _handshake(self, sock: socket.socket, until: float, limit: float) -> socket.socket:
        """TLS over the connected ``sock``, done by ``until`` (the connect limit's end)."""
        assert self._tls is not None
        try:
            sock.settimeout(max(until - time.monotonic(), 0.001))
            return self._tls.current().wrap_socket(
                sock, server_hostname=self._tls.server_name(self._host)
            )
        except OSError as exc:  # the SSL errors and TimeoutError included
            sock.close()
            why = TLSHandshakeError(f"TLS handshake failed: {describe_handshake_error(exc)}")
            if isinstance(exc, TimeoutError):
                why = TLSHandshakeError(f"TLS handshake not done within {limit:.3g}s")
            raise connect_error(self._peer, why, self._config.connect_timeout) from exc

    def _probe(self, sock: socket.socket, method: MethodInfo, deadline: float) -> socket.socket:
        """Ask a new socket's server whether it speaks THeader (see the module docstring);
        the socket to call on: ``sock``, or a new one if it does not."""
        limit = min(self._config.connect_timeout, deadline - time.monotonic())
        answer: bool | None = None
        decoder = FrameDecoder(self._config.max_frame_size)
        try:
            sock.settimeout(max(limit, 0.001))
            sock.sendall(self._calls.encode_probe())
            while answer is None:
                for frame in decoder.frames():
                    answer = is_header_frame(frame)
                    break
                else:
                    chunk = sock.recv(_RECV_SIZE)
                    if not chunk:
                        answer = False
                    decoder.feed(chunk)
        except TimeoutError:
            answer = None  # not remembered: the next socket asks again
        except (OSError, FrameError):
            answer = False
        if answer and not decoder.buffered:
            self._header = self._calls.header = True
            return sock
        if answer and decoder.buffered:
            answer = None  # item 17: a header frame and more: unclear, asked again next time
        if answer is not None:
            self._header = False
            self._reprobe_at = time.monotonic() + REPROBE_FRAMED_AFTER
            log.info("%s does not speak THeader: calls to it are plain framed", self._peer)
        self._calls.header = False
        self.reset()
        return self._connect(method, deadline)

    def _send(self, sock: socket.socket, method: MethodInfo, data: bytes, deadline: float) -> None:
        # A failed or timed-out sendall wrote less than the whole frame: the server cannot
        # have run the call, so these errors are "not sent".
        try:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("no time left")
            sock.settimeout(remaining)
            sock.sendall(data)
        except TimeoutError as exc:
            self.reset()
            raise NotSentDeadline(
                f"call of {method.name} to {self._peer}: deadline passed while writing"
            ) from exc
        except OSError as exc:
            self.reset()
            if self._closed:
                raise self._closed_error() from exc
            raise NotSentWriteError(
                f"cannot write to {self._peer}: {exc}", public_message=BACKEND_UNAVAILABLE
            ) from exc

    def _receive(
        self,
        sock: socket.socket,
        decoder: FrameDecoder,
        method: MethodInfo,
        deadline: float,
        timeout: float,
        seqid: int,
        give_up: GiveUp | None,
    ) -> bytes:
        """The next frame: one already buffered in ``decoder``, else read off ``sock``; on a
        THeader connection, a call given up or past its deadline is cancelled."""
        header = self._calls.header
        while True:
            try:
                for frame in decoder.frames():
                    return frame
            except RemoteProtocolError as exc:
                self.reset()
                raise BrokenError(
                    f"connection to {self._peer} broken: the peer sent garbage: {exc}",
                    public_message="bad reply from backend",
                ) from exc
            if give_up is not None and give_up.is_set and header:
                self._give_up(sock, seqid, decoder)
                raise ClosedError(
                    f"call of {method.name} to {self._peer} given up by its caller: cancelled",
                    public_message="call given up",
                )
            try:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError("no time left")
                if give_up is not None and not self._wait_readable(sock, remaining):
                    continue  # woken: given up (or a stale wake-up of an earlier call)
                sock.settimeout(max(deadline - time.monotonic(), 0.001))
                chunk = sock.recv(_RECV_SIZE)
            except TimeoutError as exc:
                if header:
                    self._give_up(sock, seqid, decoder)
                else:
                    self.reset()
                raise DeadlineExceeded(
                    f"call of {method.name} to {self._peer}: no reply within {timeout:.3g}s"
                ) from exc
            except OSError as exc:
                self.reset()
                raise self._lost(method, exc) from exc
            if not chunk:
                self.reset()
                raise self._lost(method, None)
            decoder.feed(chunk)

    def _give_up(self, sock: socket.socket, seqid: int, decoder: FrameDecoder) -> None:
        """Give up the call ``seqid``: cancel it and keep the connection, whose late reply is
        dropped when it comes; but when part of a frame is already read (its decoder goes
        with this call), reset the connection instead, or the rest of that frame would be
        read as the start of the next one (closing it cancels the call on the worker too)."""
        if decoder.buffered:
            self.reset()
        else:
            self._cancel(sock, seqid)

    def _lost(self, method: MethodInfo, exc: OSError | None) -> Exception:
        if self._closed:
            return ClosedError(
                f"connection to {self._peer} closed by us while {method.name} was in flight",
                public_message=BACKEND_UNAVAILABLE,
            )
        how = f": {exc}" if exc is not None else ""
        return BrokenError(
            f"connection to {self._peer} closed by peer while {method.name} was in flight{how}",
            public_message=BACKEND_UNAVAILABLE,
        )

    def _closed_error(self) -> Exception:
        return NotSentClosedError(
            f"client of {self._peer} is closed", public_message=BACKEND_UNAVAILABLE
        )
