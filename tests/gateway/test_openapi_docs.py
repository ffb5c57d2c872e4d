"""The OpenAPI document says what the IDL's doc comments say, and its examples are values that
both their schemas and the JSON mapping accept; its title and version come from the
configuration."""

from __future__ import annotations

import asyncio
import base64
import io
import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import thriftpy2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openapi_spec_validator import validate

from offloop.app.gateway import build_gateway
from offloop.codec.jsonmap import (
    args_from_json,
    split_field_spec,
    struct_from_json,
    value_from_json,
)
from offloop.gateway.config import GatewayConfig
from offloop.gateway.core import Request
from offloop.gateway.openapi import DEFAULT_API_VERSION, build_openapi
from offloop.idl import ServiceInfo, load_idl, service_info

TESTS = Path(__file__).resolve().parent.parent
TEXTLAB = TESTS.parent / "src" / "offloop" / "demo" / "textlab.thrift"
ALLTYPES = TESTS / "idl" / "alltypes.thrift"
SCHEMAS = "#/components/schemas/"

BASE_IDL = """
/** A point, from the included file. */
struct Point {
  /** Across. */ 1: required i32 x,
  /** Down. */ 2: required i32 y,
}
"""

DOCUMENTED_IDL = """
include "canvas_base.thrift"

/** A color.
 *
 * Of the palette.
 */
enum Color {
  /** Like blood. */
  RED = 1,
  GREEN = 2,
}

/** One shape or another. */
union Shape {
  /** A circle's radius. */ 1: double radius,
  2: list<canvas_base.Point> polygon,
}

/** A drawing. */
struct Drawing {
  /** Its name. */ 1: required string name,
  /** How it looks. */ 2: Color color = Color.GREEN,
  /** What is drawn. */ 3: list<Shape> shapes,
  /** Where it starts. */ 4: optional canvas_base.Point origin,
  5: map<Color, binary> thumbnails,
  6: i64 version,
  7: optional Drawing previous,
}

/** The drawing is not there. */
exception NotFound {
  /** What was looked for. */ 1: string name,
}

/** Draws things. */
service Canvas {
  /**
   * Stores a drawing.
   *   Indented in the comment: kept.
   */
  i64 save(/** The drawing. */ 1: required Drawing drawing, /** Overwrite? */ 2: bool force),

  /** Fetches one. */
  Drawing load(1: string name) throws (/** No drawing of that name. */ 1: NotFound missing),

  oneway void forget(1: string name),
}
"""


@pytest.fixture(scope="module")
def documented(tmp_path_factory: pytest.TempPathFactory) -> ServiceInfo:
    folder = tmp_path_factory.mktemp("idl")
    (folder / "canvas_base.thrift").write_text(BASE_IDL)
    (folder / "canvas.thrift").write_text(DOCUMENTED_IDL)
    return service_info(load_idl(folder / "canvas.thrift"), "Canvas")


@pytest.fixture(scope="module")
def doc(documented: ServiceInfo) -> dict[str, Any]:
    built = build_openapi([documented], exception_status={"NotFound": 404})
    validate(built)
    return built


def textlab_doc() -> dict[str, Any]:
    return build_openapi([service_info(load_idl(TEXTLAB), "TextLab")])


def alltypes_doc() -> dict[str, Any]:
    module = load_idl(ALLTYPES)
    services = [service_info(module, "AllTypes"), service_info(module, "Second")]
    return build_openapi(services, exception_status={"Xception2": 409})


def post(doc: dict[str, Any], path: str) -> dict[str, Any]:
    return doc["paths"][path]["post"]  # type: ignore[no-any-return]


def body_schema(op: dict[str, Any]) -> dict[str, Any]:
    return op["requestBody"]["content"]["application/json"]["schema"]  # type: ignore[no-any-return]


# -- descriptions ---------------------------------------------------------------------------


def test_service_and_method_docs(doc: dict[str, Any]) -> None:
    assert doc["tags"][0] == {"name": "Canvas", "description": "Draws things."}
    save = post(doc, "/rpc/Canvas/save")
    assert save["description"] == "Stores a drawing.\n  Indented in the comment: kept."
    assert post(doc, "/rpc/Canvas/load")["description"] == "Fetches one."
    # Undocumented: what it was before.
    assert post(doc, "/rpc/Canvas/forget")["description"] == (
        "Calls the Thrift oneway method Canvas.forget."
    )


