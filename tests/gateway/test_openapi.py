"""The OpenAPI document: valid OpenAPI 3.1, the right paths, statuses and schemas, and schemas
that accept exactly what the JSON mapping emits."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openapi_spec_validator import validate
from openapi_spec_validator.validation.exceptions import OpenAPIValidationError
from thrift_strategies import structs, thrift_values
from thriftpy2.thrift import TType

from offloop.codec.jsonmap import (
    JsonMappingError,
    args_to_json,
    result_to_json,
    split_field_spec,
    struct_from_json,
    struct_to_json,
    value_from_json,
    value_to_json,
)
from offloop.gateway.openapi import build_openapi
from offloop.idl import load_idl, service_info
from offloop.idl_requiredness import required_arguments

TESTS = Path(__file__).resolve().parent.parent
TEXTLAB = TESTS.parent / "src" / "offloop" / "demo" / "textlab.thrift"
m = load_idl(TESTS / "idl" / "alltypes.thrift")
ALLTYPES = service_info(m, "AllTypes")
SECOND = service_info(m, "Second")
DOC = build_openapi([ALLTYPES, SECOND], exception_status={"Xception2": 409})
SCHEMAS = DOC["components"]["schemas"]
STANDARD_ERRORS = ("400", "404", "408", "413", "414", "415", "431", "500", "502", "503", "504")


def validator(schema: dict[str, Any], doc: dict[str, Any] = DOC) -> jsonschema.Validator:
    """A JSON Schema 2020-12 validator of ``schema`` whose ``$ref`` reach ``doc``'s components."""
    return jsonschema.Draft202012Validator({**schema, "components": doc["components"]})


def component(name: str) -> jsonschema.Validator:
    return validator({"$ref": f"#/components/schemas/{name}"})


def operation(path: str) -> dict[str, Any]:
    return DOC["paths"][path]["post"]  # type: ignore[no-any-return]


# -- validity -------------------------------------------------------------------------------


def test_alltypes_document_is_valid_openapi_31() -> None:
    assert DOC["openapi"] == "3.1.0"
    validate(DOC)
    json.dumps(DOC, allow_nan=False)


def test_textlab_document_is_valid() -> None:
    textlab = load_idl(TEXTLAB)
    doc = build_openapi([service_info(textlab, "TextLab")], title="textlab", version="2")
    validate(doc)
    assert doc["info"] == {"title": "textlab", "version": "2"}
    assert "/rpc/TextLab/parse" in doc["paths"]
    assert {"TreeNode", "ParseResult", "ParseError", "Error.ParseError"} <= set(
        doc["components"]["schemas"]
    )


def test_validator_is_not_a_rubber_stamp() -> None:
    broken = json.loads(json.dumps(DOC))
    broken["paths"]["/rpc/AllTypes/testVoid"]["post"]["responses"]["200"] = {"content": {}}
    with pytest.raises(OpenAPIValidationError):
        validate(broken)


# -- paths and statuses ---------------------------------------------------------------------


def test_one_post_path_per_method() -> None:
    rpc = {p for p in DOC["paths"] if p.startswith("/rpc/")}
    expected = {f"/rpc/AllTypes/{name}" for name in ALLTYPES.methods}
    expected |= {f"/rpc/Second/{name}" for name in SECOND.methods}
    assert rpc == expected
    op = operation("/rpc/AllTypes/sumXtructs")
    assert op["operationId"] == "AllTypes_sumXtructs"
    assert op["tags"] == ["AllTypes"]
    ids = [op["operationId"] for item in DOC["paths"].values() for op in item.values()]
    assert len(ids) == len(set(ids))


def test_request_body() -> None:
    body = operation("/rpc/AllTypes/sumXtructs")["requestBody"]
    schema = body["content"]["application/json"]["schema"]
    assert body["required"] is True
    assert schema["required"] == ["xtructs"]
    assert schema["additionalProperties"] is False
    assert schema["properties"]["xtructs"] == {
        "type": "array",
        "items": {"$ref": "#/components/schemas/Xtruct"},
    }
    assert schema["properties"]["scale"]["default"] == 1
    void = operation("/rpc/AllTypes/testVoid")["requestBody"]
    assert void["required"] is False
    assert void["content"]["application/json"]["schema"]["properties"] == {}


