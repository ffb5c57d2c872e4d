"""A fake Thrift server for the client tests, misbehaving on request.

The server speaks framed Thrift (binary or compact) over the demo ``textlab`` IDL, with the
sans-I/O codecs of offloop, and misbehaves on request:

- ``sleep(millis)`` answers after ``millis`` ms, so replies come out of order;
- ``parse(...)`` answers with the declared ``ParseError``;
- ``burn(millis)`` answers ``millis`` at once;
- ``ping(msg)`` echoes ``msg``, except for these messages:
  ``"app-error"`` (a ``TApplicationException``), ``"garbage"`` (a frame that is not a Thrift
  message), ``"huge-frame"`` (a frame header over any limit), ``"close"`` (closes the
  connection without answering), ``"stale"`` (a reply with an unknown seqid, then the real
  one), ``"wrong-name"`` (a reply named ``pong``), ``"bomb"`` (a tiny reply that declares a
  1 GiB string).

Like an offloop worker, it answers THeader frames in kind (a header connection's replies are
header frames; misbehaving replies stay raw) and answers the transport probe of offloop's
``auto`` clients, which is not counted as a call, and ignores the cancel messages of offloop's
clients (issue 13).
"""

from __future__ import annotations

import asyncio
import struct
from pathlib import Path
from typing import cast

from thriftpy2.thrift import TApplicationException

from offloop.codec.call import CANCEL_METHOD, PROBE_METHOD
from offloop.codec.framing import FrameDecoder, encode_frame
from offloop.codec.header import (
    HeaderFrame,
    decode_header_frame,
    encode_header_frame,
    is_header_frame,
)
from offloop.codec.message import MessageCodec, ProtocolName
from offloop.idl import ServiceInfo, load_idl, service_info

__all__ = ["SERVICE", "TEXTLAB", "FakeServer", "bomb_reply"]

#: The demo IDL of the source tree.
IDL_PATH = str(Path(__file__).resolve().parents[2] / "src" / "offloop" / "demo" / "textlab.thrift")
TEXTLAB = load_idl(IDL_PATH)
SERVICE: ServiceInfo = service_info(TEXTLAB, "TextLab")


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def bomb_reply(protocol: str, seqid: int, size: int = 1 << 30) -> bytes:
    """A ``ping`` reply of a few bytes whose ``success`` string declares ``size`` bytes."""
    if protocol == "binary":
        head = struct.pack("!Ii", 0x80010002, 4) + b"ping" + struct.pack("!i", seqid)
        return head + b"\x0b" + struct.pack("!hi", 0, size) + b"abc"
    head = bytes([0x82, (2 << 5) | 1]) + _varint(seqid) + _varint(4) + b"ping"
    return head + b"\x0b\x00" + _varint(size) + b"abc"


class FakeServer:
    """A misbehaving-on-request Thrift server on 127.0.0.1; see the module docstring."""

    def __init__(self, protocol: ProtocolName = "binary") -> None:
        self.protocol = protocol
        self.codec = MessageCodec(protocol)
        self.accepted = 0
        self.received: list[int] = []  # seqids in the order calls arrived
        self.replied: list[int] = []  # seqids in the order replies were sent
        self.late_replies = 0  # replies sent to sleep() calls
        #: Answer sleep() at once but in two parts: its first 12 bytes now, the rest when
        #: :meth:`send_rest` is called (a late reply split across reads).
        self.split_sleep = False
        self.first_part_sent = False
        self._rest: tuple[asyncio.Transport, bytes] | None = None
        self.reading = True
        self._transports: set[asyncio.Transport] = set()
        self._protocols: set[_FakeProtocol] = set()
        self._timers: set[asyncio.TimerHandle] = set()
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> FakeServer:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _FakeProtocol(self), "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def pause_reading(self) -> None:
        self.reading = False
        for t in self._transports:
            t.pause_reading()

    def resume_reading(self) -> None:
        self.reading = True
        for t in self._transports:
            t.resume_reading()

    def send_rest(self) -> None:
        """Send the rest of a split sleep() reply (see ``split_sleep``)."""
        assert self._rest is not None
        transport, rest = self._rest
        self._rest = None
        transport.write(rest)

    async def stop(self) -> None:
        for h in self._timers:
            h.cancel()
        self._timers.clear()
        if self._server is not None:
            self._server.close()
        for t in list(self._transports):
            t.abort()
        if self._server is not None:
            await self._server.wait_closed()
        await asyncio.sleep(0)  # let connection_lost callbacks run