def test_argument_docs(doc: dict[str, Any]) -> None:
    props = body_schema(post(doc, "/rpc/Canvas/save"))["properties"]
    assert props["drawing"] == {"$ref": SCHEMAS + "Drawing", "description": "The drawing."}
    assert props["force"] == {"type": "boolean", "description": "Overwrite?"}
    assert "description" not in body_schema(post(doc, "/rpc/Canvas/load"))["properties"]["name"]


def test_struct_and_field_docs(doc: dict[str, Any]) -> None:
    schemas = doc["components"]["schemas"]
    drawing = schemas["Drawing"]
    assert drawing["description"] == "A drawing."
    props = drawing["properties"]
    assert props["name"]["description"] == "Its name."
    assert props["color"] == {
        "$ref": SCHEMAS + "Color",
        "default": "GREEN",
        "description": "How it looks.",
    }
    assert props["shapes"]["description"] == "What is drawn."
    assert "description" not in props["thumbnails"]
    # A struct of an included file has the docs of that file.
    assert schemas["Point"]["description"] == "A point, from the included file."
    assert schemas["Point"]["properties"]["x"]["description"] == "Across."
    assert props["origin"]["description"] == "Where it starts."


def test_union_exception_and_enum_docs(doc: dict[str, Any]) -> None:
    schemas = doc["components"]["schemas"]
    assert schemas["Shape"]["description"] == "One shape or another.\n\nSet one field."
    assert schemas["Shape"]["properties"]["radius"]["description"] == "A circle's radius."
    assert schemas["NotFound"]["description"] == "The drawing is not there."
    assert schemas["NotFound"]["properties"]["name"]["description"] == "What was looked for."
    assert schemas["Color"]["description"] == (
        "A color.\n\nOf the palette.\n\n- `RED`: Like blood.\n\n"
        "Given as its name (the gateway also takes its integer value)."
    )


def test_declared_exception_docs_and_status(doc: dict[str, Any]) -> None:
    response = post(doc, "/rpc/Canvas/load")["responses"]["404"]
    assert "NotFound" in response["description"]
    example = response["content"]["application/json"]["examples"]["NotFound"]
    assert example["summary"] == "NotFound"
    assert example["description"] == "No drawing of that name."
    assert example["value"]["error"]["code"] == 404
    assert example["value"]["error"]["type"] == "NotFound"


def test_textlab_docs() -> None:
    doc = textlab_doc()
    validate(doc)
    parse = post(doc, "/rpc/TextLab/parse")
    assert parse["description"].startswith("Real syntactic parsing (NLTK's Earley chart parser")
    schemas = doc["components"]["schemas"]
    assert schemas["ParseError"]["description"] == "The sentence is not covered by the grammar."
    assert schemas["ParseResult"]["properties"]["nodes"]["description"].startswith(
        "The tree as a flat list"
    )
    assert schemas["TreeNode"]["properties"]["children"] == {
        "type": "array",
        "items": {"type": "integer", "format": "int32", "minimum": -(2**31), "maximum": 2**31 - 1},
        "default": [],
        "description": "Indexes into ParseResult.nodes; empty for a leaf.",
    }
    examples = parse["responses"]["422"]["content"]["application/json"]["examples"]
    assert set(examples) == {"ParseError", "InvalidArgument"}


def test_no_module_no_docs() -> None:
    """A ServiceInfo made by hand (no module) gives the document without descriptions."""
    module = load_idl(TEXTLAB)
    info = service_info(module, "TextLab")
    bare = ServiceInfo(name=info.name, service=info.service, methods=info.methods)
    doc = build_openapi([bare])
    validate(doc)
    assert post(doc, "/rpc/TextLab/ping")["description"] == "Calls the Thrift method TextLab.ping."


# -- examples -------------------------------------------------------------------------------


def media_examples(doc: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any], Any]]:
    """Every example of the document: (where, schema, value)."""
    for path, item in doc["paths"].items():
        for verb, op in item.items():
            holders = [("request", op.get("requestBody", {}))]
            holders += [(status, r) for status, r in op["responses"].items()]
            for what, holder in holders:
                for media in holder.get("content", {}).values():
                    where = f"{verb} {path} {what}"
                    if "example" in media:
                        yield where, media["schema"], media["example"]
                    for name, ex in media.get("examples", {}).items():
                        yield f"{where} {name}", media["schema"], ex["value"]


