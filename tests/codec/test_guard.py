"""The decode guard, sans-I/O: issue 11's attacks refused, every valid message accepted.

The attacks are built by hand with ``struct.pack`` and only ever shown to the guard: run
against thriftpy2 they take seconds (binary) or never end (compact).
"""

from __future__ import annotations

import dataclasses
import struct
from pathlib import Path
from typing import Any, Literal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from thriftpy2.protocol.compact import TCompactProtocol
from thriftpy2.protocol.cybin import TCyBinaryProtocol
from thriftpy2.thrift import TApplicationException, TType
from thriftpy2.transport.memory import TCyMemoryBuffer

from offloop.codec.guard import DEFAULT_LIMITS, DecodeLimits, MessageRefused, check_message
from offloop.errors import RemoteProtocolError
from offloop.idl import load_idl, service_info

IDL = Path(__file__).resolve().parent.parent / "idl" / "alltypes.thrift"
m = load_idl(IDL)
ALLTYPES = service_info(m, "AllTypes").methods
SECOND = service_info(m, "Second").methods
METHODS = [*ALLTYPES.values(), *SECOND.values()]
ProtocolName = Literal["binary", "compact"]
PROTOCOLS: tuple[ProtocolName, ...] = ("binary", "compact")
CALL, REPLY, EXCEPTION, ONEWAY = 1, 2, 3, 4
I32_MAX = 2**31 - 1


def encode(
    protocol: ProtocolName, obj: Any, *, name: str = "m", mtype: int = CALL, strict: bool = True
) -> bytes:
    """One message as thriftpy2 writes it (``TCyMemoryBuffer``, as ``MessageCodec`` does)."""
    buf = TCyMemoryBuffer()
    if protocol == "binary":
        proto: Any = TCyBinaryProtocol(buf, strict_write=strict)
    else:
        proto = TCompactProtocol(buf)
    proto.write_message_begin(name, mtype, 12345)
    proto.write_struct(obj)
    proto.write_message_end()
    return bytes(buf.getvalue())


def refused(data: bytes, protocol: ProtocolName, match: str, **kwargs: Any) -> MessageRefused:
    with pytest.raises(MessageRefused, match=match) as info:
        check_message(data, protocol, **kwargs)
    return info.value


# -- hand-built messages --------------------------------------------------------------------


def binary_call(name: bytes, fields: bytes, mtype: int = CALL) -> bytes:
    """A strict binary message: version word, name, seqid, then ``fields`` and a STOP."""
    header = struct.pack(">Ii", 0x80010000 | mtype, len(name)) + name + struct.pack(">i", 1)
    return header + fields + b"\x00"


def binary_field(ttype: int, fid: int) -> bytes:
    return struct.pack(">Bh", ttype, fid)


def varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def compact_call(name: bytes, fields: bytes, mtype: int = CALL) -> bytes:
    """A compact message: protocol id, version and type, seqid, name, ``fields``, a STOP."""
    return bytes([0x82, mtype << 5 | 1, 1]) + varint(len(name)) + name + fields + b"\x00"


# -- issue 11: the attacks ----------------------------------------------------------------


def test_binary_unknown_list_of_void_is_refused() -> None:
    # 2**31-1 VOIDs: thriftpy2's skip loop runs 2**31 times (3.3 s) on 20 bytes.
    fields = binary_field(TType.LIST, 99) + bytes([TType.VOID]) + struct.pack(">i", I32_MAX)
    data = binary_call(b"", fields)
    assert len(data) == 21
    error = refused(data, "binary", r"list element type VOID is not a value type")
    assert error.offset == 15
    assert "byte 15" in str(error)


def test_binary_unknown_map_of_stop_is_refused() -> None:
    fields = binary_field(TType.MAP, 99) + b"\x00\x00" + struct.pack(">i", I32_MAX)
    data = binary_call(b"sumXtructs", fields)
    refused(data, "binary", r"map key type STOP is not a value type")
    refused(data, "binary", r"map key type STOP", body=ALLTYPES["sumXtructs"].args_cls)


def test_binary_declared_list_with_void_elements_is_refused() -> None:
    # sumXtructs(1: list<Xtruct>): the element types disagree, so thriftpy2 skips 2**31 VOIDs.
    fields = binary_field(TType.LIST, 1) + bytes([TType.VOID]) + struct.pack(">i", I32_MAX)
    data = binary_call(b"sumXtructs", fields)
    refused(data, "binary", r"VOID is not a value type", body=ALLTYPES["sumXtructs"].args_cls)


