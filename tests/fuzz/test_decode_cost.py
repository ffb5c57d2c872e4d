"""Fuzzing the decode guard, and what it costs per byte.

- Whatever the bytes (random, mutated valid messages, well-formed messages of random types,
  messages of the test IDL with some types swapped), the guard passes or raises
  :class:`MessageRefused`, never anything else.
- When it passes, given the struct class, thriftpy2's decode of the same bytes is quick (a
  CPU watchdog), succeeds, and stops at the very end the guard found. So thriftpy2 read the
  structure the guard checked, whose cost is bounded by its length: that is what shows the
  guard is sufficient. (With either of the guard's IDL checks switched off, the
  swapped-types test usually finds a message thriftpy2 reads otherwise, even at the default
  example count.)
- The guard's CPU time on worst-case inputs grows linearly with their size.

``OFFLOOP_FUZZ_EXAMPLES`` sets how many examples each fuzz test draws (default 100); the
``slow`` tests run in ``make test`` too, so the default stays small.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from thriftpy2.protocol.compact import TCompactProtocol
from thriftpy2.protocol.cybin import TCyBinaryProtocol
from thriftpy2.thrift import TApplicationException, TType
from thriftpy2.transport.base import TTransportException
from thriftpy2.transport.buffered import TCyBufferedTransport
from thriftpy2.transport.memory import TCyMemoryBuffer

from offloop.codec.guard import MessageRefused, check_message
from offloop.idl import load_idl, service_info

IDL = Path(__file__).resolve().parent.parent / "idl" / "alltypes.thrift"
m = load_idl(IDL)
METHODS = [
    *service_info(m, "AllTypes").methods.values(),
    *service_info(m, "Second").methods.values(),
]
ProtocolName = Literal["binary", "compact"]
PROTOCOLS: tuple[ProtocolName, ...] = ("binary", "compact")
EXAMPLES = int(os.environ.get("OFFLOOP_FUZZ_EXAMPLES", "100"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
#: A hang detector, not a performance bound: an honest decode of these few-KB messages takes
#: well under a millisecond; issue 11's attacks take 3 s (binary) or never end (compact).
DECODE_WATCHDOG_S = 2.0

#: The classes thriftpy2 decodes bodies into: every struct of the test IDL, every method's
#: arguments and result, and the exception replies' class.
BODIES = [
    *(getattr(m, name) for name in ("Bonk", "Xtruct", "Xtruct2", "Scalars", "Insanity")),
    *(getattr(m, name) for name in ("Containers", "Node", "Xception", "Xception2")),
    *(method.args_cls for method in METHODS),
    *(method.result_cls for method in METHODS),
    TApplicationException,
]


def encode(protocol: str, obj: Any, name: str = "m", mtype: int = 1) -> bytes:
    buf = TCyMemoryBuffer()
    proto: Any = TCyBinaryProtocol(buf) if protocol == "binary" else TCompactProtocol(buf)
    proto.write_message_begin(name, mtype, 99)
    proto.write_struct(obj)
    proto.write_message_end()
    return bytes(buf.getvalue())


def decode_ends(protocol: ProtocolName, data: bytes, cls: Any) -> None:
    """Decode a message the guard passed as ``offloop.codec.message.MessageCodec`` does."""
    if protocol == "binary":
        transport = TCyBufferedTransport(io.BytesIO(data), buf_size=max(len(data), 4096))
        proto: Any = TCyBinaryProtocol(transport)
    else:
        proto = TCompactProtocol(TCyMemoryBuffer(data))
    started = time.process_time()
    error: Exception | None = None
    try:
        proto.read_message_begin()
        proto.read_struct(cls())
    except Exception as exc:
        error = exc
    spent = time.process_time() - started
    assert spent < DECODE_WATCHDOG_S, f"thriftpy2 spent {spent:.1f} s CPU on {len(data)} bytes"
    if protocol == "binary" and not data[0] & 0x80:
        return  # the old header form: the guard reads it, thriftpy2 is set to refuse it
    # The guard read exactly this message, no byte left over, as thriftpy2 will read it; so
    # thriftpy2 must succeed and stop at the same end. A decode that fails or stops early read
    # another structure than the guard did, which is how a payload hidden in a string gets
    # past a guard: this catches such a drift even when it happens to be cheap.
    assert error is None, f"thriftpy2 failed where the guard passed: {error!r}"
    assert _at_end(proto.trans), "thriftpy2 stopped before the end the guard found"


def _at_end(transport: Any) -> bool:
    try:
        return not transport.read(1)
    except TTransportException:  # the buffered transport raises at its end
        return True


def guard_then_decode(protocol: ProtocolName, data: bytes, cls: Any) -> None:
    """The property: the guard refuses with its own error, or thriftpy2 reads the message
    quickly and as the guard did."""
    try:
        check_message(data, protocol, body=cls)
    except MessageRefused:
        return
    decode_ends(protocol, data, cls)


# -- well-formed messages of random wire types ----------------------------------------------

SCALARS = (
    TType.BOOL,
    TType.BYTE,
    TType.I16,
    TType.I32,
    TType.I64,
    TType.DOUBLE,
    TType.STRING,
    TType.BINARY,
)
# Mostly the test IDL's field ids, so that random types land on declared fields.
field_ids = st.one_of(st.integers(1, 16), st.integers(-(2**15), 2**15 - 1))

# A wire type: ("scalar", code) | ("list", LIST or SET, elem) | ("map", key code, value)
# | ("struct", {field id: type}).
wire_types: st.SearchStrategy[tuple[Any, ...]] = st.recursive(
    st.sampled_from(SCALARS).map(lambda code: ("scalar", code)),
    lambda inner: st.one_of(
        st.tuples(st.just("list"), st.sampled_from((TType.LIST, TType.SET)), inner),
        st.tuples(st.just("map"), st.sampled_from(SCALARS), inner),
        st.tuples(st.just("struct"), st.dictionaries(field_ids, inner, max_size=4)),
    ),
    max_leaves=12,
)


def ttype_of(t: tuple[Any, ...]) -> int:
    code: int = {"scalar": t[1], "list": t[1], "map": TType.MAP, "struct": TType.STRUCT}[t[0]]
    return code


def spec_of(t: tuple[Any, ...]) -> Any:
    """The spec thriftpy2's writers take for a value of wire type ``t`` in a container."""
    if t[0] == "scalar":
        return t[1]
    return (ttype_of(t), sub_spec(t))


