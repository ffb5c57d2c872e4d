"""The worker's TLS port: accept, tell a TLS client from a plaintext one, shake hands.

asyncio's TLS servers shake hands inside the transport, so a client that speaks plaintext to
a TLS port is dropped without a word on either side (a Thrift client then waits for a reply,
or sees a reset). This listener accepts each connection itself and looks at its first byte
(``MSG_PEEK``, nothing consumed) before anything else:

- a TLS handshake record: the handshake runs with the source's *current* context (so a
  rotated certificate applies to the next connection), within ``handshake_timeout``; then
  the connection is handed to the server's protocol as any other. A failed handshake (no
  client certificate, one from another CA or expired, a client refusing ours) is one log
  line that says why, and the connection is closed.
- anything else: a plaintext client. Its calls are read (at most :data:`PLAINTEXT_CALLS`,
  each within ``max_frame_size``, all within the handshake timeout) and each is answered with
  a Thrift fault that says the port needs TLS, in the framing it came in (framed, or THeader,
  whose clients first send a probe call), so the client sees a clear error for its call
  instead of a reset; one log line; closed.
- nothing within the timeout, or the connection closed before a byte (a TCP health probe):
  closed, quietly for a probe.

Handshakes in progress are bounded by ``max_handshakes``: past it a new connection is closed
at once (one log line per burst). Every handshake is a task the listener owns; :meth:`close`
stops accepting and cancels them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable, Mapping

from offloop.codec.faults import FaultKind
from offloop.codec.framing import encode_frame
from offloop.codec.header import (
    HeaderLimits,
    decode_header_frame,
    encode_header_frame,
    is_header_frame,
)
from offloop.codec.message import CALL, MessageCodec
from offloop.errors import RemoteProtocolError
from offloop.tls import ServerTLS, WorkerTLSConfig, describe_handshake_error, looks_like_tls

__all__ = ["TLSListener", "listening_socket", "plaintext_reply"]

log = logging.getLogger("offloop.worker")

#: Calls of a plaintext client answered with a fault before its connection is closed: a
#: THeader client's probe, its call, and a retry.
PLAINTEXT_CALLS = 4
#: Bytes of a plaintext call's frame kept to answer it (the header frame and the message's
#: header); a frame larger than this is read and dropped, and the connection closed.
_KEPT_BYTES = 64 * 1024


class TLSListener:
    """Accepts TLS connections on ``sock`` for a server's protocol.

    Args:
        sock: a bound, listening socket; closed by :meth:`close`.
        tls: where each handshake's context comes from.
        settings: the handshake's bounds (``handshake_timeout``, ``max_handshakes``).
        factory: makes the protocol of a connection whose handshake succeeded.
        plaintext_reply: given the body of a plaintext client's frame (a framed message or a
            header frame), the frame to answer it with (length prefix included), or None
            to close unanswered.
        max_frame_size: the largest frame read from a plaintext client.
        on_error: called with a reason (``tls_handshake``, ``plaintext_on_tls``) for each
            connection refused, for the metrics.
    """

    def __init__(
        self,
        sock: socket.socket,
        tls: ServerTLS,
        settings: WorkerTLSConfig,
        factory: Callable[[], asyncio.Protocol],
        *,
        plaintext_reply: Callable[[bytes], bytes | None],
        max_frame_size: int,
        on_error: Callable[[str], None],
    ) -> None:
        self._sock = sock
        self._tls = tls
        self._factory = factory
        self._plaintext_reply = plaintext_reply
        self._max_frame_size = max_frame_size
        self._on_error = on_error
        self._timeout = settings.handshake_timeout
        self._max = settings.max_handshakes
        self._handshakes: set[asyncio.Task[None]] = set()
        self._accepting: asyncio.Task[None] | None = None
        self._over = False  # past max_handshakes since the last log line

    def start(self) -> None:
        """Start accepting (on the running loop)."""
        self._sock.setblocking(False)
        self._accepting = asyncio.get_running_loop().create_task(self._accept())

    async def close(self) -> None:
        """Stop accepting, cancel the handshakes in progress, close the listening socket."""
        tasks = list(self._handshakes)
        if self._accepting is not None:
            tasks.append(self._accepting)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._sock.close()

    async def _accept(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, addr = await loop.sock_accept(self._sock)
            except OSError as exc:  # out of descriptors, most likely: let some go
                log.warning("cannot accept a connection: %s", exc)
                await asyncio.sleep(0.1)
                continue
            peer = f"{addr[0]}:{addr[1]}" if isinstance(addr, tuple) else str(addr)
            if len(self._handshakes) >= self._max:
                if not self._over:
                    log.warning(
                        "closing connections: %d TLS handshakes in progress (max_handshakes)",
                        len(self._handshakes),
                    )
                self._over = True
                conn.close()
                continue
            self._over = False
            task = loop.create_task(self._handshake(conn, peer))
            self._handshakes.add(task)
            task.add_done_callback(self._handshakes.discard)

    async def _handshake(self, conn: socket.socket, peer: str) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout  # for the first byte and the handshake
        handed_over = False
        try:
            conn.setblocking(False)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                async with asyncio.timeout_at(deadline):
                    first = await _peek(conn)
            except ConnectionError:
                # Item 21: reset before a byte (a health check, a scanner): no handshake was
                # tried, so it is not counted or warned about as a failed one.
                log.debug("connection from %s reset before its first byte", peer)
                return
            if not first:
                return  # closed before a byte: a TCP health probe
            if not looks_like_tls(first):
                await self._refuse_plaintext(conn, peer)
                return
            async with asyncio.timeout_at(deadline):
                await loop.connect_accepted_socket(
                    self._factory,
                    conn,
                    ssl=self._tls.current(),
                    ssl_handshake_timeout=max(deadline - loop.time(), 0.001),
                )
                handed_over = True
        except TimeoutError:
            if handed_over:
                return  # the deadline passed as the handshake ended: it is served
            self._on_error("tls_handshake")
            log.warning(
                "closing connection from %s: no TLS handshake within %g s (handshake_timeout)",
                peer,
                self._timeout,
            )
        except OSError as exc:  # the SSL errors included
            self._on_error("tls_handshake")
            log.warning("TLS handshake with %s failed: %s", peer, describe_handshake_error(exc))
        finally:
            if not handed_over:
                conn.close()

    async def _refuse_plaintext(self, conn: socket.socket, peer: str) -> None:
        """Answer the plaintext client's calls with a fault, then close (one log line)."""
        self._on_error("plaintext_on_tls")
        answered = 0
        with contextlib.suppress(TimeoutError, OSError):
            async with asyncio.timeout(self._timeout):
                while answered < PLAINTEXT_CALLS:
                    body = await self._read_frame(conn)
                    reply = None if body is None else self._plaintext_reply(body)
                    if reply is None:
                        break
                    await asyncio.get_running_loop().sock_sendall(conn, reply)
                    answered += 1
        with contextlib.suppress(OSError):
            conn.shutdown(socket.SHUT_WR)
        log.warning(
            "closing connection from %s: it speaks plaintext to this TLS port (%s); "
            "turn TLS on in the client (the gateway's --backend-tls-ca)",
            peer,
            f"{answered} call(s) answered with a fault" if answered else "not a Thrift call",
        )

    async def _read_frame(self, conn: socket.socket) -> bytes | None:
        """The next frame's body (None at the end of the stream, for a frame over the limit,
        or one too large to keep), read whole so that closing does not reset the peer."""
        loop = asyncio.get_running_loop()
        head = b""
        while len(head) < 4:
            chunk = await loop.sock_recv(conn, 4 - len(head))
            if not chunk:
                return None
            head += chunk
        size = int.from_bytes(head, "big")
        if not 0 < size <= self._max_frame_size:
            return None
        kept = bytearray()
        left = size
        while left:
            chunk = await loop.sock_recv(conn, min(left, 65536))
            if not chunk:
                return None
            left -= len(chunk)
            if len(kept) < _KEPT_BYTES:
                kept += chunk[: _KEPT_BYTES - len(kept)]
        return bytes(kept) if size <= _KEPT_BYTES else None