@pytest.mark.parametrize("code", [0, 1, 5, 7, 9, 16, 17, 18, 19, 255])
def test_binary_type_codes_that_take_no_bytes_are_refused(code: int) -> None:
    # thriftpy2's skip reads nothing for these (16 is UUID, which it cannot read).
    as_field = binary_call(b"", binary_field(code, 1) + b"\x00" * 8)
    as_element = binary_call(b"", binary_field(TType.LIST, 1) + bytes([code, 0, 0, 0, 1, 0]))
    as_value = binary_call(b"", binary_field(TType.MAP, 1) + bytes([8, code, 0, 0, 0, 0]))
    if code != 0:  # a STOP field type ends the struct: its bytes are then trailing garbage
        refused(as_field, "binary", "field type .* is not a value type")
    refused(as_element, "binary", "list element type .* is not a value type")
    refused(as_value, "binary", "map value type .* is not a value type")


def test_binary_negative_sizes_are_refused() -> None:
    list_i32 = binary_field(TType.LIST, 1) + bytes([TType.I32]) + struct.pack(">i", -1)
    refused(binary_call(b"testList", list_i32), "binary", r"negative list size -1")
    a_map = binary_field(TType.MAP, 1) + bytes([TType.I32, TType.I32]) + struct.pack(">i", -5)
    refused(binary_call(b"testMap", a_map), "binary", r"negative map size -5")
    a_set = binary_field(TType.SET, 1) + bytes([TType.I32]) + struct.pack(">i", -(2**31))
    refused(binary_call(b"testSet", a_set), "binary", r"negative set size")
    a_string = binary_field(TType.STRING, 1) + struct.pack(">i", -3)
    refused(binary_call(b"testString", a_string), "binary", r"negative length -3")
    strings = binary_field(TType.LIST, 1) + bytes([TType.STRING]) + struct.pack(">iii", 2, 0, -1)
    refused(binary_call(b"", strings), "binary", r"negative length -1 of a string")
    strings = binary_field(TType.LIST, 1) + bytes([TType.STRING]) + struct.pack(">iii", 2, 0, 9)
    refused(binary_call(b"", strings), "binary", r"a string of 9 bytes, 1 left")


def test_binary_counts_beyond_the_bytes_present_are_refused() -> None:
    # 2**31-1 i32s would be 8 GiB; the message has a handful of bytes.
    fields = binary_field(TType.LIST, 1) + bytes([TType.I32]) + struct.pack(">i", I32_MAX)
    refused(binary_call(b"testList", fields + b"\x00" * 8), "binary", r"needs at least")
    # Empty structs take one byte each: 5 need 5 bytes, 4 are there (the STOPs).
    fields = binary_field(TType.LIST, 1) + bytes([TType.STRUCT]) + struct.pack(">i", 5)
    refused(binary_call(b"", fields + b"\x00" * 3), "binary", r"5 STRUCT needs at least 5")
    # A 2 GiB string in a 30-byte message.
    fields = binary_field(TType.STRING, 1) + struct.pack(">i", I32_MAX)
    refused(binary_call(b"testString", fields), "binary", r"of 2147483647 bytes, \d+ left")


def test_compact_unknown_list_of_stop_is_refused() -> None:
    # 2**62 STOPs: thriftpy2's skip loop never ends, on 27 bytes.
    fields = bytes([0x19, 0xF0]) + varint(2**62)
    data = compact_call(b"sumXtructs", fields)
    assert len(data) <= 27
    refused(data, "compact", r"list size varint is longer than 5 bytes")
    # The same list with a size that fits an i32 is refused for its element type.
    data = compact_call(b"sumXtructs", bytes([0x29, 0xF0]) + varint(I32_MAX))
    refused(data, "compact", r"list element type STOP is not a value type")
    data = compact_call(b"", bytes([0x29, 0xE0]))  # 14 STOPs, short form
    refused(data, "compact", r"list element type STOP is not a value type")