def sub_spec(t: tuple[Any, ...]) -> Any:
    if t[0] == "list":
        return spec_of(t[2])
    if t[0] == "map":
        return (t[1], spec_of(t[2]))
    return None  # a struct value carries its own thrift_spec


class Wire:
    """A struct of any shape, for thriftpy2's writers (they read only ``thrift_spec``)."""

    def __init__(self, fields: dict[int, tuple[tuple[Any, ...], Any]]) -> None:
        self.thrift_spec: dict[int, tuple[Any, ...]] = {}
        for fid, (t, value) in fields.items():
            name = f"f{fid & 0xFFFF}"
            if t[0] == "scalar":
                self.thrift_spec[fid] = (t[1], name, False)
            else:
                self.thrift_spec[fid] = (ttype_of(t), name, sub_spec(t), False)
            setattr(self, name, value)


def scalar_values(code: int) -> st.SearchStrategy[Any]:
    bits = {TType.BYTE: 8, TType.I16: 16, TType.I32: 32, TType.I64: 64}
    if code == TType.BOOL:
        return st.booleans()
    if code in bits:
        half = 2 ** (bits[code] - 1)
        return st.integers(-half, half - 1)
    if code == TType.DOUBLE:
        return st.floats()
    if code == TType.STRING:
        return st.text(max_size=10)
    return st.binary(max_size=10)


def _tagged(t: tuple[Any, ...]) -> Callable[[Any], tuple[tuple[Any, ...], Any]]:
    return lambda value: (t, value)


