"""The THeader codec, sans-I/O: round trips, every limit, every malformed frame, truncations,
random bytes, and what decoding costs per byte. (Apache's own frames: tests/interop.)"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import random
import struct
import time
import zlib
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from offloop.codec.framing import FrameDecoder, encode_frame
from offloop.codec.header import (
    DEFAULT_HEADER_LIMITS,
    HEADER_MAGIC,
    MAX_HEADER_SECTION_SIZE,
    HeaderError,
    HeaderFrame,
    HeaderLimitExceeded,
    HeaderLimits,
    HeaderProtocol,
    HeaderTransform,
    decode_header_frame,
    encode_header_frame,
    is_header_frame,
)
from offloop.errors import Blame, LocalProtocolError, RemoteProtocolError

EXAMPLES = int(os.environ.get("OFFLOOP_FUZZ_EXAMPLES", "200"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])

ZLIB = HeaderTransform.ZLIB
FIXED = struct.Struct("!HHiH")
#: Limits that let every worst case below reach the format's own bounds.
PERMISSIVE = HeaderLimits(
    max_header_size=MAX_HEADER_SECTION_SIZE,
    max_info_headers=10**9,
    max_key_length=10**9,
    max_value_length=10**9,
    max_info_bytes=10**9,
    max_transforms=4,
)


def varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def body(section: bytes, payload: bytes = b"", *, pad: bool = True, flags: int = 0) -> bytes:
    """A frame body around a hand-written header section, zero-padded to whole words."""
    if pad:
        section += bytes(-len(section) % 4)
    assert len(section) % 4 == 0
    return FIXED.pack(HEADER_MAGIC, flags, 7, len(section) // 4) + section + payload


def kv(*pairs: tuple[bytes, bytes]) -> bytes:
    """A key/value info header."""
    out = b"\x01" + varint(len(pairs))
    for key, value in pairs:
        out += varint(len(key)) + key + varint(len(value)) + value
    return out


def decode(data: bytes, limits: HeaderLimits = DEFAULT_HEADER_LIMITS) -> HeaderFrame:
    return decode_header_frame(data, limits)


def section_end(frame_body: bytes) -> int:
    return 10 + int.from_bytes(frame_body[8:10], "big") * 4


# -- round trips ----------------------------------------------------------------------------

#: Keys and values as decoded: text, or any bytes (as surrogate-escaped text).
texts = st.one_of(
    st.text(max_size=12),
    st.binary(max_size=12).map(lambda b: b.decode("utf-8", "surrogateescape")),
)
frames = st.builds(
    HeaderFrame,
    protocol=st.sampled_from(HeaderProtocol),
    flags=st.integers(0, 0xFFFF),
    seqid=st.integers(-(2**31), 2**31 - 1),
    transforms=st.sampled_from([(), (ZLIB,)]),
    headers=st.dictionaries(texts, texts, max_size=8),
    payload=st.binary(max_size=300),
)


@FUZZ
@given(frame=frames)
def test_round_trip(frame: HeaderFrame) -> None:
    data = encode_header_frame(frame)
    (length,) = struct.unpack_from("!I", data)
    assert length == len(data) - 4
    frame_body = data[4:]
    assert is_header_frame(frame_body)
    assert decode(frame_body) == frame
    # The frame is what FrameDecoder yields for it.
    decoder = FrameDecoder()
    decoder.feed(data)
    assert list(decoder.frames()) == [frame_body]


def test_encoding_of_a_known_frame() -> None:
    frame = HeaderFrame(
        protocol=HeaderProtocol.COMPACT, flags=1, seqid=-2, headers={"k": "vé"}, payload=b"\x82"
    )
    assert encode_header_frame(frame) == bytes.fromhex(
        "00000017"  # length
        "0fff" "0001" "fffffffe" "0003"  # magic, flags, seqid, 3 words
        "02" "00" "01" "01" "016b" "0376c3a9" "0000"  # compact, no transforms, k: vé, padding
        "82"  # payload
    )  # fmt: skip


@FUZZ
@given(keys=st.lists(st.binary(max_size=20), min_size=1, max_size=6), value=st.binary(max_size=20))
def test_any_header_bytes_go_back_on_the_wire_unaltered(keys: list[bytes], value: bytes) -> None:
    # The spec: "Implementations MUST NOT alter either key or value in any way."
    original = body(b"\x00\x00" + kv(*((key, value) for key in dict.fromkeys(keys))), b"p")
    assert encode_header_frame(decode(original))[4:] == original


def test_headers_are_utf8_text_and_other_bytes_are_surrogate_escaped() -> None:
    frame = decode(body(b"\x00\x00" + kv((b"trace", "é✓".encode()), (b"\xff", b"a\x00\xc3"))))
    assert frame.headers == {"trace": "é✓", "\udcff": "a\x00\udcc3"}


def test_a_key_sent_twice_keeps_its_last_value_as_in_apache() -> None:
    frame = decode(body(b"\x00\x00" + kv((b"k", b"1"), (b"k", b"2")) + kv((b"j", b"3"))))
    assert frame.headers == {"k": "2", "j": "3"}


def test_transforms_are_applied_in_order_and_undone_in_reverse() -> None:
    frame = HeaderFrame(transforms=(ZLIB, ZLIB), payload=b"x" * 100)
    data = encode_header_frame(frame)
    assert data.endswith(zlib.compress(zlib.compress(b"x" * 100)))
    with pytest.raises(HeaderLimitExceeded) as info:
        decode(data[4:])  # one transform at most, by default
    assert info.value.limit == "max_transforms"
    assert decode(data[4:], HeaderLimits(max_transforms=2)) == frame


# -- what Apache writes, and what the spec allows ------------------------------------------


def test_padding_may_be_a_whole_word_as_apache_cpp_writes_it() -> None:
    # C++ pads 1 to 4 bytes (4 when none is needed); Python and Go 0 to 3.
    assert decode(body(b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00", b"p")).payload == b"p"
    assert decode(body(b"\x02\x00" + kv((b"ab", b"")), b"p")).headers == {"ab": ""}


def test_unknown_info_types_skip_the_rest_of_the_section_as_the_spec_says() -> None:
    section = b"\x00\x00" + kv((b"a", b"1")) + b"\x02\x01\x01x\x01y" + kv((b"b", b"2"))
    frame = decode(body(section, b"payload"))
    assert frame.headers == {"a": "1"}
    assert frame.payload == b"payload"


def test_non_canonical_varints_are_read() -> None:
    frame = decode(body(b"\x82\x00\x80\x00" + b"\x81\x00\x81\x00\x81\x80\x00k\x81\x00v"))
    assert frame.protocol is HeaderProtocol.COMPACT
    assert frame.headers == {"k": "v"}


def test_header_section_may_end_without_padding() -> None:
    frame = decode(body(b"\x00\x00" + kv((b"k", b"v")), pad=False))
    assert frame.headers == {"k": "v"}


def test_empty_payload_is_the_next_layers_business() -> None:
    assert decode(body(b"\x00\x00")).payload == b""


# -- limits ---------------------------------------------------------------------------------


def _frame_with(headers: dict[str, str], payload: bytes = b"") -> bytes:
    return encode_header_frame(HeaderFrame(headers=headers, payload=payload))[4:]


#: Each limit, a frame just past it, and the limits it is past (the same with the limit one
#: step higher must accept the frame).
LIMIT_CASES: dict[str, tuple[bytes, HeaderLimits, HeaderLimits]] = {
    "max_header_size": (
        _frame_with({"k": "v" * 30}),
        HeaderLimits(max_header_size=36),  # 37 bytes, padded to 40
        HeaderLimits(max_header_size=40),
    ),
    "max_info_headers": (
        _frame_with({"a": "", "b": "", "c": ""}),
        HeaderLimits(max_info_headers=2),
        HeaderLimits(max_info_headers=3),
    ),
    "max_key_length": (
        _frame_with({"k" * 11: "v"}),
        HeaderLimits(max_key_length=10),
        HeaderLimits(max_key_length=11),
    ),
    "max_value_length": (
        _frame_with({"k": "é" * 6}),  # 12 bytes: the limit is in bytes, not characters
        HeaderLimits(max_value_length=11),
        HeaderLimits(max_value_length=12),
    ),
    "max_info_bytes": (
        _frame_with({"ab": "cd", "ef": "gh"}),
        HeaderLimits(max_info_bytes=7),
        HeaderLimits(max_info_bytes=8),
    ),
    "max_varint_length": (
        body(b"\x80\x80\x80\x80\x80\x00\x00"),  # protocol id 0 in six bytes
        HeaderLimits(),
        HeaderLimits(max_varint_length=6),
    ),
    "max_transforms": (
        encode_header_frame(HeaderFrame(transforms=(ZLIB,), payload=b"m"))[4:],
        HeaderLimits(max_transforms=0),
        HeaderLimits(max_transforms=1),
    ),
    "accept_zlib": (
        encode_header_frame(HeaderFrame(transforms=(ZLIB,), payload=b"m"))[4:],
        HeaderLimits(accept_zlib=False),
        HeaderLimits(),
    ),
    "max_decompressed_size": (
        encode_header_frame(HeaderFrame(transforms=(ZLIB,), payload=b"m" * 1001))[4:],
        HeaderLimits(max_decompressed_size=1000),
        HeaderLimits(max_decompressed_size=1001),
    ),
}


def test_every_limit_has_a_case() -> None:
    fields = {f.name for f in dataclasses.fields(HeaderLimits)}
    assert fields == set(LIMIT_CASES)


@pytest.mark.parametrize("limit", list(LIMIT_CASES))
def test_each_limit(limit: str) -> None:
    data, past, within = LIMIT_CASES[limit]
    with pytest.raises(HeaderLimitExceeded) as info:
        decode(data, past)
    assert info.value.limit == limit
    assert f"HeaderLimits.{limit}" in str(info.value)
    decode(data, within)


def test_info_header_count_is_limited_over_all_key_value_blocks() -> None:
    data = body(b"\x00\x00" + kv((b"a", b"")) + kv((b"b", b""), (b"c", b"")))
    with pytest.raises(HeaderLimitExceeded, match="3 info headers") as info:
        decode(data, HeaderLimits(max_info_headers=2))
    assert info.value.limit == "max_info_headers"


def test_a_huge_declared_count_is_refused_before_reading_on() -> None:
    data = body(b"\x00\x00\x01\xff\xff\xff\xff\x0f")
    with pytest.raises(HeaderLimitExceeded) as info:
        decode(data)
    assert info.value.limit == "max_info_headers"
    assert info.value.offset == 13


def test_a_zip_bomb_is_refused_after_inflating_no_more_than_the_limit() -> None:
    bomb = zlib.compress(bytes(64 * 1024 * 1024), 9)  # 64 MiB of zeros in ~64 KB
    data = body(b"\x00\x01\x01", bomb)
    with pytest.raises(HeaderLimitExceeded) as info:
        decode(data, HeaderLimits(max_decompressed_size=1024 * 1024))
    assert info.value.limit == "max_decompressed_size"
    with pytest.raises(HeaderLimitExceeded):
        decode(data)  # the default: 16 MiB, the framing's largest frame


def test_exactly_the_decompressed_limit_is_accepted() -> None:
    data = body(b"\x00\x01\x01", zlib.compress(bytes(4096)))
    assert decode(data, HeaderLimits(max_decompressed_size=4096)).payload == bytes(4096)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_header_size", -1),
        ("max_header_size", MAX_HEADER_SECTION_SIZE + 1),
        ("max_info_headers", -1),
        ("max_key_length", -1),
        ("max_value_length", -1),
        ("max_info_bytes", -1),
        ("max_transforms", -1),
        ("max_decompressed_size", -1),
        ("max_varint_length", 0),
        ("max_varint_length", 11),
    ],
)
def test_limits_are_validated(field: str, value: int) -> None:
    kwargs: dict[str, Any] = {field: value}
    with pytest.raises(ValueError, match=field):
        HeaderLimits(**kwargs)


# -- malformed frames -----------------------------------------------------------------------

_HELLO = zlib.compress(b"hello")
#: Each malformed body, what the error's reason says, and the offset it names.
MALFORMED: dict[str, tuple[bytes, str, int]] = {
    "empty": (b"", "shorter than the 10-byte fixed header", 0),
    "fixed header cut": (FIXED.pack(HEADER_MAGIC, 0, 0, 0)[:9], "shorter than", 0),
    "framed binary message": (b"\x80\x01\x00\x01" + bytes(8), "magic is 0x8001", 0),
    "no header section": (body(b""), "protocol id runs past the end", 10),
    "section past the frame": (
        FIXED.pack(HEADER_MAGIC, 0, 0, 2) + b"\x00\x00\x00",
        "header section of 8 bytes runs past the end of the 13-byte frame",
        8,
    ),
    "json protocol": (body(b"\x01\x00"), "unsupported protocol id 1", 10),
    "protocol id 5": (body(b"\x05\x00"), "unsupported protocol id 5", 10),
    "hmac transform": (body(b"\x00\x01\x02"), "unsupported transform id 2", 12),
    "snappy transform": (body(b"\x00\x01\x03"), "unsupported transform id 3", 12),
    "varint past the section": (body(b"\x00\x00\x01\x00\x01\x81\x80\x80"), "count runs past", 15),
    "key past the section": (body(b"\x00\x00\x01\x01\x05abc"), "key of 5 bytes runs past", 14),
    "value past the section": (
        body(b"\x00\x00\x01\x01\x01k\x0aabcdefg"),
        "value of 10 bytes runs past",
        16,
    ),
    "count past the section": (body(b"\x00\x00\x01\x02\x01k\x01v"), "key length runs past", 18),
    "padding not zero": (body(b"\x00\x00\x00\x00\x00\x00\x01\x00"), "padding byte is 0x01", 16),
    "padding not zero after key/values": (
        body(b"\x00\x00" + kv((b"k", b"v")) + b"\x00\x20"),
        "padding byte is 0x20",
        19,
    ),
    "corrupt zlib": (body(b"\x00\x01\x01", b"not zlib at all"), "zlib payload is corrupt", 14),
    "truncated zlib": (body(b"\x00\x01\x01", _HELLO[:-3]), "zlib payload is truncated", 14),
    "bytes after zlib": (
        body(b"\x00\x01\x01", _HELLO + b"xyz"),
        "3 bytes follow the end of the zlib payload",
        14 + len(_HELLO),
    ),
    "empty zlib payload": (body(b"\x00\x01\x01"), "zlib payload is truncated", 14),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed(case: str) -> None:
    data, reason, offset = MALFORMED[case]
    with pytest.raises(HeaderError) as info:
        decode(data, PERMISSIVE)
    assert not isinstance(info.value, HeaderLimitExceeded), info.value
    assert reason in info.value.reason
    assert info.value.offset == offset, info.value


def test_header_error_blames_the_peer_and_keeps_details_for_the_log() -> None:
    with pytest.raises(HeaderError) as info:
        decode(body(b"\x07\x00"))
    exc = info.value
    assert isinstance(exc, RemoteProtocolError)
    assert exc.blame is Blame.BACKEND
    assert exc.public_message == "malformed Thrift header frame"
    assert str(exc) == "Thrift header frame refused at byte 10: unsupported protocol id 7 " + (
        "(0 binary, 2 compact)"
    )


# -- truncations, random bytes, mutations ---------------------------------------------------


@FUZZ
@given(frame=frames, data=st.data())
def test_truncations_raise_header_error(frame: HeaderFrame, data: st.DataObject) -> None:
    frame_body = encode_header_frame(frame)[4:]
    cut = data.draw(st.integers(0, len(frame_body) - 1))
    end = section_end(frame_body)
    if cut < end or frame.transforms:
        with pytest.raises(HeaderError):
            decode(frame_body[:cut])
    else:
        # A plain payload has no length of its own: the frame's length prefix is what says
        # where it ends (FrameDecoder raises TruncatedFrame for a cut stream), and the
        # message decoder refuses a cut message.
        assert decode(frame_body[:cut]).payload == frame.payload[: cut - end]


LIMIT_CHOICES = [
    DEFAULT_HEADER_LIMITS,
    PERMISSIVE,
    HeaderLimits(
        max_header_size=16,
        max_info_headers=1,
        max_key_length=2,
        max_value_length=2,
        max_info_bytes=3,
        max_varint_length=1,
        max_transforms=0,
        accept_zlib=False,
        max_decompressed_size=0,
    ),
]


def decoded_or_refused(data: bytes, limits: HeaderLimits) -> None:
    """Decoding raises HeaderError or returns a frame that survives a round trip."""
    try:
        frame = decode(data, limits)
    except HeaderError:
        return
    assert decode(encode_header_frame(frame)[4:], limits) == frame


fixed_headers = st.builds(
    FIXED.pack,
    st.just(HEADER_MAGIC),
    st.integers(0, 0xFFFF),
    st.integers(-(2**31), 2**31 - 1),
    st.integers(0, 12),
)
#: Bytes that mean something here: varint ends and continuations, types, ids, zlib's first.
_TELLING = (0x00, 0x01, 0x02, 0x03, 0x05, 0x0F, 0x78, 0x7F, 0x80, 0x81, 0x9C, 0xFF)
telling_bytes = st.lists(
    st.one_of(st.sampled_from(_TELLING), st.integers(0, 255)), max_size=80
).map(bytes)


@FUZZ
@given(
    data=st.one_of(
        st.binary(max_size=200),
        st.tuples(fixed_headers, telling_bytes).map(b"".join),
        st.tuples(fixed_headers, st.just(b"\x00\x01\x01"), telling_bytes).map(b"".join),
    ),
    limits=st.sampled_from(LIMIT_CHOICES),
)
def test_random_bytes_raise_only_header_error(data: bytes, limits: HeaderLimits) -> None:
    decoded_or_refused(data, limits)


mutations = st.lists(
    st.tuples(
        st.sampled_from(("set", "insert", "delete")),
        st.integers(0, 2**16),
        st.one_of(st.sampled_from(_TELLING), st.integers(0, 255)),
        st.integers(1, 8),
    ),
    min_size=1,
    max_size=4,
)


def mutate(data: bytes, steps: list[tuple[str, int, int, int]]) -> bytes:
    out = bytearray(data)
    for kind, where, byte, length in steps:
        at = where % (len(out) + 1)
        if kind == "set" and at < len(out):
            out[at] = byte
        elif kind == "insert":
            out[at:at] = bytes([byte]) * length
        elif kind == "delete":
            del out[at : at + length]
    return bytes(out)


@FUZZ
@given(frame=frames, steps=mutations, limits=st.sampled_from(LIMIT_CHOICES))
def test_mutated_frames_raise_only_header_error(
    frame: HeaderFrame, steps: list[tuple[str, int, int, int]], limits: HeaderLimits
) -> None:
    decoded_or_refused(mutate(encode_header_frame(frame)[4:], steps), limits)


# -- telling header frames from framed messages ---------------------------------------------


def test_is_header_frame() -> None:
    assert is_header_frame(encode_header_frame(HeaderFrame())[4:])
    assert is_header_frame(b"\x0f\xff")  # then decode_header_frame says what is wrong
    assert not is_header_frame(b"")
    assert not is_header_frame(b"\x0f")
    assert not is_header_frame(b"\x80\x01\x00\x01\x00\x00\x00\x04ping")  # strict binary
    assert not is_header_frame(b"\x82\x21\x01\x04ping")  # compact
    assert not is_header_frame(b"\x00\x00\x00\x04ping\x01")  # old non-strict binary


def test_one_connection_carries_framed_messages_and_header_frames() -> None:
    framed = b"\x80\x01\x00\x01\x00\x00\x00\x04ping\x00\x00\x00\x05\x00"
    header = HeaderFrame(seqid=5, headers={"trace": "t1"}, payload=framed)
    stream = encode_frame(framed) + encode_header_frame(header) + encode_frame(framed)
    decoder = FrameDecoder()
    decoder.feed(stream)
    kinds = [
        decode(frame_body) if is_header_frame(frame_body) else frame_body
        for frame_body in decoder.frames()
    ]
    assert kinds == [framed, header, framed]


# -- frames and replies ---------------------------------------------------------------------


def test_reply_answers_in_kind() -> None:
    request = HeaderFrame(
        protocol=HeaderProtocol.COMPACT,
        flags=0x0101,
        seqid=-9,
        transforms=(ZLIB,),
        headers={"trace": "t1"},
        payload=b"call",
    )
    reply = request.reply(b"reply", {"server": "offloop"})
    assert reply == HeaderFrame(
        protocol=HeaderProtocol.COMPACT,
        flags=0x0101,
        seqid=-9,
        transforms=(ZLIB,),
        headers={"server": "offloop"},
        payload=b"reply",
    )
    assert request.reply(b"r", transforms=()).transforms == ()
    assert request.reply(b"r").headers == {}


def test_frame_fields_are_validated_and_ints_become_enums() -> None:
    frame = HeaderFrame(protocol=2, transforms=(1,))  # type: ignore[arg-type]
    assert frame.protocol is HeaderProtocol.COMPACT
    assert frame.transforms == (ZLIB,)
    assert frame.protocol.codec_name == "compact"
    assert HeaderProtocol.BINARY.codec_name == "binary"
    hash(frame)
    for bad in (
        {"protocol": 1},
        {"transforms": (2,)},
        {"flags": 0x10000},
        {"flags": -1},
        {"seqid": 2**31},
        {"seqid": -(2**31) - 1},
    ):
        with pytest.raises(ValueError):
            HeaderFrame(**bad)


def test_encoding_refuses_what_no_peer_could_read() -> None:
    with pytest.raises(LocalProtocolError, match="surrogate"):
        encode_header_frame(HeaderFrame(headers={"k": "\ud800"}))
    with pytest.raises(TypeError, match="not a str"):
        encode_header_frame(HeaderFrame(headers={"k": b"v"}))  # type: ignore[dict-item]
    with pytest.raises(LocalProtocolError, match="65532"):
        encode_header_frame(HeaderFrame(headers={"k": "v" * 65532}))
    encode_header_frame(HeaderFrame(headers={"k": "v" * 65520}))


# -- cost: linear in the frame's size -------------------------------------------------------


def _section_body(section: bytes, payload: bytes = b"") -> bytes:
    return body(section, payload)


def _pairs(count: int, pair: bytes) -> bytes:
    return b"\x00\x00\x01" + varint(count) + pair * count


def _distinct_keys(count: int) -> bytes:
    return (
        b"\x00\x00\x01"
        + varint(count)
        + b"".join(b"\x03" + i.to_bytes(3, "big") + b"\x00" for i in range(count))
    )


_NOISE = random.Random(0).randbytes(256_000)

# Each builds a frame whose header section or payload is about ``n`` bytes and that makes the
# decoder do the most Python work per byte along one path, and says whether it is accepted.
WORST_CASES: dict[str, Callable[[int], tuple[bytes, bool]]] = {
    "empty key/value pairs": lambda n: (_section_body(_pairs(n // 2 - 4, b"\x00\x00")), True),
    "distinct 3-byte keys": lambda n: (_section_body(_distinct_keys(n // 5 - 2)), True),
    "5-byte varint lengths": lambda n: (
        _section_body(_pairs(n // 10 - 1, b"\x80\x80\x80\x80\x00" * 2)),
        True,
    ),
    "one key/value block per pair": lambda n: (
        _section_body(b"\x00\x00" + b"\x01\x01\x00\x00" * (n // 4 - 1)),
        True,
    ),
    "zero padding": lambda n: (_section_body(b"\x00\x00" + bytes(n - 4)), True),
    "padding spoilt at the end": lambda n: (
        _section_body(b"\x00\x00" + bytes(n - 5) + b"\x01"),
        False,
    ),
    "key/value count past the section": lambda n: (
        _section_body(_pairs(n // 2, b"\x00\x00")[: n - 4], payload=b"x"),
        False,
    ),
    "plain payload": lambda n: (_section_body(b"\x00\x00", _NOISE[:n]), True),
    "zlib payload": lambda n: (
        _section_body(b"\x00\x01\x01", zlib.compress(_NOISE[:n], 1)),
        True,
    ),
}


def _cpu_per_call(call: Callable[[], None], reps: int) -> float:
    best = math.inf
    for _ in range(3):
        started = time.process_time()
        for _ in range(reps):
            call()
        best = min(best, time.process_time() - started)
    return best / reps


@pytest.mark.parametrize("case", list(WORST_CASES))
def test_decode_cost_grows_linearly(case: str) -> None:
    small, big = 16_000, 256_000  # section sizes: the format's largest is 262140 bytes
    costs = []
    reps = 1
    for n in (small, big):
        data, accepted = WORST_CASES[case](n)

        def call(data: bytes = data, accepted: bool = accepted) -> None:
            try:
                decode(data, PERMISSIVE)
            except HeaderError:
                if accepted:
                    raise
            else:
                assert accepted, "a worst case meant to be refused was accepted"

        call()  # the expected verdict, before timing
        if n == small:
            # Enough calls for the small case to take ~20 ms of CPU, so the clock's
            # resolution does not matter; the big case makes 16x fewer.
            while _cpu_per_call(call, reps) * reps < 0.02 and reps < 1 << 16:
                reps *= 2
            costs.append(_cpu_per_call(call, reps))
        else:
            costs.append(_cpu_per_call(call, max(1, reps * small // big)))
    ratio = costs[1] / max(costs[0], 1e-9)
    # Linear is 16x; quadratic would be 256x. 40x leaves room for a loaded machine and caches.
    assert ratio < 40, f"{case}: {big} bytes cost {ratio:.1f}x the {small}-byte case"


def test_worst_cases_are_near_their_size() -> None:
    for case, build in WORST_CASES.items():
        data, _ = build(16_000)
        size = len(data) if "payload" in case else section_end(data) - 10
        assert 15_000 <= size <= 16_000 + 256, case
        with contextlib.suppress(HeaderError):
            decode(data, PERMISSIVE)