def assert_examples_valid(doc: dict[str, Any]) -> int:
    count = 0
    for where, schema, value in media_examples(doc):
        json.dumps(value, allow_nan=False)
        validator = jsonschema.Draft202012Validator({**schema, "components": doc["components"]})
        errors = [e.message for e in validator.iter_errors(value)]
        assert not errors, (where, value, errors)
        count += 1
    return count


def test_every_example_validates(doc: dict[str, Any]) -> None:
    # Every rpc operation: a request body and a result; the declared exception too.
    assert assert_examples_valid(doc) == 3 * 2 + 1
    assert assert_examples_valid(textlab_doc()) == 6 * 2 + 5 * 1 + 1
    alltypes = alltypes_doc()
    rpc = [p for p in alltypes["paths"] if p.startswith("/rpc/")]
    assert assert_examples_valid(alltypes) >= 2 * len(rpc)


def test_the_mapping_accepts_the_examples() -> None:
    """What the examples show can be sent: the gateway decodes each request example."""
    module = load_idl(ALLTYPES)
    for name in ("AllTypes", "Second"):
        info = service_info(module, name)
        doc = build_openapi([info])
        for method in info.methods.values():
            op = post(doc, f"/rpc/{name}/{method.name}")
            args_from_json(method, op["requestBody"]["content"]["application/json"]["example"])


def test_examples_are_sane(doc: dict[str, Any]) -> None:
    save = post(doc, "/rpc/Canvas/save")["requestBody"]["content"]["application/json"]
    drawing = save["example"]["drawing"]
    assert drawing["name"] == "example name"
    assert drawing["color"] == "GREEN"  # the default
    assert drawing["version"] == 1  # an i64 as an integer, not a string
    assert drawing["origin"] == {"x": 1, "y": 1}
    assert base64.b64decode(drawing["thumbnails"]["RED"], validate=True) == b"example"
    # A union: one field set.
    assert drawing["shapes"] == [{"radius": 1.5}]
    # Recursion stops: the struct is not repeated inside itself.
    assert "previous" not in drawing
    assert save["example"]["force"] is True
    result = post(doc, "/rpc/Canvas/save")["responses"]["200"]["content"]["application/json"]
    assert result["example"] == {"result": 1}
    forget = post(doc, "/rpc/Canvas/forget")["responses"]["202"]["content"]["application/json"]
    assert forget["example"] == {"result": None}


def test_textlab_examples() -> None:
    doc = textlab_doc()
    parse = post(doc, "/rpc/TextLab/parse")
    assert parse["requestBody"]["content"]["application/json"]["example"] == {
        "sentence": "example sentence"
    }
    result = parse["responses"]["200"]["content"]["application/json"]["example"]["result"]
    # An empty default shows nothing of the elements: one is made up instead.
    assert result["nodes"][0]["children"] == [1]
    embed = post(doc, "/rpc/TextLab/embed")["requestBody"]["content"]["application/json"]
    assert embed["example"] == {"texts": ["example texts"]}


def test_recursive_alltypes_examples() -> None:
    doc = alltypes_doc()
    tree = post(doc, "/rpc/AllTypes/echoTree")["requestBody"]["content"]["application/json"]
    assert tree["example"] == {"root": {"label": "example label", "children": []}}
    containers = post(doc, "/rpc/AllTypes/echoContainers")
    example = containers["requestBody"]["content"]["application/json"]["example"]["c"]
    assert example["by_struct"] == [[{"message": "example message", "type": 1}, 1]]
    assert example["by_int"] == {"1": "example by int"}


def test_a_required_field_that_recurses_has_no_example(tmp_path: Path) -> None:
    path = tmp_path / "loop.thrift"
    path.write_text(
        "struct Loop { 1: required Loop link }\n"
        "service S { Loop get(1: optional Loop loop, 2: i32 n), void put(1: required Loop loop),"
        " void take(1: Loop loop) }\n"
    )
    doc = build_openapi([service_info(load_idl(path), "S")])
    validate(doc)
    get = post(doc, "/rpc/S/get")
    # An argument that is not required is left out; a result cannot be.
    assert get["requestBody"]["content"]["application/json"]["example"] == {"n": 1}
    assert "example" not in get["responses"]["200"]["content"]["application/json"]
    put = post(doc, "/rpc/S/put")["requestBody"]["content"]["application/json"]
    assert "example" not in put
    # An argument of the default requiredness is required in JSON.
    take = post(doc, "/rpc/S/take")["requestBody"]["content"]["application/json"]
    assert "example" not in take
    assert_examples_valid(doc)


