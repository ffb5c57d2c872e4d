"""The THeader codec's fast paths: each must agree with the general path it stands in for.

The decoder's fast path (``_split_common``) takes the common frame and returns None for any
other, which the general path (``_split_general``) then accepts or refuses; the encoder's
fast path falls back likewise. These properties check, on random and mutated frames under
every limit choice of tests/codec/test_header.py, that the fast path returns a frame only
where the general path returns the same frame, and nothing where it raises.
"""

from __future__ import annotations

import re
import struct
import zlib
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from offloop.codec.header import (
    DEFAULT_HEADER_LIMITS,
    HeaderError,
    HeaderFrame,
    HeaderLimits,
    HeaderProtocol,
    HeaderTransform,
    decode_header_frame,
    encode_header_frame,
    encode_header_message,
    split_header_frame,
)
from offloop.codec.header._decode import HeaderParts, _split_common, _split_general
from offloop.codec.header._frame import _encode_general
from offloop.context import (
    DEADLINE_HEADER,
    PRINCIPAL_HEADER,
    REQUEST_ID_HEADER,
    CallContext,
)
from tests.codec.test_header import (
    FUZZ,
    LIMIT_CHOICES,
    PERMISSIVE,
    body,
    fixed_headers,
    frames,
    kv,
    mutate,
    mutations,
    telling_bytes,
)

#: offloop's own info headers, as a gateway sends them.
OFFLOOP_HEADERS = {
    DEADLINE_HEADER: "30000",
    REQUEST_ID_HEADER: "4bf92f3577b34da6a3ce929d0e0e4736",
    PRINCIPAL_HEADER: "key:alice",
}
CALL = b"\x80\x01\x00\x01\x00\x00\x00\x04ping\x00\x00\x00\x01\x0b\x00\x01\x00\x00\x00\x05hello\x00"


def general(data: bytes, limits: HeaderLimits) -> HeaderParts | HeaderError:
    try:
        return _split_general(data, limits)
    except HeaderError as exc:
        return exc


def assert_agree(data: bytes, limits: HeaderLimits) -> HeaderParts | None:
    """The fast path returns None, or what the general path returns; None where it raises."""
    fast = _split_common(data, limits)
    slow = general(data, limits)
    if isinstance(slow, HeaderError):
        assert fast is None, f"fast path accepts what the general path refuses: {slow}"
    elif fast is not None:
        assert fast == slow
        assert [type(x) for x in fast] == [type(x) for x in slow]
    # And the public entry points give the general path's answer either way.
    if isinstance(slow, HeaderError):
        with pytest.raises(type(slow)):
            split_header_frame(data, limits)
    else:
        assert split_header_frame(data, limits) == slow
    return fast


# -- decoding -------------------------------------------------------------------------------


@FUZZ
@given(frame=frames, limits=st.sampled_from(LIMIT_CHOICES))
def test_fast_and_general_decoding_agree_on_valid_frames(
    frame: HeaderFrame, limits: HeaderLimits
) -> None:
    fast = assert_agree(encode_header_frame(frame)[4:], limits)
    common = not frame.transforms and all(
        text.isascii() for item in frame.headers.items() for text in item
    )
    if common and limits is DEFAULT_HEADER_LIMITS:
        assert fast is not None, "the fast path leaves a common frame to the general path"


@FUZZ
@given(frame=frames, steps=mutations, limits=st.sampled_from(LIMIT_CHOICES))
def test_fast_and_general_decoding_agree_on_mutated_frames(
    frame: HeaderFrame, steps: list[tuple[str, int, int, int]], limits: HeaderLimits
) -> None:
    assert_agree(mutate(encode_header_frame(frame)[4:], steps), limits)


@FUZZ
@given(
    data=st.one_of(
        st.binary(max_size=200),
        st.tuples(fixed_headers, telling_bytes).map(b"".join),
        # The fast path's own shape: binary or compact, no transform, a key/value block.
        st.tuples(
            fixed_headers, st.sampled_from([b"\x00\x00\x01", b"\x02\x00\x01"]), telling_bytes
        ).map(b"".join),
    ),
    limits=st.sampled_from(LIMIT_CHOICES),
)
def test_fast_and_general_decoding_agree_on_random_bytes(data: bytes, limits: HeaderLimits) -> None:
    assert_agree(data, limits)