async def _peek(conn: socket.socket) -> bytes:
    """The first bytes of ``conn`` once some arrive, left in the socket; b"" at end of stream."""
    loop = asyncio.get_running_loop()
    while True:
        try:
            return conn.recv(8, socket.MSG_PEEK)
        except BlockingIOError:
            pass
        readable: asyncio.Future[None] = loop.create_future()
        fd = conn.fileno()

        def ready(fut: asyncio.Future[None] = readable) -> None:
            if not fut.done():
                fut.set_result(None)

        loop.add_reader(fd, ready)
        try:
            await readable
        finally:
            loop.remove_reader(fd)


def listening_socket(host: str, port: int, backlog: int) -> socket.socket:
    """A bound, listening, non-blocking TCP socket (``SO_REUSEADDR``, as asyncio's servers).

    Raises:
        OSError: the address cannot be bound.
    """
    family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


def plaintext_reply(
    body: bytes,
    *,
    codecs: Mapping[str, MessageCodec],
    framed: MessageCodec,
    limits: HeaderLimits,
) -> bytes | None:
    """The frame that answers a plaintext call to the TLS port, in its framing (``framed``
    reads a framed message, ``codecs`` by protocol name a header frame's payload): the
    client's call fails with words that say why, instead of a reset. None for a frame that
    is not a call."""
    detail = (
        "this worker's port requires TLS: the client connected without it "
        "(on the gateway: --backend-tls-ca)"
    )
    try:
        if is_header_frame(body):
            frame = decode_header_frame(body, limits)
            codec = codecs[frame.protocol.codec_name]
            header = codec.read_header(frame.payload)
        else:
            frame, codec = None, framed
            header = codec.read_header(body)
    except RemoteProtocolError:
        return None
    if header.type != CALL:
        return None
    fault = codec.fault(header.name, header.seqid, FaultKind.INTERNAL, detail)
    if frame is None:
        return encode_frame(fault)
    return encode_header_frame(frame.reply(fault))