def test_success_responses() -> None:
    def result_schema(method: str, status: str = "200") -> Any:
        response = operation(f"/rpc/AllTypes/{method}")["responses"][status]
        return response["content"]["application/json"]["schema"]["properties"]["result"]

    assert result_schema("testVoid") == {"type": "null"}
    assert result_schema("testString") == {"type": "string"}
    assert result_schema("testStruct") == {"$ref": "#/components/schemas/Xtruct"}
    oneway = operation("/rpc/AllTypes/testOneway")["responses"]
    assert "200" not in oneway
    assert result_schema("testOneway", "202") == {"type": "null"}


def test_error_responses() -> None:
    responses = operation("/rpc/AllTypes/testString")["responses"]
    assert sorted(responses) == sorted(["200", *STANDARD_ERRORS])
    assert responses["400"] == {"$ref": "#/components/responses/BadRequest"}
    for name, response in DOC["components"]["responses"].items():
        schema = response["content"]["application/json"]["schema"]
        assert schema == {"$ref": "#/components/schemas/Error"}, name
    error = SCHEMAS["Error"]["properties"]["error"]
    assert error["required"] == ["code", "message"]
    assert set(error["properties"]) == {"request_id", "code", "message", "type", "fields", "path"}
    # Every error body carries the request's id (the gateway core adds it): so does the schema.
    request_id = error["properties"]["request_id"]
    assert request_id["type"] == "string" and "X-Request-Id" in request_id["description"]
    exception_error = SCHEMAS["Error.Xception"]["properties"]["error"]["properties"]
    assert exception_error["request_id"] == request_id


def test_declared_exceptions_answer_422() -> None:
    responses = operation("/rpc/AllTypes/testException")["responses"]
    assert responses["422"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Error.Xception"
    }
    fields = SCHEMAS["Error.Xception"]["properties"]["error"]["properties"]
    assert fields["type"] == {"const": "Xception"}
    assert fields["fields"] == {"$ref": "#/components/schemas/Xception"}


def test_two_exceptions_at_one_status_are_one_of() -> None:
    doc = build_openapi([ALLTYPES])
    schema = doc["paths"]["/rpc/AllTypes/testMultiException"]["post"]["responses"]["422"]
    assert schema["content"]["application/json"]["schema"] == {
        "oneOf": [
            {"$ref": "#/components/schemas/Error.Xception"},
            {"$ref": "#/components/schemas/Error.Xception2"},
        ]
    }


def test_exception_status_override_moves_the_exception() -> None:
    responses = operation("/rpc/AllTypes/testMultiException")["responses"]
    assert responses["409"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Error.Xception2"
    }
    assert responses["422"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Error.Xception"
    }


def test_exception_status_override_onto_a_standard_status() -> None:
    doc = build_openapi([ALLTYPES], exception_status={"Xception": 503, "Unknown": 418})
    validate(doc)
    responses = doc["paths"]["/rpc/AllTypes/testException"]["post"]["responses"]
    assert "422" not in responses
    assert responses["503"]["content"]["application/json"]["schema"] == {
        "anyOf": [
            {"$ref": "#/components/schemas/Error"},
            {"$ref": "#/components/schemas/Error.Xception"},
        ]
    }
    assert "Xception" in responses["503"]["description"]


@pytest.mark.parametrize("status", [200, 302, 600, True, "422"])
def test_exception_status_must_be_an_error(status: Any) -> None:
    with pytest.raises(ValueError, match="must be a 4xx or 5xx"):
        build_openapi([ALLTYPES], exception_status={"Xception": status})


def test_duplicate_services_are_refused() -> None:
    with pytest.raises(ValueError, match="same name: AllTypes"):
        build_openapi([ALLTYPES, ALLTYPES])


