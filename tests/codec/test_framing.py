"""FrameDecoder, sans-I/O: bytes in, frames out; every way a peer can break the stream."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from offloop.codec.framing import (
    DEFAULT_MAX_FRAME_SIZE,
    FrameDecoder,
    FrameError,
    FrameTooLarge,
    TruncatedFrame,
    UnframedMessage,
    encode_frame,
)
from offloop.errors import Blame, RemoteProtocolError

#: The first four bytes of a strict binary-protocol CALL message (version 1, type 1).
BINARY_HEADER = struct.pack("!I", 0x80010001)
#: A compact-protocol message starts with protocol id 0x82, then version/type.
COMPACT_HEADER = bytes([0x82, 0x21, 0x01, 0x04])


def decode_all(decoder: FrameDecoder, data: bytes) -> list[bytes]:
    decoder.feed(data)
    return list(decoder.frames())


def test_encode_frame_prefixes_big_endian_length() -> None:
    assert encode_frame(b"abc") == b"\x00\x00\x00\x03abc"
    assert encode_frame(b"x" * 258)[:4] == b"\x00\x00\x01\x02"


def test_one_frame() -> None:
    decoder = FrameDecoder()
    assert decode_all(decoder, encode_frame(b"hello")) == [b"hello"]
    assert decoder.buffered == 0
    decoder.close()  # a clean end of stream


def test_byte_by_byte_feeding_yields_the_frame_once_complete() -> None:
    decoder = FrameDecoder()
    data = encode_frame(b"hello") + encode_frame(b"world!")
    seen: list[bytes] = []
    for i in range(len(data)):
        seen += decode_all(decoder, data[i : i + 1])
        if i < 8:
            assert seen == [], f"a frame came out after only {i + 1} bytes"
    assert seen == [b"hello", b"world!"]
    assert decoder.buffered == 0


def test_many_frames_in_one_chunk() -> None:
    bodies = [bytes([i]) * (i + 1) for i in range(50)]
    decoder = FrameDecoder()
    assert decode_all(decoder, b"".join(encode_frame(b) for b in bodies)) == bodies


def test_partial_frame_stays_buffered_until_the_rest_arrives() -> None:
    decoder = FrameDecoder()
    data = encode_frame(b"first") + encode_frame(b"second")
    assert decode_all(decoder, data[:12]) == [b"first"]
    assert decoder.buffered == 3  # of the next length word
    assert decode_all(decoder, data[12:15]) == []
    assert decoder.buffered == 2  # of the body of "second"
    assert decode_all(decoder, data[15:]) == [b"second"]


def test_frame_at_the_limit_is_accepted() -> None:
    decoder = FrameDecoder(max_frame_size=10)
    assert decode_all(decoder, encode_frame(b"x" * 10)) == [b"x" * 10]


def test_over_limit_raises_before_the_body_arrives() -> None:
    decoder = FrameDecoder(max_frame_size=10)
    with pytest.raises(FrameTooLarge) as info:
        decode_all(decoder, struct.pack("!I", 11))  # the header alone is enough
    assert info.value.size == 11
    assert info.value.limit == 10
    assert "11 bytes is over the limit of 10" in str(info.value)


def test_default_limit_is_16_mib() -> None:
    assert DEFAULT_MAX_FRAME_SIZE == 16 * 1024 * 1024
    decoder = FrameDecoder()
    with pytest.raises(FrameTooLarge):
        decode_all(decoder, struct.pack("!I", DEFAULT_MAX_FRAME_SIZE + 1))


@pytest.mark.parametrize("header", [BINARY_HEADER, COMPACT_HEADER], ids=["binary", "compact"])
def test_unframed_message_header_is_recognised(header: bytes) -> None:
    decoder = FrameDecoder()
    with pytest.raises(UnframedMessage, match="unframed"):
        decode_all(decoder, header + b"\x00\x00\x00\x04ping")


def test_empty_frame_is_an_error() -> None:
    decoder = FrameDecoder()
    with pytest.raises(FrameError, match="empty frame"):
        decode_all(decoder, b"\x00\x00\x00\x00")


@pytest.mark.parametrize(
    ("data", "what"),
    [
        (b"\x00\x00", "2 of 4 header"),
        (b"\x00\x00\x00\x05ab", "2 of 5 body"),
        (b"\x00\x00\x00\x05", "0 of 5 body"),
    ],
)
def test_truncated_at_close(data: bytes, what: str) -> None:
    decoder = FrameDecoder()
    assert decode_all(decoder, data) == []
    with pytest.raises(TruncatedFrame, match=what):
        decoder.close()
    with pytest.raises(FrameError, match="broken"):
        decoder.feed(b"more")


@pytest.mark.parametrize(
    "bad",
    [struct.pack("!I", 1000), BINARY_HEADER, COMPACT_HEADER, b"\x00\x00\x00\x00"],
    ids=["too-large", "binary", "compact", "empty"],
)
def test_decoder_is_broken_after_an_error(bad: bytes) -> None:
    decoder = FrameDecoder(max_frame_size=100)
    with pytest.raises(FrameError):
        decode_all(decoder, bad)
    with pytest.raises(FrameError, match="broken"):
        decoder.feed(encode_frame(b"fine"))


def test_frame_errors_are_remote_protocol_errors() -> None:
    for cls in (FrameTooLarge, UnframedMessage, TruncatedFrame):
        assert issubclass(cls, FrameError)
    assert issubclass(FrameError, RemoteProtocolError)
    assert FrameTooLarge(5, 1).blame is Blame.BACKEND


def test_max_frame_size_must_be_positive() -> None:
    with pytest.raises(ValueError):
        FrameDecoder(max_frame_size=0)


# -- properties ---------------------------------------------------------------------------

#: Frame bodies as a peer may send them: non-empty, and not starting like a message header
#: would only matter for the length word, which ``encode_frame`` writes itself.
bodies = st.lists(st.binary(min_size=1, max_size=300), min_size=0, max_size=20)


@settings(max_examples=200, deadline=None)
@given(frames=bodies, data=st.data())
def test_random_splits_reassemble_exactly(frames: list[bytes], data: st.DataObject) -> None:
    stream = b"".join(encode_frame(f) for f in frames)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=30), label="cuts"))
    decoder = FrameDecoder(max_frame_size=300)
    out: list[bytes] = []
    start = 0
    for cut in [*cuts, len(stream)]:
        out += decode_all(decoder, stream[start:cut])
        start = cut
    assert out == frames
    assert decoder.buffered == 0
    decoder.close()


@settings(max_examples=300, deadline=None)
@given(
    chunks=st.lists(st.binary(max_size=64), max_size=10),
    limit=st.integers(1, 1 << 20),
)
def test_garbage_raises_only_frame_errors(chunks: list[bytes], limit: int) -> None:
    decoder = FrameDecoder(max_frame_size=limit)
    try:
        for chunk in chunks:
            for frame in decode_all(decoder, chunk):
                assert 0 < len(frame) <= limit
        decoder.close()
    except FrameError:
        pass  # any other exception fails the test