@FUZZ
@given(
    headers=st.dictionaries(st.text(max_size=40), st.text(max_size=140), max_size=10),
    protocol=st.sampled_from(HeaderProtocol),
    cut=st.integers(0, 400),
    limits=st.sampled_from([*LIMIT_CHOICES, HeaderLimits(max_key_length=8)]),
)
def test_fast_and_general_decoding_agree_on_cut_frames(
    headers: dict[str, str], protocol: HeaderProtocol, cut: int, limits: HeaderLimits
) -> None:
    try:
        data = encode_header_message(CALL, 3, headers, protocol=protocol)[4:]
    except Exception:  # a lone surrogate: the encoder's business, tested below
        return
    assert_agree(data, limits)
    assert_agree(data[:cut], limits)


def test_the_fast_path_takes_offloops_frames() -> None:
    # Else the properties above would pass with a fast path that never answers.
    for protocol in HeaderProtocol:
        data = encode_header_message(CALL, 7, OFFLOOP_HEADERS, protocol=protocol)[4:]
        parts = assert_agree(data, DEFAULT_HEADER_LIMITS)
        assert parts == (protocol, 0, 7, (), OFFLOOP_HEADERS, CALL)
    assert assert_agree(encode_header_message(CALL, 7)[4:], DEFAULT_HEADER_LIMITS) is not None
    # Apache's client writes a whole word of padding after its headers.
    assert assert_agree(body(b"\x00\x00" + kv((b"k", b"v")) + bytes(4), CALL), PERMISSIVE)


@pytest.mark.parametrize(
    "case",
    [
        body(b"\x00\x01\x01", zlib.compress(CALL)),  # a transform
        body(b"\x00\x00\x01\x01\x81\x00k\x01v"),  # a two-byte varint
        body(b"\x00\x00" + kv((b"k", b"v")) + kv((b"j", b"w"))),  # two key/value blocks
        body(b"\x00\x00\x02\x05"),  # an unknown info type: the rest is skipped
        body(b"\x00\x00" + kv((b"k", b"v" * 200))),  # a long value
    ],
)
def test_the_general_path_takes_the_rest(case: bytes) -> None:
    assert _split_common(case, PERMISSIVE) is None
    assert not isinstance(general(case, PERMISSIVE), HeaderError)


@pytest.mark.parametrize(
    ("case", "limits"),
    [
        (body(b"\x00\x00" + kv((b"k", b"v"), (b"j", b"w"))), HeaderLimits(max_info_headers=1)),
        (body(b"\x00\x00" + kv((b"key", b"v"))), HeaderLimits(max_key_length=2)),
        (body(b"\x00\x00" + kv((b"k", b"val"))), HeaderLimits(max_value_length=2)),
        (body(b"\x00\x00" + kv((b"k", b"v"))), HeaderLimits(max_info_bytes=1)),
        (body(b"\x00\x00" + kv((b"k", b"v"))), HeaderLimits(max_header_size=4)),
        (body(b"\x00\x00" + kv((b"k", b"v")) + b"\x00\x07"), DEFAULT_HEADER_LIMITS),  # padding
        (body(b"\x00\x00\x01\x02\x01k"), DEFAULT_HEADER_LIMITS),  # a count past the section
        (body(b"\x00\x00\x01\x01\x01k\x09v"), DEFAULT_HEADER_LIMITS),  # a value past it
        (body(b"\x01\x00"), DEFAULT_HEADER_LIMITS),  # protocol id 1
        (body(b"", CALL), DEFAULT_HEADER_LIMITS),  # no header section at all
    ],
)
def test_the_fast_path_refuses_what_the_general_path_refuses(
    case: bytes, limits: HeaderLimits
) -> None:
    assert isinstance(general(case, limits), HeaderError)
    assert _split_common(case, limits) is None


def test_decode_header_frame_is_split_header_frame_as_a_frame() -> None:
    data = encode_header_message(CALL, -5, OFFLOOP_HEADERS, flags=9)[4:]
    frame = decode_header_frame(data)
    assert frame == HeaderFrame(flags=9, seqid=-5, headers=OFFLOOP_HEADERS, payload=CALL)
    assert type(frame.protocol) is HeaderProtocol
    with pytest.raises(AttributeError):
        frame.seqid = 1  # type: ignore[misc]


