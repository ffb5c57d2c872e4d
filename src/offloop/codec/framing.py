"""Thrift framed transport, sans-I/O: bytes in, frames out.

A frame is a 4-byte big-endian length followed by that many bytes of one Thrift message.
:class:`FrameDecoder` is a small state machine fed with whatever bytes arrive:

- ``feed(data)`` appends bytes; ``frames()`` yields every complete frame now buffered.
- A length over ``max_frame_size`` raises :class:`FrameTooLarge` before any body is buffered,
  so a peer cannot make us hold more than the limit.
- A first word that looks like a Thrift binary or compact *message header* rather than a
  length raises :class:`UnframedMessage`: the peer speaks unframed (buffered) transport.
- ``close()`` at end of stream raises :class:`TruncatedFrame` if a partial frame is buffered.

Once it has raised, the decoder is broken: the stream cannot be resynchronised, and the
connection must be closed.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

from offloop.errors import RemoteProtocolError

__all__ = [
    "DEFAULT_MAX_FRAME_SIZE",
    "FrameDecoder",
    "FrameError",
    "FrameTooLarge",
    "TruncatedFrame",
    "UnframedMessage",
    "encode_frame",
]

#: 16 MiB: well above any sane RPC payload, low enough that a garbage length cannot make a
#: server allocate gigabytes.
DEFAULT_MAX_FRAME_SIZE = 16 * 1024 * 1024

_LEN = struct.Struct("!I")
_BINARY_VERSION_MASK = 0xFFFF0000
_BINARY_VERSION_1 = 0x80010000
_COMPACT_PROTOCOL_ID = 0x82


class FrameError(RemoteProtocolError):
    """The peer's byte stream is not valid framed Thrift."""


class FrameTooLarge(FrameError):
    """A frame's declared length is over the configured maximum."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"frame of {size} bytes is over the limit of {limit} bytes")
        self.size = size
        self.limit = limit


class UnframedMessage(FrameError):
    """The peer sent a bare Thrift message; this endpoint expects framed transport."""


class TruncatedFrame(FrameError):
    """The stream ended inside a frame."""


def encode_frame(payload: bytes) -> bytes:
    """Prefix ``payload`` with its 4-byte big-endian length."""
    return _LEN.pack(len(payload)) + payload


class FrameDecoder:
    """Turns a byte stream into frames. See the module docstring for the states.

    Args:
        max_frame_size: the largest frame body accepted, in bytes.
    """

    __slots__ = ("_broken", "_buf", "_max", "_need")

    def __init__(self, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> None:
        if max_frame_size <= 0:
            raise ValueError("max_frame_size must be positive")
        self._max = max_frame_size
        self._buf = bytearray()
        self._need = -1  # body length of the frame being read, -1 while reading a header
        self._broken = False

    @property
    def buffered(self) -> int:
        """Bytes held that do not yet form a whole frame."""
        return len(self._buf)

    def feed(self, data: bytes) -> None:
        """Append bytes received from the peer."""
        if self._broken:
            raise FrameError("decoder is broken by an earlier error")
        self._buf += data

    def frames(self) -> Iterator[bytes]:
        """Yield each complete frame body buffered so far.

        Raises:
            FrameTooLarge: a declared length is over the limit.
            UnframedMessage: the stream holds bare messages, not frames.
        """
        buf = self._buf
        while True:
            if self._need < 0:
                if len(buf) < 4:
                    return
                (size,) = _LEN.unpack_from(buf, 0)
                self._check_header(size, bytes(buf[:4]))
                del buf[:4]
                self._need = size
            if len(buf) < self._need:
                return
            frame = bytes(buf[: self._need])
            del buf[: self._need]
            self._need = -1
            yield frame

    def close(self) -> None:
        """Signal end of stream.

        Raises:
            TruncatedFrame: the stream ended with a partial frame buffered.
        """
        if self._need >= 0 or self._buf:
            got = len(self._buf)
            want = self._need if self._need >= 0 else 4
            self._broken = True
            raise TruncatedFrame(
                f"stream ended inside a frame: {got} of {want} "
                f"{'body' if self._need >= 0 else 'header'} bytes received"
            )

    def _check_header(self, size: int, header: bytes) -> None:
        if size & _BINARY_VERSION_MASK == _BINARY_VERSION_1 or header[0] == _COMPACT_PROTOCOL_ID:
            self._broken = True
            raise UnframedMessage(
                "received an unframed Thrift message; this endpoint expects framed transport"
            )
        if size > self._max:
            self._broken = True
            raise FrameTooLarge(size, self._max)
        if size == 0:
            self._broken = True
            raise FrameError("received an empty frame")