def wire_values(t: tuple[Any, ...]) -> st.SearchStrategy[Any]:
    if t[0] == "scalar":
        return scalar_values(t[1])
    if t[0] == "list":
        return st.lists(wire_values(t[2]), max_size=4)
    if t[0] == "map":
        return st.dictionaries(scalar_values(t[1]), wire_values(t[2]), max_size=3)
    fields = {fid: st.none() | wire_values(ft).map(_tagged(ft)) for fid, ft in t[1].items()}
    return st.fixed_dictionaries(fields).map(
        lambda drawn: Wire({fid: tv for fid, tv in drawn.items() if tv is not None})
    )


@st.composite
def wire_messages(draw: st.DrawFn) -> tuple[ProtocolName, bytes]:
    protocol = draw(st.sampled_from(PROTOCOLS))
    top = draw(st.dictionaries(field_ids, wire_types, max_size=6))
    obj = draw(wire_values(("struct", top)))
    name = draw(st.text(max_size=12))
    return protocol, encode(protocol, obj, name=name, mtype=draw(st.integers(1, 4)))


@pytest.mark.slow
@FUZZ
@given(message=wire_messages(), cls=st.sampled_from(BODIES))
def test_well_formed_messages_of_random_types(
    message: tuple[ProtocolName, bytes], cls: Any
) -> None:
    protocol, data = message
    check_message(data, protocol)
    guard_then_decode(protocol, data, cls)


# -- mutated valid messages, random bytes ---------------------------------------------------