@pytest.mark.parametrize("code", [0, 13, 14, 15])
def test_compact_type_codes_that_are_not_values_are_refused(code: int) -> None:
    as_element = compact_call(b"", bytes([0x19, 0x10 | code, 0]))
    as_key = compact_call(b"", bytes([0x1B, 1, code << 4 | 5, 0, 0]))
    as_value = compact_call(b"", bytes([0x1B, 1, 0x50 | code, 0, 0]))
    refused(as_element, "compact", r"list element type .* is not a value type")
    refused(as_key, "compact", r"map key type .* is not a value type")
    refused(as_value, "compact", r"map value type .* is not a value type")
    if code:
        refused(compact_call(b"", bytes([0x10 | code])), "compact", r"field type .* not a value")


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        # An i64 field whose varint is 150 KB long: thriftpy2 decodes it in 0.6 s (quadratic).
        (b"\x16" + b"\xff" * 150_000 + b"\x01", r"an I64 varint is longer than 10 bytes"),
        (b"\x15" + b"\xff" * 150_000 + b"\x01", r"an I32 varint is longer than 5 bytes"),
        (b"\x14" + b"\xff" * 5 + b"\x01", r"an I16 varint is longer than 5 bytes"),
        (b"\x18" + b"\x80" * 150_000 + b"\x00", r"string length varint is longer than 5"),
        (b"\x05" + b"\xff" * 150_000 + b"\x01", r"field id varint is longer than 5 bytes"),
        (b"\x1b" + b"\x80" * 150_000 + b"\x01", r"map size varint is longer than 5 bytes"),
        # The same in a long run of list elements (the fast path): one bad varint among many.
        (b"\x19\xf6" + varint(200) + b"\x01" * 100 + b"\xff" * 11 + b"\x01" * 99, r"I64 varint"),
        (b"\x19\xf5" + varint(200) + b"\x01" * 150 + b"\x80" * 5 + b"\x01" * 49, r"I32 varint"),
    ],
)
def test_compact_run_on_varints_are_refused(fields: bytes, match: str) -> None:
    refused(compact_call(b"ping", fields), "compact", match)


def test_compact_sizes_over_i32_are_refused() -> None:
    # Negative as an i32 to Apache's readers; thriftpy2 would take 2**32-1.
    for size in (2**31, 2**32 - 1, 2**35 - 1):
        data = compact_call(b"", b"\x18" + varint(size))
        refused(data, "compact", r"string length \d+ is over 2\*\*31-1")
        data = compact_call(b"", b"\x19\xf5" + varint(size))
        refused(data, "compact", r"list size \d+ is over 2\*\*31-1")


def test_compact_counts_beyond_the_bytes_present_are_refused() -> None:
    data = compact_call(b"", b"\x19\xf5" + varint(I32_MAX) + b"\x00" * 20)
    refused(data, "compact", r"list of 2147483647 I32 needs at least 2147483647 bytes")
    data = compact_call(b"", b"\x19\xf7" + varint(3) + b"\x00" * 16)  # 3 doubles: 24 bytes
    refused(data, "compact", r"list of 3 DOUBLE needs at least 24 bytes, 17 left")
    data = compact_call(b"", b"\x1b" + varint(1000) + b"\x55" + b"\x00" * 100)
    refused(data, "compact", r"map of 1000 I32->I32 needs at least 2000 bytes")
    data = compact_call(b"", b"\x18" + varint(1000) + b"x" * 10)
    refused(data, "compact", r"string of 1000 bytes, 11 left")


def test_a_stop_with_a_field_delta_is_refused() -> None:
    # thriftpy2 reads 0x10 as STOP; no writer sends it.
    data = compact_call(b"", b"\x10")
    refused(data, "compact", r"field header 0x10: STOP with an id delta")


# -- hidden in a string: where thriftpy2 reads a type the wire does not declare -----------


def test_compact_list_whose_wire_type_disagrees_with_the_idl_is_refused() -> None:
    # sumXtructs(1: list<Xtruct>) sent as a list of one string. thriftpy2 ignores the
    # element type and reads an Xtruct from the string's bytes: length 0x11 reads as a
    # bool field; the payload then holds a list<STOP> of 2**62 that never ends.
    payload = bytes([0x19, 0xF0]) + varint(2**62)
    payload += bytes(0x11 - len(payload))
    data = compact_call(b"sumXtructs", bytes([0x19, 0x18, 0x11]) + payload)
    check_message(data, "compact")  # well-formed, structurally
    refused(
        data,
        "compact",
        r"list elements are BINARY on the wire but STRUCT in the IDL",
        body=ALLTYPES["sumXtructs"].args_cls,
    )