# -- encoding -------------------------------------------------------------------------------


def encoded(fn: Any, *args: Any) -> bytes | type[BaseException]:
    try:
        return bytes(fn(*args))
    except Exception as exc:
        return type(exc)


#: Keys and values that take both paths: short and long, text and surrogates, not a str.
anything = st.one_of(
    st.text(max_size=10),
    st.text(min_size=120, max_size=140),
    st.binary(max_size=12).map(lambda b: b.decode("utf-8", "surrogateescape")),
    st.just("\udfff\ud800"),  # a lone surrogate that stands for no byte
    st.integers(),
)


@FUZZ
@given(
    headers=st.one_of(
        st.dictionaries(anything, anything, max_size=6),
        st.dictionaries(st.integers(0, 500).map(str), st.just(""), min_size=120, max_size=140),
    ),
    payload=st.binary(max_size=50),
    protocol=st.sampled_from(HeaderProtocol),
    flags=st.integers(0, 0xFFFF),
    seqid=st.integers(-(2**31), 2**31 - 1),
    transforms=st.sampled_from([(), (HeaderTransform.ZLIB,)]),
)
def test_fast_and_general_encoding_agree(
    headers: dict[Any, Any],
    payload: bytes,
    protocol: HeaderProtocol,
    flags: int,
    seqid: int,
    transforms: tuple[HeaderTransform, ...],
) -> None:
    fast = encoded(
        lambda: encode_header_message(
            payload, seqid, headers, protocol=protocol, flags=flags, transforms=transforms
        )
    )
    slow = encoded(_encode_general, payload, seqid, headers, protocol, flags, transforms)
    assert fast == slow


def test_encoding_offloops_frame_is_byte_for_byte_the_general_encoding() -> None:
    fast = encode_header_message(CALL, 7, OFFLOOP_HEADERS, protocol=HeaderProtocol.COMPACT)
    assert fast == _encode_general(CALL, 7, OFFLOOP_HEADERS, HeaderProtocol.COMPACT, 0, ())
    assert type(fast) is bytes
    (length,) = struct.unpack_from("!I", fast)
    assert length == len(fast) - 4


@FUZZ
@given(frame=frames, headers=st.dictionaries(st.text(max_size=8), st.text(max_size=8)))
def test_encode_reply_is_the_reply_frame_encoded(
    frame: HeaderFrame, headers: dict[str, str]
) -> None:
    assert frame.encode_reply(CALL, headers) == encode_header_frame(frame.reply(CALL, headers))
    assert frame.encode_reply(CALL, transforms=()) == encode_header_frame(
        frame.reply(CALL, transforms=())
    )


# -- the context a worker reads from the headers ----------------------------------------------

_OLD_DIGITS = re.compile(r"[0-9]{1,10}")  # what the deadline parser replaced


@pytest.mark.parametrize(
    "ms",
    ["0", "1", "250", "0000000001", "9999999999", "99999999999", "", " 1", "1 ", "+1", "-1",
     "1.5", "1e3", "\uff11", "\u00b2", "\u0661", "12a", "a"],
)  # fmt: skip
def test_deadline_header_is_read_as_before(ms: str) -> None:
    context = CallContext.from_headers({DEADLINE_HEADER: ms}, 100.0)
    if _OLD_DIGITS.fullmatch(ms):
        assert context.deadline == 100.0 + min(int(ms), 24 * 3600 * 1000) / 1000
    else:
        assert context.deadline is None


def test_from_headers_makes_a_whole_context() -> None:
    context = CallContext.from_headers(OFFLOOP_HEADERS, 10.0)
    assert context == CallContext(
        request_id=OFFLOOP_HEADERS[REQUEST_ID_HEADER],
        deadline=40.0,
        principal="key:alice",
        headers=OFFLOOP_HEADERS,
    )
    assert hash(context) == hash(CallContext(OFFLOOP_HEADERS[REQUEST_ID_HEADER], 40.0, "key:alice"))
    assert CallContext.from_headers({REQUEST_ID_HEADER: "no spaces"}, 0.0).request_id is None
    assert CallContext.from_headers({}, 0.0) == CallContext()