# Generated IDL: random types, nested, containers of structs, recursion, required fields.

_SCALARS = ["bool", "byte", "i16", "i32", "i64", "double", "string", "binary", "E"]
_LOADED = itertools.count()


@st.composite
def _types(draw: st.DrawFn, structs: int) -> str:
    leaves = _SCALARS + [f"S{i}" for i in range(structs)]

    def extend(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
        return st.one_of(
            inner.map(lambda t: f"list<{t}>"),
            inner.map(lambda t: f"set<{t}>"),
            st.tuples(inner, inner).map(lambda kv: f"map<{kv[0]}, {kv[1]}>"),
        )

    return draw(st.recursive(st.sampled_from(leaves), extend, max_leaves=4))


@st.composite
def _idl(draw: st.DrawFn) -> str:
    count = draw(st.integers(1, 4))
    lines = ["enum E { A = 1, B = 2 }"]
    for i in range(count):
        kind = draw(st.sampled_from(["struct", "struct", "union", "exception"]))
        fields = []
        for j in range(draw(st.integers(0, 4))):
            required = kind != "union" and draw(st.booleans())
            ftype = draw(_types(count))
            fields.append(f"{j + 1}: {'required ' if required else ''}{ftype} f{j}")
        lines.append(f"/** Type {i}. */ {kind} S{i} {{ {', '.join(fields)} }}")
    args = ", ".join(f"{j + 1}: {draw(_types(count))} a{j}" for j in range(draw(st.integers(0, 3))))
    lines.append(f"service G {{ {draw(_types(count))} call({args}) }}")
    return "\n".join(lines)


@given(source=_idl())
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_generated_idl_examples_validate(source: str) -> None:
    module = thriftpy2.load_fp(io.StringIO(source), module_name=f"g{next(_LOADED)}_thrift")
    info = service_info(module, "G")
    method = info.methods["call"]
    doc = build_openapi([info])
    validate(doc)
    assert_examples_valid(doc)
    op = post(doc, "/rpc/G/call")
    request = op["requestBody"]["content"]["application/json"]
    if "example" in request:
        args_from_json(method, request["example"])
    reply = op["responses"]["200"]["content"]["application/json"]
    (success,) = method.result_cls.thrift_spec.values()
    if "example" in reply:
        value_from_json(*split_field_spec(success), reply["example"]["result"])


# -- title and version ----------------------------------------------------------------------


def test_default_title_and_version() -> None:
    assert textlab_doc()["info"] == {"title": "TextLab API", "version": DEFAULT_API_VERSION}
    assert alltypes_doc()["info"]["title"] == "AllTypes, Second API"
    assert build_openapi([])["info"]["title"] == "offloop gateway"


def test_title_and_version_from_the_config() -> None:
    default = GatewayConfig(idl=str(TEXTLAB), backends={"*": (("127.0.0.1", 1),)})
    response = asyncio.run(build_gateway(default).handle(Request("GET", "/openapi.json", {})))
    assert json.loads(response.body)["info"] == {"title": "TextLab API", "version": "0.1.0"}
    config = GatewayConfig(
        idl=str(TEXTLAB),
        backends={"*": (("127.0.0.1", 1),)},
        api_title="Text tools",
        api_version="2.1",
    )
    gateway = build_gateway(config)
    response = asyncio.run(gateway.handle(Request("GET", "/openapi.json", {})))
    assert response.status == 200
    assert json.loads(response.body)["info"] == {"title": "Text tools", "version": "2.1"}


def test_blank_title_or_version_is_refused() -> None:
    backends = {"*": (("h", 1),)}
    with pytest.raises(ValueError, match="api_title"):
        GatewayConfig(idl="x.thrift", backends=backends, api_title=" padded ")
    with pytest.raises(ValueError, match="api_version"):
        GatewayConfig(idl="x.thrift", backends=backends, api_version="")


def test_struct_from_json_accepts_component_examples() -> None:
    """The exception example's fields decode as the exception."""
    module = load_idl(TEXTLAB)
    parse = post(textlab_doc(), "/rpc/TextLab/parse")
    examples = parse["responses"]["422"]["content"]["application/json"]["examples"]
    for name, example in examples.items():
        struct_from_json(getattr(module, name), example["value"]["error"]["fields"])