def test_map_keys_sent_as_strings_for_a_struct_key_are_refused() -> None:
    # Containers.by_struct is map<Bonk, i32>: thriftpy2 reads keys sent as strings as Bonk
    # structs, from the string's length on; the payload holds a list<VOID> of 2**31-1.
    payload = b"\x00" + binary_field(TType.LIST, 99) + b"\x01" + struct.pack(">i", I32_MAX)
    containers = (
        binary_field(TType.MAP, 6)
        + bytes([TType.STRING, TType.I32])
        + struct.pack(">ii", 1, len(payload))
        + payload
        + struct.pack(">i", 5)
        + b"\x00"
    )
    data = binary_call(b"echoContainers", binary_field(TType.STRUCT, 1) + containers)
    check_message(data, "binary")
    args = ALLTYPES["echoContainers"].args_cls
    refused(data, "binary", r"map keys are strings on the wire but STRUCT in the IDL", body=args)
    # The same in compact.
    payload = bytes([0x00, 0x19, 0xF0]) + varint(2**62)
    containers = bytes([0x6B, 1, 0x85, len(payload)]) + payload + b"\x0a\x00"
    data = compact_call(b"echoContainers", b"\x1c" + containers)
    check_message(data, "compact")
    refused(data, "compact", r"map keys are strings on the wire but STRUCT", body=args)


def test_disagreements_thriftpy2_skips_by_wire_type_are_accepted() -> None:
    # A field or a binary list of another type than declared is skipped by its wire type.
    other = m.Xtruct(string_thing="s", i32_thing=3)
    for protocol in PROTOCOLS:
        data = encode(protocol, m.Containers(ints=[1, 2, 3], by_int={1: "a"}))
        check_message(data, protocol, body=m.Xtruct)  # field ids 1 and 3 mean other types
        data = encode(protocol, other)
        check_message(data, protocol, body=m.Containers)
    elements = binary_field(TType.LIST, 1) + bytes([TType.I64]) + struct.pack(">iq", 1, 7)
    check_message(binary_call(b"", elements), "binary", body=m.Containers)  # list<i32>
    # An empty compact map has no types, so nothing to disagree with.
    check_message(compact_call(b"", b"\x3b\x00"), "compact", body=m.Containers)  # by_int


# -- headers ------------------------------------------------------------------------------


def test_binary_header_forms() -> None:
    obj = m.Xtruct(string_thing="x")
    strict = encode("binary", obj, name="testStruct")
    old = encode("binary", obj, name="testStruct", strict=False)
    assert strict[:4] == b"\x80\x01\x00\x01" and old[:4] == b"\x00\x00\x00\x0a"
    for data in (strict, old):
        check_message(data, "binary", body=m.Xtruct)
    refused(b"\x80\x02\x00\x01" + strict[4:], "binary", r"bad version word 0x80020001")
    refused(b"\x80\x01\x01\x01" + strict[4:], "binary", r"bad version word")
    refused(b"\x80\x01\x00\x05" + strict[4:], "binary", r"message type 5 is not CALL")
    refused(b"\x80\x01\x00\x00" + strict[4:], "binary", r"message type 0")
    refused(old.replace(b"testStruct\x01", b"testStruct\x07"), "binary", r"message type 7")
    refused(b"\x7f\xff\xff\xff" + old[4:], "binary", r"method name of 2147483647 bytes")
    refused(b"\x80\x01\x00\x01\xff\xff\xff\xff", "binary", r"negative length -1 of method name")


def test_compact_header_forms() -> None:
    data = encode("compact", m.Xtruct(string_thing="x"), name="testStruct", mtype=ONEWAY)
    check_message(data, "compact", body=m.Xtruct)
    refused(b"\x80" + data[1:], "compact", r"protocol id 0x80 \(expected 0x82\)")
    refused(data[:1] + b"\x82" + data[2:], "compact", r"version 2 \(expected 1\)")
    refused(data[:1] + b"\xa1" + data[2:], "compact", r"message type 5")
    refused(b"\x82\x21" + b"\xff" * 1_000_000, "compact", r"the seqid varint is longer than 5")
    refused(b"\x82\x21\x01" + b"\xff" * 1_000_000, "compact", r"name length varint is longer")
    refused(b"\x82\x21\x01\x7f" + b"ab", "compact", r"method name of 127 bytes, 2 left")