class _FakeProtocol(asyncio.Protocol):
    def __init__(self, server: FakeServer) -> None:
        self.server = server
        self.decoder = FrameDecoder()
        self.transport: asyncio.Transport | None = None
        self.header: HeaderFrame | None = None  # the last header frame read, if any

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's do not subclass it
        self.transport = transport
        self.server.accepted += 1
        self.server._transports.add(transport)
        if not self.server.reading:
            transport.pause_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        assert self.transport is not None
        self.server._transports.discard(self.transport)

    def data_received(self, data: bytes) -> None:
        self.decoder.feed(data)
        for frame in self.decoder.frames():
            if is_header_frame(frame):
                self.header = decode_header_frame(frame)
                frame = self.header.payload
                if self.server.codec.read_header(frame).name == PROBE_METHOD:
                    payload = self.server.codec.application_error(
                        PROBE_METHOD, 0, TApplicationException.UNKNOWN_METHOD, "probe"
                    )
                    assert self.transport is not None
                    self.transport.write(encode_header_frame(self.header.reply(payload)))
                    continue
                if self.server.codec.read_header(frame).name == CANCEL_METHOD:
                    continue  # issue 13: a client's cancel, which an offloop worker heeds
            self.on_call(frame)

    def send(self, payload: bytes, seqid: int) -> None:
        assert self.transport is not None
        if not self.transport.is_closing():
            self.server.replied.append(seqid)
            if self.header is None:
                self.transport.write(encode_frame(payload))
            else:
                header = HeaderFrame(protocol=self.header.protocol, seqid=seqid, payload=payload)
                self.transport.write(encode_header_frame(header))

    def on_call(self, frame: bytes) -> None:
        server, codec = self.server, self.server.codec
        header = codec.read_header(frame)
        method = SERVICE.methods[header.name]
        _, args = codec.decode_args(frame, method)
        seqid = header.seqid
        server.received.append(seqid)
        result = method.result_cls()
        if header.name == "sleep":
            result.success = float(args.millis)
            if server.split_sleep:
                assert self.transport is not None and self.header is not None
                reply = HeaderFrame(
                    protocol=self.header.protocol,
                    seqid=seqid,
                    payload=codec.encode_reply("sleep", seqid, result),
                )
                data = encode_header_frame(reply)
                server.late_replies += 1
                server._rest = (self.transport, data[12:])
                self.transport.write(data[:12])
                server.first_part_sent = True
                return

            def late() -> None:
                server._timers.discard(handle)
                server.late_replies += 1
                self.send(codec.encode_reply("sleep", seqid, result), seqid)

            handle = asyncio.get_running_loop().call_later(args.millis / 1000, late)
            server._timers.add(handle)
            return
        if header.name == "parse":
            result.error = TEXTLAB.ParseError(message="no parse", unknown_words=["zzz"])
        elif header.name == "burn":
            result.success = args.millis
        elif header.name == "ping":
            msg = args.msg
            assert self.transport is not None
            if msg == "app-error":
                payload = codec.application_error(
                    "ping", seqid, TApplicationException.INTERNAL_ERROR, "boom"
                )
                self.send(payload, seqid)
                return
            if msg == "garbage":
                self.transport.write(encode_frame(b"\x00\x01garbage, not thrift"))
                return
            if msg == "huge-frame":
                self.transport.write(b"\x7f\xff\xff\xf0" + b"x" * 16)
                return
            if msg == "close":
                self.transport.close()
                return
            if msg == "bomb":
                self.send(bomb_reply(server.protocol, seqid), seqid)
                return
            result.success = msg
            if msg == "stale":
                self.send(codec.encode_reply("ping", seqid + 100_000, result), seqid + 100_000)
            if msg == "wrong-name":
                self.send(codec.encode_reply("pong", seqid, result), seqid)
                return
        else:
            payload = codec.application_error(
                header.name, seqid, TApplicationException.UNKNOWN_METHOD, "not faked"
            )
            self.send(payload, seqid)
            return
        self.send(codec.encode_reply(header.name, seqid, result), seqid)
