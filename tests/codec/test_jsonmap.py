"""The JSON mapping of Thrift values: round trips for every type, and every rule and error."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from thrift_strategies import INT_BOUNDS, structs, thrift_values
from thriftpy2.thrift import TPayload, TType

from offloop.codec.jsonmap import (
    MAX_DEPTH,
    JsonEncodeError,
    JsonMappingError,
    Outcome,
    ReplyBreaksIdl,
    args_from_json,
    args_to_json,
    map_form,
    result_to_json,
    split_elem_spec,
    split_field_spec,
    struct_from_json,
    struct_to_json,
    value_from_json,
    value_to_json,
)
from offloop.errors import Blame, LocalProtocolError, RemoteProtocolError
from offloop.idl import load_idl, service_info
from offloop.idl_requiredness import marked_optional, required_arguments

IDL = Path(__file__).resolve().parent.parent / "idl" / "alltypes.thrift"
m = load_idl(IDL)
ALLTYPES = service_info(m, "AllTypes")
SECOND = service_info(m, "Second")


def same(a: Any, b: Any) -> bool:
    """Deep equality that counts NaN equal to NaN and compares exceptions by value."""
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or a == b
    if isinstance(a, TPayload):
        return type(a) is type(b) and same(a.__dict__, b.__dict__)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(map(same, a, b))
    return type(a) is type(b) and bool(a == b)


def _all_specs() -> list[tuple[str, int, Any]]:
    """Every distinct (ttype, spec) the test IDL uses, named by where it first appears."""
    found: dict[tuple[int, Any], str] = {}
    classes = [getattr(m, name) for name in dir(m) if hasattr(getattr(m, name), "thrift_spec")]
    for service in (ALLTYPES, SECOND):
        for method in service.methods.values():
            classes += [method.args_cls, method.result_cls]
    for cls in classes:
        for field in cls.thrift_spec.values():
            found.setdefault(split_field_spec(field), f"{cls.__name__}.{field[1]}")
    for cls in classes:
        found.setdefault((TType.STRUCT, cls), cls.__name__)
    return [(label, ttype, spec) for (ttype, spec), label in found.items()]


SPECS = _all_specs()


def _json_round_trip(value: Any) -> Any:
    # allow_nan=False: the mapping must never emit a bare NaN or Infinity.
    return json.loads(json.dumps(value, allow_nan=False))


def error_of(ttype: int, spec: Any, value: Any, path: str = "value") -> JsonMappingError:
    with pytest.raises(JsonMappingError) as info:
        value_from_json(ttype, spec, value, path)
    return info.value


def args_error(method: str, obj: Any) -> JsonMappingError:
    with pytest.raises(JsonMappingError) as info:
        args_from_json(ALLTYPES.methods[method], obj)
    return info.value


# -- round trips ----------------------------------------------------------------------------


@pytest.mark.parametrize(("ttype", "spec"), [s[1:] for s in SPECS], ids=[s[0] for s in SPECS])
@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=st.data())
def test_round_trip_every_type(ttype: int, spec: Any, data: st.DataObject) -> None:
    value = data.draw(thrift_values(ttype, spec))
    back = value_from_json(ttype, spec, _json_round_trip(value_to_json(ttype, spec, value)))
    assert same(back, value)


@pytest.mark.parametrize("method", sorted(ALLTYPES.methods))
@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_round_trip_arguments(method: str, data: st.DataObject) -> None:
    info = ALLTYPES.methods[method]
    args = data.draw(structs(info.args_cls))
    must = required_arguments(info.args_cls)
    for field in info.args_cls.thrift_spec.values():  # a required argument has a value
        if field[1] in must and getattr(args, field[1]) is None:
            setattr(args, field[1], data.draw(thrift_values(*split_field_spec(field))))
    back = args_from_json(info, _json_round_trip(args_to_json(info, args)))
    assert same(back, args)


def test_round_trip_of_every_spec_is_covered() -> None:
    kinds = {ttype for _, ttype, _ in SPECS}
    assert kinds >= {2, 3, 4, 6, 8, 10, 11, 12, 13, 14, 15, 18}
    forms = {map_form(*split_elem_spec(spec[0])) for _, ttype, spec in SPECS if ttype == 13}
    assert forms == {"string", "integer", "enum", "pairs"}


# -- scalars --------------------------------------------------------------------------------


def test_bool_only_true_and_false() -> None:
    assert value_from_json(TType.BOOL, None, True) is True
    assert value_from_json(TType.BOOL, None, False) is False
    for bad, shown in [(0, "0"), (1, "1"), ("true", '"true"'), (None, "null")]:
        assert str(error_of(TType.BOOL, None, bad)) == f"value: expected true or false, got {shown}"


@pytest.mark.parametrize(
    ("ttype", "name"),
    [(TType.BYTE, "i8"), (TType.I16, "i16"), (TType.I32, "i32"), (TType.I64, "i64")],
)
def test_integer_ranges(ttype: int, name: str) -> None:
    lo, hi = INT_BOUNDS[ttype]
    assert value_from_json(ttype, None, lo) == lo
    assert value_from_json(ttype, None, hi) == hi
    for bad in (lo - 1, hi + 1):
        error = error_of(ttype, None, bad, "argument.x")
        assert error.path == "argument.x"
        assert error.reason == f"{bad} is out of range for {name} ({lo} to {hi})"


@pytest.mark.parametrize("ttype", [TType.BYTE, TType.I16, TType.I32, TType.I64])
def test_bool_is_not_an_integer(ttype: int) -> None:
    assert error_of(ttype, None, True).reason.endswith("got true")
    assert error_of(ttype, None, False).reason.endswith("got false")


@pytest.mark.parametrize("ttype", [TType.BYTE, TType.I16, TType.I32])
def test_narrow_integers_refuse_strings_and_fractions(ttype: int) -> None:
    assert error_of(ttype, None, "5").reason == 'expected an integer, got "5"'
    assert value_from_json(ttype, None, 5.0) == 5  # JSON Schema's integer: 5.0 is one
    assert error_of(ttype, None, 5.5).reason == "expected an integer, got 5.5"
    assert error_of(ttype, None, [5]).reason == "expected an integer, got an array"


def test_i64_accepts_decimal_strings() -> None:
    assert value_from_json(TType.I64, None, "-9223372036854775808") == -(2**63)
    assert value_from_json(TType.I64, None, "9223372036854775807") == 2**63 - 1
    assert value_from_json(TType.I64, None, "007") == 7
    assert value_from_json(TType.I64, None, "-" + "0" * 30 + "7") == -7
    assert value_from_json(TType.I64, None, "0" * 30) == 0
    assert (
        error_of(TType.I64, None, "9223372036854775808").reason
        == '"9223372036854775808" is out of range for i64 (-9223372036854775808 to '
        "9223372036854775807)"
    )
    assert "out of range" in error_of(TType.I64, None, "1" * 5000).reason
    for bad in ("12a", " 12", "+1", "1e3", "", "١٢"):
        assert error_of(TType.I64, None, bad).reason.startswith(
            "expected an integer or a decimal string, got"
        )
    # Output is always a JSON integer.
    assert value_to_json(TType.I64, None, 2**63 - 1) == 2**63 - 1


def test_double() -> None:
    assert value_from_json(TType.DOUBLE, None, 1.5) == 1.5
    three = value_from_json(TType.DOUBLE, None, 3)
    assert three == 3.0 and type(three) is float
    assert math.isnan(value_from_json(TType.DOUBLE, None, "NaN"))
    assert value_from_json(TType.DOUBLE, None, "Infinity") == math.inf
    assert value_from_json(TType.DOUBLE, None, "-Infinity") == -math.inf
    assert value_to_json(TType.DOUBLE, None, math.nan) == "NaN"
    assert value_to_json(TType.DOUBLE, None, math.inf) == "Infinity"
    assert value_to_json(TType.DOUBLE, None, -math.inf) == "-Infinity"
    assert value_to_json(TType.DOUBLE, None, -0.0) == 0.0
    for bad in ("nan", "inf", "1.5", True, None):
        assert error_of(TType.DOUBLE, None, bad).reason.startswith(
            'expected a number or "NaN", "Infinity", "-Infinity", got'
        )
    assert error_of(TType.DOUBLE, None, 10**400).reason.endswith("is out of range for double")


def test_string() -> None:
    assert value_from_json(TType.STRING, None, "héllo ✓") == "héllo ✓"
    assert error_of(TType.STRING, None, 5).reason == "expected a string, got 5"
    assert "lone surrogate" in error_of(TType.STRING, None, json.loads('"\\ud800"')).reason
    # A peer's non-UTF-8 string (thriftpy2 gives bytes) still goes out as text.
    assert value_to_json(TType.STRING, None, b"ok\xff") == "ok\ufffd"


def test_binary_is_base64() -> None:
    assert value_to_json(TType.BINARY, None, b"\x00\x01\xfe\xff") == "AAH+/w=="
    assert value_from_json(TType.BINARY, None, "AAH+/w==") == b"\x00\x01\xfe\xff"
    assert value_from_json(TType.BINARY, None, "") == b""
    for bad in ("AAH+/w=", "AAH-_w==", "a", "YQ==\n", "é"):
        assert error_of(TType.BINARY, None, bad).reason.startswith("invalid base64")
    assert error_of(TType.BINARY, None, 5).reason == "expected a base64 string, got 5"


def test_enum() -> None:
    numberz = m.Numberz
    assert value_to_json(TType.I32, numberz, 5) == "FIVE"
    assert value_from_json(TType.I32, numberz, "FIVE") == 5
    assert value_from_json(TType.I32, numberz, 5) == 5
    valid = "ONE, TWO, THREE, FIVE, SIX, EIGHT"
    assert error_of(TType.I32, numberz, "SEVEN").reason == (
        f'unknown Numberz name "SEVEN" (valid: {valid})'
    )
    assert error_of(TType.I32, numberz, 7).reason == f"unknown Numberz value 7 (valid: {valid})"
    assert (
        error_of(TType.I32, numberz, True).reason == "expected a Numberz name or integer, got true"
    )
    assert error_of(TType.I32, numberz, "five").reason.startswith("unknown Numberz name")
    # A value this IDL does not know (a newer peer) goes out as its integer.
    assert value_to_json(TType.I32, numberz, 4) == 4


# -- structs and arguments ------------------------------------------------------------------


def test_defaults_applied_and_unset_fields_omitted() -> None:
    scalars = struct_from_json(m.Scalars, {"a_bool": True})
    assert scalars.with_default == 42
    assert scalars.opt_enum == m.Numberz.TWO
    assert scalars.opt_string is None
    assert struct_to_json(scalars) == {"a_bool": True, "with_default": 42, "opt_enum": "TWO"}
    # null is no value, not even "absent": the schema allows it nowhere.
    error = error_of(TType.STRUCT, m.Scalars, {"a_bool": False, "with_default": None}, "x")
    assert (error.path, error.reason) == (
        "x.with_default",
        "null is not a value; leave the field out",
    )
    error = error_of(TType.STRUCT, m.Scalars, {"a_bool": False, "opt_string": None}, "x")
    assert error.path == "x.opt_string"


def test_mutable_defaults_are_not_shared() -> None:
    first = struct_from_json(m.Node, {"label": "a"})
    second = struct_from_json(m.Node, {"label": "b"})
    assert first.children == [] and first.children is not second.children
    first.children.append(second)
    assert m.Node(label="c").children == []


def test_struct_errors() -> None:
    error = error_of(TType.STRUCT, m.Xtruct, {"bogus": 1}, "x")
    assert error.path == "x.bogus"
    assert (
        error.reason == "unknown field (Xtruct has: string_thing, byte_thing, i32_thing, i64_thing)"
    )
    assert error_of(TType.STRUCT, m.Xtruct, {"a b": 1}, "x").path == 'x["a b"]'
    error = error_of(TType.STRUCT, m.Scalars, {"a_byte": 1}, "x")
    assert (error.path, error.reason) == ("x.a_bool", "required field is missing")
    error = error_of(TType.STRUCT, m.Scalars, {"a_bool": None}, "x")
    assert (error.path, error.reason) == ("x.a_bool", "required field is null")
    assert error_of(TType.STRUCT, m.Xtruct, [1], "x").reason == "expected an object, got an array"
    error = error_of(TType.STRUCT, m.Xtruct2, {"struct_thing": {"byte_thing": 200}}, "x")
    assert str(error) == "x.struct_thing.byte_thing: 200 is out of range for i8 (-128 to 127)"


def test_exceptions_map_like_structs() -> None:
    exc = struct_from_json(m.Xception2, {"errorCode": 3, "struct_thing": {"i64_thing": "9"}})
    assert isinstance(exc, m.Xception2)
    assert exc.struct_thing.i64_thing == 9
    assert struct_to_json(exc) == {"errorCode": 3, "struct_thing": {"i64_thing": 9}}


def test_arguments() -> None:
    method = ALLTYPES.methods["sumXtructs"]
    args = args_from_json(method, {"xtructs": [{"i32_thing": 1}, {"i64_thing": "2"}]})
    assert isinstance(args, method.args_cls)
    assert args.scale == 1
    assert [x.i32_thing for x in args.xtructs] == [1, None]
    assert args_to_json(method, args) == {
        "xtructs": [{"i32_thing": 1}, {"i64_thing": 2}],
        "scale": 1,
    }
    assert (
        args_from_json(ALLTYPES.methods["testVoid"], {}) == ALLTYPES.methods["testVoid"].args_cls()
    )


def test_argument_error_paths() -> None:
    error = args_error("sumXtructs", {"xtructs": [{}, {}, {"i32_thing": "x"}]})
    assert str(error) == 'argument.xtructs[2].i32_thing: expected an integer, got "x"'
    assert error.path == "argument.xtructs[2].i32_thing"
    assert isinstance(error, LocalProtocolError)
    assert error.blame is Blame.CALLER
    assert error.public_message == str(error)

    error = args_error("sumXtructs", {"scale": 2})
    assert str(error) == "argument.xtructs: required argument is missing"
    error = args_error("sumXtructs", {"xtructs": [], "scael": 2})
    assert str(error) == "argument.scael: unknown argument (sumXtructs has: xtructs, scale)"
    error = args_error("testVoid", {"x": 1})
    assert str(error) == "argument.x: unknown argument (testVoid has: none)"
    error = args_error("sumXtructs", [1, 2])
    assert str(error) == "argument: expected an object of named arguments, got an array"
    error = args_error("grid", {"rows": [[{}], [{}, {"byte_thing": "1"}]]})
    assert error.path == "argument.rows[1][1].byte_thing"


def test_arguments_are_required_unless_optional_or_defaulted() -> None:
    # grid(1: list<list<Xtruct>> rows, 2: optional string label): the default requiredness
    # is required in JSON, optional is not.
    assert args_error("grid", {"label": "x"}).path == "argument.rows"
    assert str(args_error("grid", {})) == "argument.rows: required argument is missing"
    assert args_from_json(ALLTYPES.methods["grid"], {"rows": []}).label is None
    # sumXtructs(1: required list<Xtruct> xtructs, 2: i32 scale = 1): a default may be left out.
    assert args_from_json(ALLTYPES.methods["sumXtructs"], {"xtructs": []}).scale == 1
    # Every argument of the default requiredness, whatever its type.
    for name in ("testString", "testStruct", "testMap", "testEnum", "testOneway", "echoTree"):
        method = ALLTYPES.methods[name]
        assert args_error(name, {}).path == f"argument.{method.arg_names[0]}"
    assert args_error("testMulti", {"arg0": 1, "arg1": 2}).path == "argument.arg2"


def test_null_arguments_are_refused() -> None:
    error = args_error("testString", {"thing": None})
    assert (str(error), error.path) == (
        "argument.thing: required argument is null",
        "argument.thing",
    )
    error = args_error("grid", {"rows": [], "label": None})
    assert str(error) == "argument.label: null is not a value; leave the argument out"
    error = args_error("sumXtructs", {"xtructs": [], "scale": None})
    assert error.path == "argument.scale"
    error = args_error("testStruct", {"thing": {"i32_thing": None}})
    assert error.path == "argument.thing.i32_thing"
    error = args_error("testList", {"thing": [1, None]})
    assert (error.path, error.reason) == ("argument.thing[1]", "expected an integer, got null")


def test_struct_fields_follow_the_idl_requiredness() -> None:
    # Struct fields are required where the IDL says `required`, as Thrift's readers check;
    # the default requiredness may be left out (and is left out on the way out when unset).
    assert struct_from_json(m.Xtruct, {}) == m.Xtruct()
    assert args_from_json(ALLTYPES.methods["testStruct"], {"thing": {}}).thing == m.Xtruct()
    assert args_error("echoTree", {"root": {"children": []}}).path == "argument.root.label"


# -- replies that break the IDL -------------------------------------------------------------


def test_reply_missing_a_required_field_is_refused() -> None:
    method = ALLTYPES.methods["echoTree"]
    result = method.result_cls(success=m.Node(label=None, children=[]))
    with pytest.raises(ReplyBreaksIdl) as info:
        result_to_json(method, result)
    error = info.value
    assert (error.struct, error.field) == ("Node", "label")
    assert isinstance(error, RemoteProtocolError) and isinstance(error, JsonEncodeError)
    assert error.blame is Blame.BACKEND
    assert error.public_message == "reply breaks the IDL: required field Node.label is missing"
    assert str(error) == (
        "the result of echoTree: reply breaks the IDL: required field Node.label is missing"
    )


def test_reply_check_reaches_nested_structs_and_exceptions() -> None:
    method = ALLTYPES.methods["echoTree"]
    deep = m.Node(label="a", children=[m.Node(label="b", children=[m.Node(children=[])])])
    with pytest.raises(ReplyBreaksIdl, match=r"Node\.label"):
        result_to_json(method, method.result_cls(success=deep))
    scalars = ALLTYPES.methods["echoScalars"]
    with pytest.raises(ReplyBreaksIdl, match=r"Scalars\.a_bool"):
        result_to_json(scalars, scalars.result_cls(success=m.Scalars(an_i32=1)))
    with pytest.raises(ReplyBreaksIdl, match=r"Scalars\.a_bool"):
        struct_to_json(m.Scalars())
    # Optional and default-requiredness fields may be unset.
    assert result_to_json(method, method.result_cls(success=m.Node(label="x", children=[]))) == (
        Outcome("success", {"label": "x", "children": []})
    )
    assert struct_to_json(m.Xtruct()) == {}


# -- which arguments the IDL marks optional -------------------------------------------------


def test_required_arguments_of_the_test_idl() -> None:
    got = {name: required_arguments(method.args_cls) for name, method in ALLTYPES.methods.items()}
    assert got["grid"] == ("rows",)
    assert got["sumXtructs"] == ("xtructs",)
    assert got["testVoid"] == ()
    assert got["testMulti"] == ("arg0", "arg1", "arg2", "arg3", "arg4", "arg5")
    assert marked_optional(m.Scalars, "opt_string") and marked_optional(m.Scalars, "opt_enum")
    assert not marked_optional(m.Scalars, "a_bool") and not marked_optional(m.Scalars, "an_i32")
    assert marked_optional(m.Node, "parent_hint") and not marked_optional(m.Node, "children")


TRICKY_IDL = """
struct Point { 1: i32 x }
service Tricky {
  /** optional in a doc comment */ void a(1: string plain, # optional in a comment
    2: optional
       map<string, list<Point>> (python.immutable = "") spread,
    3: optional i32 (x = "optional") annotated, 4: list<string> l /* optional */,
    5: optional i32 optional_named, 6: string s = "optional")
  void b(1: optional i32 one, 2: required i32 two, 3: i32 three)
}
"""


def test_requiredness_is_read_from_the_source(tmp_path: Path) -> None:
    path = tmp_path / "tricky.thrift"
    path.write_text(TRICKY_IDL)
    tricky = service_info(load_idl(path), "Tricky")
    assert required_arguments(tricky.methods["a"].args_cls) == ("plain", "l")
    assert required_arguments(tricky.methods["b"].args_cls) == ("two", "three")
    assert args_from_json(tricky.methods["a"], {"plain": "p", "l": []}).s == "optional"


def test_without_the_source_every_argument_counts_as_required(tmp_path: Path) -> None:
    import thriftpy2

    loaded = thriftpy2.load_fp(
        __import__("io").StringIO(TRICKY_IDL), module_name="tricky_fp_thrift"
    )
    tricky = service_info(loaded, "Tricky")
    assert required_arguments(tricky.methods["b"].args_cls) == ("one", "two", "three")
    path = tmp_path / "gone.thrift"
    path.write_text(TRICKY_IDL)
    gone = service_info(load_idl(path), "Tricky")
    path.unlink()
    assert required_arguments(gone.methods["a"].args_cls) == (
        "plain", "spread", "annotated", "l", "optional_named"
    )  # fmt: skip


# -- containers -----------------------------------------------------------------------------

CONTAINERS = {field[1]: split_field_spec(field) for field in m.Containers.thrift_spec.values()}


def test_lists_and_sets() -> None:
    ints = CONTAINERS["ints"]
    assert value_from_json(*ints, [1, 2, 2]) == [1, 2, 2]
    assert error_of(*ints, [1, "2"], "c").path == "c[1]"
    assert error_of(*ints, {"a": 1}).reason == "expected an array, got an object"
    strings = CONTAINERS["strings"]
    assert value_from_json(*strings, ["b", "a", "b"]) == {"a", "b"}
    assert value_to_json(*strings, {"c", "a", "b"}) == ["a", "b", "c"]
    assert error_of(*strings, ["a", 1], "c").path == "c[1]"
    assert value_to_json(*CONTAINERS["enum_set"], {8, 1}) == ["ONE", "EIGHT"]
    assert value_to_json(*CONTAINERS["blobs"], {b"\x01", b"\x00"}) == ["AA==", "AQ=="]
    nested = value_from_json(*CONTAINERS["nested"], [[{"i32_thing": 1}], []])
    assert nested == [[m.Xtruct(i32_thing=1)], []]


def test_map_forms() -> None:
    by_int = CONTAINERS["by_int"]
    assert map_form(TType.I32, None) == "integer"
    assert value_from_json(*by_int, {"-3": "a", "07": "b"}) == {-3: "a", 7: "b"}
    assert value_from_json(*by_int, {"0" * 25 + "9": "c"}) == {9: "c"}
    assert value_to_json(*by_int, {-3: "a"}) == {"-3": "a"}
    error = error_of(*by_int, {"x": "a"}, "c")
    assert (error.path, error.reason) == ('c["x"]', 'key "x" is not a decimal integer')
    assert error_of(*by_int, {"2147483648": "a"}).reason.startswith(
        'key "2147483648" is out of range for i32'
    )
    assert error_of(*by_int, {"1": 2}, "c").path == 'c["1"]'

    by_string = CONTAINERS["by_string"]
    assert value_to_json(*by_string, {"a": math.nan, "b": 1.0}) == {"a": "NaN", "b": 1.0}
    assert value_from_json(*by_string, {"a": "Infinity"}) == {"a": math.inf}

    by_enum = CONTAINERS["by_enum"]
    assert value_from_json(*by_enum, {"ONE": {}, "2": {}}) == {1: m.Xtruct(), 2: m.Xtruct()}
    assert value_to_json(*by_enum, {3: m.Xtruct(i32_thing=3)}) == {"THREE": {"i32_thing": 3}}
    assert error_of(*by_enum, {"SEVEN": {}}).reason.startswith('unknown Numberz key "SEVEN"')
    assert error_of(*by_enum, {"7": {}}).reason.startswith('unknown Numberz key "7"')

    by_struct = CONTAINERS["by_struct"]
    bonk = m.Bonk(message="m", type=1)
    assert value_to_json(*by_struct, {bonk: 5}) == [[{"message": "m", "type": 1}, 5]]
    assert value_from_json(*by_struct, [[{"message": "m", "type": 1}, 5]]) == {bonk: 5}
    assert error_of(*by_struct, [[{}, 1], [{}]], "c").path == "c[1]"
    assert (
        error_of(*by_struct, [[{}, 1], [{}]]).reason == "expected a [key, value] pair, got an array"
    )
    assert error_of(*by_struct, [[{"type": "x"}, 1]], "c").path == "c[0][0].type"
    assert error_of(*by_struct, [[{}, "x"]], "c").path == "c[0][1]"
    assert error_of(*by_struct, {"a": 1}).reason.startswith("expected an array of [key, value]")

    by_bool = CONTAINERS["by_bool"]
    assert value_to_json(*by_bool, {True: "t"}) == [[True, "t"]]
    by_double = CONTAINERS["by_double"]
    assert value_to_json(*by_double, {math.inf: "i"}) == [["Infinity", "i"]]
    by_binary = CONTAINERS["by_binary"]
    assert value_from_json(*by_binary, [["AA==", 1]]) == {b"\x00": 1}

    deep = CONTAINERS["deep"]
    assert value_from_json(*deep, {"5": [[1, 1, 2], []]}) == {5: [{1, 2}, set()]}
    error = error_of(*deep, {"5": [[1], [1, 40000]]}, "c")
    assert error.path == 'c["5"][1][1]'
    assert error.reason == "40000 is out of range for i16 (-32768 to 32767)"


# -- depth ----------------------------------------------------------------------------------


def _nested_list_spec(levels: int) -> tuple[int, Any]:
    spec: Any = TType.I32
    for _ in range(levels - 1):
        spec = (TType.LIST, spec)
    return TType.LIST, spec


def _nested_list(levels: int) -> Any:
    value: Any = [1]
    for _ in range(levels - 1):
        value = [value]
    return value


def test_depth_limit_on_input() -> None:
    assert value_from_json(*_nested_list_spec(MAX_DEPTH), _nested_list(MAX_DEPTH))
    error = error_of(*_nested_list_spec(MAX_DEPTH + 1), _nested_list(MAX_DEPTH + 1))
    assert error.reason == f"nested deeper than {MAX_DEPTH} levels"
    assert error.path == "value" + "[0]" * MAX_DEPTH


def test_depth_limit_on_recursive_structs() -> None:
    def chain(nodes: int) -> dict[str, Any]:
        node: dict[str, Any] = {"label": "leaf"}
        for _ in range(nodes - 1):
            node = {"label": "n", "children": [node]}
        return node

    # Each node is an object in an array: 2 levels, less the root's array.
    assert struct_from_json(m.Node, chain(MAX_DEPTH // 2)).label == "n"
    with pytest.raises(JsonMappingError, match="nested deeper than"):
        struct_from_json(m.Node, chain(MAX_DEPTH // 2 + 1))
    # Far past the limit fails the same way, not with RecursionError.
    with pytest.raises(JsonMappingError, match="nested deeper than"):
        struct_from_json(m.Node, chain(5000))


def test_depth_limit_on_output() -> None:
    assert value_to_json(*_nested_list_spec(MAX_DEPTH), _nested_list(MAX_DEPTH))
    with pytest.raises(JsonEncodeError, match="nested deeper than"):
        value_to_json(*_nested_list_spec(MAX_DEPTH + 1), _nested_list(MAX_DEPTH + 1))


def test_wrong_python_type_on_output() -> None:
    with pytest.raises(JsonEncodeError) as info:
        value_to_json(TType.LIST, TType.DOUBLE, [1.0, None])
    assert isinstance(info.value, RemoteProtocolError)


# -- results --------------------------------------------------------------------------------


def test_result_success() -> None:
    method = ALLTYPES.methods["testInsanity"]
    insanity = m.Insanity(userMap={5: 2**40}, xtructs=[m.Xtruct(string_thing="s")])
    result = method.result_cls(success={7: {m.Numberz.TWO: insanity}})
    assert result_to_json(method, result) == Outcome(
        "success",
        {"7": {"TWO": {"userMap": {"FIVE": 2**40}, "xtructs": [{"string_thing": "s"}]}}},
    )
    method = ALLTYPES.methods["testEnum"]
    assert result_to_json(method, method.result_cls(success=8)).value == "EIGHT"


def test_result_void_and_oneway() -> None:
    method = ALLTYPES.methods["testVoid"]
    assert result_to_json(method, method.result_cls()) == Outcome("success", None)
    method = ALLTYPES.methods["testException"]
    assert result_to_json(method, method.result_cls()) == Outcome("success", None)
    assert result_to_json(ALLTYPES.methods["testOneway"], None) == Outcome("success", None)


def test_result_exception() -> None:
    method = ALLTYPES.methods["testMultiException"]
    result = method.result_cls(err2=m.Xception2(errorCode=2, struct_thing=m.Xtruct(byte_thing=1)))
    outcome = result_to_json(method, result)
    assert outcome == Outcome(
        kind="exception",
        value={"errorCode": 2, "struct_thing": {"byte_thing": 1}},
        exception_type="Xception2",
        exception_field="err2",
    )


def test_result_missing() -> None:
    method = ALLTYPES.methods["testString"]
    with pytest.raises(RemoteProtocolError, match="neither a result nor a declared exception"):
        result_to_json(method, method.result_cls())


def test_mapping_error_is_a_local_protocol_error() -> None:
    error = JsonMappingError("argument.x", "bad")
    assert isinstance(error, LocalProtocolError)
    assert (str(error), error.path, error.reason, error.blame) == (
        "argument.x: bad",
        "argument.x",
        "bad",
        Blame.CALLER,
    )


def test_unsupported_type() -> None:
    with pytest.raises(ValueError, match="unsupported Thrift type"):
        value_from_json(TType.VOID, None, 1)