def test_a_mapping_of_bodies_refuses_other_message_types() -> None:
    method = ALLTYPES["testStruct"]
    bodies = {REPLY: method.result_cls, EXCEPTION: TApplicationException}
    for protocol in PROTOCOLS:
        reply = encode(protocol, method.result_cls(success=m.Xtruct()), mtype=REPLY)
        check_message(reply, protocol, body=bodies)
        fault = encode(protocol, TApplicationException(6, "boom"), mtype=EXCEPTION)
        check_message(fault, protocol, body=bodies)
        call = encode(protocol, method.args_cls(thing=m.Xtruct()), mtype=CALL)
        refused(
            call,
            protocol,
            r"unexpected message type CALL \(expected REPLY or EXCEPTION\)",
            body=bodies,
        )


# -- limits and the error -------------------------------------------------------------------


class _Holder:
    """A struct of one field, for specs the test IDL does not declare."""

    def __init__(self, ttype: int, spec: Any, value: Any) -> None:
        self.thrift_spec = {1: (ttype, "f", spec, False)}
        self.f = value


def nested_lists(protocol: ProtocolName, depth: int) -> bytes:
    """A message whose field 1 is ``depth`` lists nested in each other around one i32.

    Built by hand: thriftpy2's binary writer refuses to nest past its own limit of 64.
    """
    if protocol == "binary":
        outer = bytes([TType.LIST]) + struct.pack(">i", 1)
        inner = bytes([TType.I32]) + struct.pack(">ii", 1, 7)
        return binary_call(b"", binary_field(TType.LIST, 1) + outer * (depth - 1) + inner)
    return compact_call(b"", b"\x19" + b"\x19" * (depth - 1) + b"\x15\x0e")


def nested_structs(protocol: ProtocolName, depth: int) -> bytes:
    """A Node whose ``parent_hint`` (field 3) nests ``depth`` Nodes deep, labels left out."""
    if protocol == "binary":
        return binary_call(b"", binary_field(TType.STRUCT, 3) * depth + b"\x00" * depth)
    return compact_call(b"", b"\x3c" * depth + b"\x00" * depth)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_nesting_deeper_than_the_limit_is_refused(protocol: ProtocolName) -> None:
    # The top struct is level 1, its list field level 2: 63 lists reach the default 64.
    check_message(nested_lists(protocol, 63), protocol)
    deeper = nested_lists(protocol, 64)
    refused(deeper, protocol, r"nest deeper than 64")
    check_message(deeper, protocol, DecodeLimits(max_depth=65))
    refused(nested_lists(protocol, 9), protocol, r"nest deeper than 9", limits=DecodeLimits(9))
    # Structs count too.
    check_message(nested_structs(protocol, 63), protocol, body=m.Node)
    refused(nested_structs(protocol, 64), protocol, r"nest deeper than 64", body=m.Node)
    # An empty struct in a list (skipped inline in big lists) at level 4.
    data = encode(protocol, m.Containers(nested=[[m.Xtruct()]]))
    check_message(data, protocol, DecodeLimits(max_depth=4))
    refused(data, protocol, r"nest deeper than 3", limits=DecodeLimits(max_depth=3))


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_max_elements_caps_the_elements_of_a_whole_message(protocol: ProtocolName) -> None:
    data = encode(protocol, m.Containers(ints=list(range(10)), by_int={1: "a", 2: "b"}))
    check_message(data, protocol, DecodeLimits(max_elements=14))
    refused(
        data, protocol, r"more than 13 container elements", limits=DecodeLimits(max_elements=13)
    )
    refused(data, protocol, r"more than 9 container", limits=DecodeLimits(max_elements=9))


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_trailing_bytes_are_refused_unless_allowed(protocol: ProtocolName) -> None:
    data = encode(protocol, m.Xtruct(string_thing="x")) + b"\x00\x01"
    error = refused(data, protocol, r"2 bytes after the end of the message")
    assert error.offset == len(data) - 2
    check_message(data, protocol, DecodeLimits(allow_trailing_bytes=True))