def test_operations_paths() -> None:
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json", "/docs"):
        assert set(DOC["paths"][path]) == {"get"}
    metrics = DOC["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    assert list(metrics) == ["text/plain"]
    assert set(DOC["paths"]["/readyz"]["get"]["responses"]) == {"200", "503"}


# -- component schemas ----------------------------------------------------------------------


def test_every_type_is_a_component() -> None:
    names = {
        "Error",
        "Numberz",
        "Bonk",
        "Xtruct",
        "Xtruct2",
        "Scalars",
        "Insanity",
        "Containers",
        "Node",
        "Xception",
        "Xception2",
        "Error.Xception",
        "Error.Xception2",
    }
    assert set(SCHEMAS) == names


def test_recursive_struct_refers_to_itself() -> None:
    node = SCHEMAS["Node"]
    assert node["properties"]["children"]["items"] == {"$ref": "#/components/schemas/Node"}
    assert node["properties"]["parent_hint"] == {"$ref": "#/components/schemas/Node"}
    assert node["required"] == ["label"]
    assert node["properties"]["children"]["default"] == []


def test_scalar_schemas() -> None:
    props = SCHEMAS["Scalars"]["properties"]
    assert props["a_bool"] == {"type": "boolean"}
    assert props["a_byte"] == {"type": "integer", "format": "int8", "minimum": -128, "maximum": 127}
    assert props["an_i16"]["minimum"] == -32768
    assert props["an_i32"]["maximum"] == 2**31 - 1
    decimal = props["an_i64"]["oneOf"][1]
    assert decimal["type"] == "string"
    # The pattern holds the range exactly, as the mapping does.
    for text, fits in [
        ("9223372036854775807", True),
        ("9223372036854775808", False),
        ("-9223372036854775808", True),
        ("-9223372036854775809", False),
        ("007", True),
        ("-0", True),
        ("1" * 20, False),
        ("1.0", False),
    ]:
        assert bool(re.fullmatch(decimal["pattern"], text)) is fits, text
        try:
            value_from_json(TType.I64, None, text)
        except JsonMappingError:
            assert not fits, text
        else:
            assert fits, text
    assert props["an_i64"]["oneOf"][0]["maximum"] == 2**63 - 1
    assert props["user_id"] == props["an_i64"]  # a typedef is its type
    assert props["a_double"]["oneOf"][1] == {
        "type": "string",
        "enum": ["NaN", "Infinity", "-Infinity"],
    }
    assert props["a_binary"]["contentEncoding"] == "base64"
    assert props["an_enum"] == {"$ref": "#/components/schemas/Numberz"}
    assert props["with_default"]["default"] == 42
    assert props["opt_enum"]["default"] == "TWO"
    assert SCHEMAS["Scalars"]["required"] == ["a_bool"]
    # One type, the names (a generated client makes one enum class of it); the gateway
    # answers with names, and also takes the integer, which the schema leaves out.
    numberz = SCHEMAS["Numberz"]
    assert (numberz["type"], numberz["enum"]) == (
        "string",
        ["ONE", "TWO", "THREE", "FIVE", "SIX", "EIGHT"],
    )
    assert numberz["x-enum-values"] == [1, 2, 3, 5, 6, 8]  # each name's integer, for people
    assert "oneOf" not in numberz
    assert struct_from_json(m.Scalars, {"a_bool": True, "an_enum": 8}).an_enum == 8


def test_container_schemas() -> None:
    props = SCHEMAS["Containers"]["properties"]
    assert props["strings"] == {"type": "array", "items": {"type": "string"}, "uniqueItems": True}
    keys = props["by_int"]["propertyNames"]["pattern"]  # map<i32, string>
    assert re.fullmatch(keys, "2147483647") and not re.fullmatch(keys, "2147483648")
    assert props["by_string"]["type"] == "object" and "propertyNames" not in props["by_string"]
    assert props["by_enum"]["propertyNames"]["enum"][:2] == ["ONE", "TWO"]
    assert props["by_enum"]["additionalProperties"] == {"$ref": "#/components/schemas/Xtruct"}
    pair = props["by_struct"]["items"]
    assert pair["prefixItems"][0] == {"$ref": "#/components/schemas/Bonk"}
    assert (pair["minItems"], pair["maxItems"]) == (2, 2)
    assert props["nested"]["items"]["items"] == {"$ref": "#/components/schemas/Xtruct"}


def test_name_clashes_are_qualified(tmp_path: Path) -> None:
    other = tmp_path / "other.thrift"
    other.write_text(
        "struct Xtruct { 1: double d }\n"
        "struct Error { 1: string why }\n"
        "exception Xception { 1: string why }\n"
        "service Other { Xtruct get(1: Error e) throws (1: Xception x) }\n"
    )
    clash = service_info(load_idl(other), "Other")
    doc = build_openapi([ALLTYPES, clash])
    validate(doc)
    schemas = doc["components"]["schemas"]
    assert {"alltypes.Xtruct", "other.Xtruct", "other.Error", "Error"} <= set(schemas)
    assert "Xtruct" not in schemas
    assert {"Error.alltypes.Xception", "Error.other.Xception"} <= set(schemas)
    get = doc["paths"]["/rpc/Other/get"]["post"]
    body = get["requestBody"]["content"]["application/json"]["schema"]
    assert body["properties"]["e"] == {"$ref": "#/components/schemas/other.Error"}
    # error.type stays the Thrift name: what the gateway sends.
    thrown = schemas["Error.other.Xception"]["properties"]["error"]["properties"]
    assert thrown["type"] == {"const": "Xception"}


# -- the schemas accept what the mapping emits, and refuse what it refuses ------------------

STRUCTS = ["Scalars", "Containers", "Node", "Insanity", "Xtruct2", "Xception2"]


@pytest.mark.parametrize("name", STRUCTS)
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_emitted_json_validates_against_its_component(name: str, data: st.DataObject) -> None:
    value = data.draw(structs(getattr(m, name)))
    component(name).validate(json.loads(json.dumps(struct_to_json(value), allow_nan=False)))


@pytest.mark.parametrize("method", sorted(ALLTYPES.methods))
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_arguments_and_results_validate(method: str, data: st.DataObject) -> None:
    info = ALLTYPES.methods[method]
    op = operation(f"/rpc/AllTypes/{method}")
    args = data.draw(structs(info.args_cls))
    must = required_arguments(info.args_cls)
    for field in info.args_cls.thrift_spec.values():  # a required argument has a value
        if field[1] in must and getattr(args, field[1]) is None:
            setattr(args, field[1], data.draw(thrift_values(*split_field_spec(field))))
    body = op["requestBody"]["content"]["application/json"]["schema"]
    validator(body).validate(args_to_json(info, args))

    result = info.result_cls()
    success = [f for f in info.result_cls.thrift_spec.values() if f[1] == "success"]
    if success:
        ttype, spec = split_field_spec(success[0])
        result.success = data.draw(thrift_values(ttype, spec))
    outcome = result_to_json(info, result)
    status = "202" if info.oneway else "200"
    schema = op["responses"][status]["content"]["application/json"]["schema"]
    validator(schema).validate({"result": outcome.value})


@pytest.mark.parametrize(("exc_name", "status"), [("Xception", "422"), ("Xception2", "409")])
def test_exception_bodies_validate(exc_name: str, status: str) -> None:
    info = ALLTYPES.methods["testMultiException"]
    result = info.result_cls()
    field = "err1" if exc_name == "Xception" else "err2"
    setattr(result, field, getattr(m, exc_name)(errorCode=7))
    outcome = result_to_json(info, result)
    # The body the gateway core answers with.
    body = {
        "error": {
            "request_id": "0123456789abcdef0123456789abcdef",
            "code": int(status),
            "message": f"AllTypes.testMultiException raised {outcome.exception_type}",
            "type": outcome.exception_type,
            "fields": outcome.value,
        }
    }
    response = operation("/rpc/AllTypes/testMultiException")["responses"][status]
    validator(response["content"]["application/json"]["schema"]).validate(body)
    component("Error").validate(body)
    other = "Error.Xception2" if exc_name == "Xception" else "Error.Xception"
    assert not component(other).is_valid(body)


def test_special_values_validate() -> None:
    scalars = m.Scalars(
        a_bool=True,
        a_double=float("nan"),
        a_binary=b"\xff\x00",
        an_i64=-(2**63),
        an_enum=4,  # unknown to the IDL: emitted as an integer, which the schema refuses
    )
    emitted = struct_to_json(scalars)
    assert emitted["a_double"] == "NaN"
    errors = list(component("Scalars").iter_errors(emitted))
    assert {tuple(e.absolute_path) for e in errors} == {("an_enum",)}  # not a string, nor a name
    emitted["an_enum"] = value_to_json(8, m.Numberz, 5)
    component("Scalars").validate(emitted)


@pytest.mark.parametrize(
    "bad",
    [
        {"a_bool": 1},
        {"a_bool": True, "a_byte": 128},
        {"a_bool": True, "an_i64": "1.5"},
        {"a_bool": True, "a_double": "nan"},
        {"a_bool": True, "a_binary": "AAH-_w=="},
        {"a_bool": True, "an_enum": "SEVEN"},
        {"a_bool": True, "an_enum": 7},
        {"a_bool": True, "bogus": 1},
        {"a_byte": 1},
    ],
)
def test_schema_refuses_what_the_mapping_refuses(bad: dict[str, Any]) -> None:
    assert not component("Scalars").is_valid(bad)
    with pytest.raises(JsonMappingError):
        struct_from_json(m.Scalars, bad)


@pytest.mark.parametrize(
    ("field", "bad"),
    [
        ("by_int", {"x": "a"}),
        ("by_enum", {"SEVEN": {}}),
        ("by_struct", [[{}]]),
        ("by_struct", {"a": 1}),
        ("strings", "abc"),
    ],
)
def test_container_schema_refuses_what_the_mapping_refuses(field: str, bad: Any) -> None:
    assert not component("Containers").is_valid({field: bad})
    with pytest.raises(JsonMappingError):
        struct_from_json(m.Containers, {field: bad})