#: Bytes that mean something in a header, a size or a type code.
_TELLING = (0x00, 0x01, 0x02, 0x08, 0x0B, 0x0C, 0x0D, 0x0F, 0x10, 0x7F, 0x80, 0xF0, 0xFF)
mutations = st.lists(
    st.tuples(
        st.sampled_from(("set", "insert", "delete", "repeat")),
        st.integers(0, 2**16),
        st.one_of(st.sampled_from(_TELLING), st.integers(0, 255)),
        st.integers(1, 24),
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
            out[at:at] = bytes([byte]) * (length % 5 + 1)
        elif kind == "delete":
            del out[at : at + length]
        elif kind == "repeat":
            out[at:at] = out[at : at + length]
    return bytes(out)


@pytest.mark.slow
@FUZZ
@given(message=wire_messages(), cls=st.sampled_from(BODIES), steps=mutations)
def test_mutated_messages(
    message: tuple[ProtocolName, bytes], cls: Any, steps: list[tuple[str, int, int, int]]
) -> None:
    protocol, data = message
    guard_then_decode(protocol, mutate(data, steps), cls)


def idl_wire_type(
    ttype: int, spec: Any, depth: int = 0, *, loose: bool = False
) -> tuple[Any, ...] | None:
    """The wire type of a declared value, or None where this file's writer cannot follow
    (structs nested past 3, as recursive ones are; map keys that are not scalars, which are
    sent as strings if ``loose``)."""
    if ttype == TType.STRUCT:
        if depth >= 3:
            return None
        fields = {}
        for fid, field in spec.thrift_spec.items():
            sub = field[2] if len(field) > 3 else None
            t = idl_wire_type(field[0], sub, depth + 1, loose=loose)
            if t is not None:
                fields[fid] = t
        return ("struct", fields)
    if ttype in (TType.LIST, TType.SET):
        elem = idl_wire_type(*_split(spec), depth + 1, loose=loose)
        return None if elem is None else ("list", ttype, elem)
    if ttype == TType.MAP:
        key = _split(spec[0])[0]
        value = idl_wire_type(*_split(spec[1]), depth + 1, loose=loose)
        if key not in SCALARS and loose:
            key = TType.STRING
        return None if key not in SCALARS or value is None else ("map", key, value)
    return ("scalar", ttype)


def swapped(t: tuple[Any, ...]) -> st.SearchStrategy[tuple[Any, ...]]:
    """Wire type ``t`` with some of its types, at any depth, replaced by others."""
    same: st.SearchStrategy[tuple[Any, ...]]
    if t[0] == "scalar":
        same = st.just(t)
    elif t[0] == "list":
        same = swapped(t[2]).map(lambda elem: ("list", t[1], elem))
    elif t[0] == "map":
        keys = st.sampled_from((t[1], t[1], TType.STRING, *SCALARS))
        same = st.tuples(st.just("map"), keys, swapped(t[2]))
    else:
        fields = {fid: swapped(ft) for fid, ft in t[1].items()}
        same = st.fixed_dictionaries(fields).map(lambda f: ("struct", f))
    # One node in three is swapped, to a string (where payloads hide) in half the cases.
    return st.one_of(same, same, same, same, wire_types, st.just(("scalar", TType.STRING)))


def _split(spec: Any) -> tuple[int, Any]:
    return (spec[0], spec[1]) if isinstance(spec, tuple) else (spec, None)


@pytest.mark.slow
@FUZZ
@given(
    protocol=st.sampled_from(PROTOCOLS),
    cls=st.sampled_from(BODIES),
    steps=mutations,
    data=st.data(),
)
def test_mutated_messages_of_the_test_idl(
    protocol: ProtocolName, cls: Any, steps: list[tuple[str, int, int, int]], data: st.DataObject
) -> None:
    # Valid values of the very struct decoded into, so that mutations hit declared fields.
    shape = idl_wire_type(TType.STRUCT, cls)
    assert shape is not None
    message = encode(protocol, data.draw(wire_values(shape)))
    check_message(message, protocol, body=cls)
    guard_then_decode(protocol, mutate(message, steps), cls)


def _holds_containers(cls: Any, seen: frozenset[Any] = frozenset()) -> bool:
    for field in cls.thrift_spec.values():
        if field[0] in (TType.LIST, TType.SET, TType.MAP):
            return True
        nested = field[0] == TType.STRUCT and field[2] not in seen
        if nested and _holds_containers(field[2], seen | {cls}):
            return True
    return False


#: The bodies where thriftpy2 may read a type the wire does not declare: those with lists
#: (compact) or maps (both protocols) at some depth.
WITH_CONTAINERS = [cls for cls in BODIES if _holds_containers(cls)]


@pytest.mark.slow
@FUZZ
@given(protocol=st.sampled_from(PROTOCOLS), cls=st.sampled_from(WITH_CONTAINERS), data=st.data())
def test_messages_of_the_test_idl_with_types_swapped(
    protocol: ProtocolName, cls: Any, data: st.DataObject
) -> None:
    # Where the wire's types disagree with the IDL's is where thriftpy2 may read something
    # else than the guard does (a string's bytes as a struct, say): the guard must refuse
    # each such message, or thriftpy2 must read it as the guard did (see decode_ends).
    shape = idl_wire_type(TType.STRUCT, cls, loose=True)
    assert shape is not None
    fields = data.draw(st.fixed_dictionaries({fid: swapped(t) for fid, t in shape[1].items()}))
    message = encode(protocol, data.draw(wire_values(("struct", fields))))
    check_message(message, protocol)
    guard_then_decode(protocol, message, cls)


_HEADERS = {
    "binary": struct.pack(">Ii", 0x80010001, 1) + b"m" + struct.pack(">i", 7),
    "compact": b"\x82\x21\x07\x01m",
}


@pytest.mark.slow
@FUZZ
@given(
    protocol=st.sampled_from(PROTOCOLS),
    with_header=st.booleans(),
    body=st.binary(max_size=300),
    cls=st.sampled_from(BODIES),
)
def test_random_bytes(protocol: ProtocolName, with_header: bool, body: bytes, cls: Any) -> None:
    data = (_HEADERS[protocol] if with_header else b"") + body
    with contextlib.suppress(MessageRefused):
        check_message(data, protocol)
    guard_then_decode(protocol, data, cls)


# -- cost: linear in the message's size -----------------------------------------------------


def _binary(fields: bytes) -> bytes:
    return struct.pack(">Ii", 0x80010001, 1) + b"m" + struct.pack(">i", 1) + fields + b"\x00"


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _compact(fields: bytes) -> bytes:
    return b"\x82\x21\x01\x01m" + fields + b"\x00"


def _blist(elem: int, count: int, elements: bytes) -> bytes:
    return struct.pack(">BhBi", TType.LIST, 1, elem, count) + elements


def _clist(elem: int, count: int, elements: bytes) -> bytes:
    return bytes([0x19, 0xF0 | elem]) + _varint(count) + elements


# Each builds a message of about ``size`` bytes that makes the guard do the most Python work
# per byte along one path, and says whether the guard must accept it.
WORST_CASES: dict[str, Callable[[int], tuple[ProtocolName, bytes, bool]]] = {
    "binary empty structs": lambda n: ("binary", _binary(_blist(12, n, bytes(n))), True),
    "binary empty strings": lambda n: (
        "binary",
        _binary(_blist(11, n // 4, bytes(n // 4 * 4))),
        True,
    ),
    "binary empty lists": lambda n: (
        "binary",
        _binary(_blist(15, n // 5, (b"\x08" + bytes(4)) * (n // 5))),
        True,
    ),
    "binary bool fields": lambda n: ("binary", _binary(b"\x02\x00\x05\x01" * (n // 4)), True),
    "binary map i32->string": lambda n: (
        "binary",
        _binary(struct.pack(">BhBBi", 13, 1, 8, 11, n // 8) + bytes(n // 8 * 8)),
        True,
    ),
    "compact empty structs": lambda n: ("compact", _compact(_clist(12, n, bytes(n))), True),
    "compact empty strings": lambda n: ("compact", _compact(_clist(8, n, bytes(n))), True),
    "compact bool fields": lambda n: ("compact", _compact(b"\x11" * n), True),
    "compact 10-byte i64s": lambda n: (
        "compact",
        _compact(_clist(6, n // 10, (b"\xff" * 9 + b"\x01") * (n // 10))),
        True,
    ),
    "compact map i32->i64 of longest varints": lambda n: (
        "compact",
        _compact(
            b"\x1b"
            + _varint(n // 15)
            + b"\x56"
            + (b"\xff" * 4 + b"\x07" + b"\xff" * 9 + b"\x01") * (n // 15)
        ),
        True,
    ),
    "compact truncated varint run": lambda n: (
        "compact",
        _compact(_clist(6, n // 2, b"\x80\x01" * (n // 4))),
        False,
    ),
    "compact run-on varint": lambda n: ("compact", _compact(b"\x16" + b"\xff" * n), False),
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
def test_guard_cost_grows_linearly(case: str) -> None:
    small_kib, big_kib = 64, 1024
    costs = []
    reps = 1
    for kib in (small_kib, big_kib):
        protocol, data, accepted = WORST_CASES[case](kib * 1024)

        def call(
            data: bytes = data, protocol: ProtocolName = protocol, accepted: bool = accepted
        ) -> None:
            try:
                check_message(data, protocol)
            except MessageRefused:
                if accepted:
                    raise

        call()  # the expected verdict, before timing
        if accepted is False:
            with pytest.raises(MessageRefused):
                check_message(data, protocol)
        if kib == small_kib:
            # Enough calls for the small case to take ~20 ms of CPU, so the clock's
            # resolution does not matter; the big case makes 16x fewer.
            while _cpu_per_call(call, reps) * reps < 0.02 and reps < 1 << 16:
                reps *= 2
            costs.append(_cpu_per_call(call, reps))
        else:
            costs.append(_cpu_per_call(call, max(1, reps * small_kib // big_kib)))
    ratio = costs[1] / max(costs[0], 1e-9)
    # Linear is 16x; quadratic would be 256x. 40x leaves room for a loaded machine and caches.
    assert ratio < 40, f"{case}: 1 MiB costs {ratio:.1f}x the 64 KiB case"