def test_limits_are_validated_and_frozen() -> None:
    assert (
        DecodeLimits(max_depth=64, max_elements=None, allow_trailing_bytes=False) == DEFAULT_LIMITS
    )
    with pytest.raises(ValueError, match="max_depth"):
        DecodeLimits(max_depth=0)
    with pytest.raises(ValueError, match="max_elements"):
        DecodeLimits(max_elements=-1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        DEFAULT_LIMITS.max_depth = 3  # type: ignore[misc]
    assert dataclasses.replace(DEFAULT_LIMITS, max_depth=8).max_depth == 8


def test_the_error_names_the_fault_and_where_and_blames_the_peer() -> None:
    error = refused(b"\x82\x21\x01", "compact", "ends inside")
    assert isinstance(error, RemoteProtocolError)
    assert (error.protocol, error.offset) == ("compact", 3)
    assert error.reason == "the message ends inside method name length varint"
    assert str(error) == f"compact Thrift message refused at byte 3: {error.reason}"
    assert error.public_message == "malformed compact Thrift message"
    with pytest.raises(ValueError, match="unknown Thrift protocol"):
        check_message(b"", "json")  # type: ignore[arg-type]


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("data", [b"", b"\x00", b"\x80", b"\x82", b"\x80\x01\x00"])
def test_empty_and_tiny_messages_are_refused(protocol: ProtocolName, data: bytes) -> None:
    refused(data, protocol, r"ends inside|protocol id|is not CALL")


# -- every valid message passes; every truncation is refused --------------------------------

_INT_BOUNDS = {
    TType.BYTE: (-(2**7), 2**7 - 1),
    TType.I16: (-(2**15), 2**15 - 1),
    TType.I32: (-(2**31), 2**31 - 1),
    TType.I64: (-(2**63), 2**63 - 1),
}
#: Recursive structs (Node) stop growing below this depth.
_MAX_GEN_DEPTH = 3


def _split(spec: Any) -> tuple[int, Any]:
    return (spec[0], spec[1]) if isinstance(spec, tuple) else (spec, None)


def values(ttype: int, spec: Any, depth: int = 0, key: bool = False) -> st.SearchStrategy[Any]:
    """Values thriftpy2 would hold for ``(ttype, spec)``; ``key`` ones are hashable."""
    if ttype == TType.BOOL:
        return st.booleans()
    if ttype == TType.I32 and spec is not None:
        return st.sampled_from(sorted(spec._VALUES_TO_NAMES))
    if ttype in _INT_BOUNDS:
        return st.integers(*_INT_BOUNDS[ttype])
    if ttype == TType.DOUBLE:
        return st.floats(allow_nan=not key)
    if ttype == TType.STRING:
        return st.text(max_size=12)
    if ttype == TType.BINARY:
        return st.binary(max_size=12)
    if ttype == TType.STRUCT:
        return structs(spec, depth)
    if depth >= _MAX_GEN_DEPTH and ttype in (TType.LIST, TType.SET, TType.MAP):
        return st.just({} if ttype == TType.MAP else [])
    size = 4
    if ttype in (TType.LIST, TType.SET):
        return st.lists(values(*_split(spec), depth + 1, key=ttype == TType.SET), max_size=size)
    if ttype == TType.MAP:
        keys = values(*_split(spec[0]), depth + 1, key=True)
        return st.dictionaries(keys, values(*_split(spec[1]), depth + 1), max_size=size)
    raise AssertionError(f"no strategy for {ttype}")


def structs(cls: Any, depth: int = 0) -> st.SearchStrategy[Any]:
    fields: dict[str, st.SearchStrategy[Any]] = {}
    for field in cls.thrift_spec.values():
        ttype, spec = field[0], field[2] if len(field) > 3 else None
        if ttype == TType.STRUCT and depth >= _MAX_GEN_DEPTH and not field[-1]:
            fields[field[1]] = st.none()
        else:
            value = values(ttype, spec, depth + 1)
            fields[field[1]] = value if field[-1] else st.none() | value
    return st.fixed_dictionaries(fields).map(lambda kwargs: cls(**kwargs))


#: Every struct of the test IDL, and every method's arguments and result.
BODIES = [
    *(getattr(m, name) for name in ("Bonk", "Xtruct", "Xtruct2", "Scalars", "Insanity")),
    *(getattr(m, name) for name in ("Containers", "Node", "Xception", "Xception2")),
    *(method.args_cls for method in METHODS),
    *(method.result_cls for method in METHODS),
    TApplicationException,
]


@st.composite
def messages(draw: st.DrawFn) -> tuple[ProtocolName, bytes, Any]:
    """(protocol, message, body class) for a value of any struct of the test IDL."""
    protocol = draw(st.sampled_from(PROTOCOLS))
    cls = draw(st.sampled_from(BODIES))
    if cls is TApplicationException:
        obj = TApplicationException(draw(st.integers(0, 10)), draw(st.text(max_size=20)))
    else:
        obj = draw(structs(cls))
    mtype = draw(st.sampled_from((CALL, REPLY, EXCEPTION, ONEWAY)))
    name = draw(st.text(max_size=20))
    strict = protocol == "compact" or draw(st.booleans())
    return protocol, encode(protocol, obj, name=name, mtype=mtype, strict=strict), cls


@settings(max_examples=300, deadline=None)
@given(message=messages())
def test_every_valid_message_passes(message: tuple[ProtocolName, bytes, Any]) -> None:
    protocol, data, cls = message
    check_message(data, protocol)
    check_message(data, protocol, body=cls)


@settings(max_examples=100, deadline=None)
@given(message=messages(), data=st.data())
def test_every_truncation_of_a_valid_message_is_refused(
    message: tuple[ProtocolName, bytes, Any], data: st.DataObject
) -> None:
    protocol, whole, cls = message
    cut = data.draw(st.integers(0, len(whole) - 1))
    for body in (None, cls):
        with pytest.raises(MessageRefused):
            check_message(whole[:cut], protocol, body=body)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_every_truncation_of_a_big_message_is_refused(protocol: ProtocolName) -> None:
    # Every cut, including those inside the long runs the fast paths skip.
    x = m.Xtruct(string_thing="s", byte_thing=1, i32_thing=-9, i64_thing=2**40)
    obj = m.Containers(
        ints=[-(2**31), 0, 2**31 - 1, *range(-50, 50)],
        strings=["", "ab", "ü" * 20],
        by_int={i: str(i) for i in range(40)},
        deep={i: [[1, 2], []] for i in range(-40, 40, 7)},
        nested=[[x] * 3, []],
        by_enum={1: x},
        by_bool={True: "t", False: "f"},
        by_double={0.5: "h"},
    )
    whole = encode(protocol, obj)
    check_message(whole, protocol, body=m.Containers)
    for cut in range(len(whole)):
        with pytest.raises(MessageRefused):
            check_message(whole[:cut], protocol, body=m.Containers)


int_lists = st.lists(
    st.one_of(st.integers(-(2**31), 2**31 - 1), st.integers(-64, 64)), min_size=0, max_size=300
)


@settings(max_examples=100, deadline=None)
@given(ints=int_lists, wide=st.lists(st.integers(-(2**63), 2**63 - 1), max_size=200))
def test_runs_of_varints_of_any_lengths_pass(ints: list[int], wide: list[int]) -> None:
    obj = m.Containers(ints=ints, deep={n: [] for n in wide}, by_int=dict.fromkeys(ints, "v"))
    check_message(encode("compact", obj), "compact", body=m.Containers)
    pairs = ALLTYPES["testMap"].args_cls(thing={n: -n for n in ints if n > -(2**31)})
    check_message(encode("compact", pairs), "compact", body=ALLTYPES["testMap"].args_cls)
    check_message(encode("compact", _Holder(TType.LIST, TType.I64, wide)), "compact")


@settings(max_examples=100, deadline=None)
@given(ints=st.lists(st.integers(-(2**31), 2**31 - 1), min_size=40, max_size=300), data=st.data())
def test_a_too_long_varint_anywhere_in_a_run_is_refused(
    ints: list[int], data: st.DataObject
) -> None:
    # list<i32> as field 1: header 0x19, list header 0xf5, its size, then the varints.
    good = b"\x19\xf5" + varint(len(ints)) + b"".join(varint((n << 1) ^ (n >> 31)) for n in ints)
    check_message(compact_call(b"", good), "compact")
    at = data.draw(st.integers(0, len(ints) - 1))
    body = [varint((n << 1) ^ (n >> 31)) for n in ints]
    body[at] = b"\x80" * data.draw(st.integers(5, 12)) + b"\x00"
    bad = b"\x19\xf5" + varint(len(ints)) + b"".join(body)
    refused(compact_call(b"", bad), "compact", r"I32 varint is longer than 5 bytes")
