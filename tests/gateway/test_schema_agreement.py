"""The OpenAPI document and the gateway agree (issue 12, items 1 and 3), shown end to end.

Request bodies are generated from the document's own request schemas (not from the IDL), sent
to a gateway core over an in-memory ``AllTypes`` worker, and:

- a body the schema accepts is answered 200 (202 for oneway), and the reply validates against
  the document's response schema;
- a body the schema refuses because an argument is left out or something is ``null`` is
  answered 400 with the place in ``error.path``, never 5xx;
- a reply that leaves out a field the IDL marks ``required`` is answered 502, naming the
  struct and the field, and logged.

The generator reads the subset of JSON Schema that :mod:`offloop.gateway.openapi` emits, and
each body it makes is checked against the schema with ``jsonschema`` first, so a generator
bug cannot pass for an agreement. Strings are valid Unicode (no lone surrogates): JSON text
is Unicode, and no Thrift protocol can carry a lone surrogate.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Iterator
from typing import Any

import jsonschema
import pytest
from configs import override
from gateway_stack import ALLTYPES_IDL, alltypes
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from offloop.app.gateway import build_gateway
from offloop.codec.jsonmap._errors import field_segment, key_segment
from offloop.gateway.config import GatewayConfig
from offloop.gateway.core import Gateway, Request, Response
from offloop.idl import service_info
from offloop.testing import WorkerFor
from offloop.worker.config import WorkerConfig

m = alltypes
ALLTYPES = service_info(m, "AllTypes")
JSON = {"content-type": "application/json"}
#: Bodies tried per method and property: bounded, so the file runs in seconds.
EXAMPLES = 15
#: Levels of objects and arrays a generated body may nest before it keeps to what is required.
DEPTH = 4


class Handler:
    """``AllTypes``: each method answers a value of its result type made from its arguments.

    While :attr:`broken`, ``echoTree`` answers a ``Node`` without its required ``label``, and
    ``testString`` answers ``None``.
    """

    broken = False

    def testVoid(self) -> None:
        return None

    def testOneway(self, secondsToSleep: int) -> None:
        return None

    def testException(self, arg: str) -> None:
        return None

    def testMapMap(self, hello: int) -> dict[int, dict[int, int]]:
        return {hello: {hello: hello}}

    def testInsanity(self, argument: Any) -> dict[int, dict[int, Any]]:
        return {1: {m.Numberz.ONE: argument}}

    def testMulti(self, arg0: int, arg1: int, arg2: int, *rest: Any) -> Any:
        return m.Xtruct(string_thing="multi", byte_thing=arg0, i32_thing=arg1, i64_thing=arg2)

    def testMultiException(self, arg0: str, arg1: str) -> Any:
        return m.Xtruct(string_thing=arg0)

    def sumXtructs(self, xtructs: list[Any], scale: int) -> int:
        return len(xtructs)

    def echoTree(self, root: Any) -> Any:
        return m.Node(label=None, children=[]) if Handler.broken else root

    def testString(self, thing: str) -> str | None:
        return None if Handler.broken else thing

    def __getattr__(self, name: str) -> Callable[..., Any]:
        if name.startswith("_"):
            raise AttributeError(name)
        return lambda *args: args[0]


# -- a gateway over an in-memory worker, on a loop kept for the module ----------------------


class Served:
    """The gateway and its worker on one event loop, driven between hypothesis examples."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        worker_config = override(
            WorkerConfig(idl=ALLTYPES_IDL, service="AllTypes", grace=0.0),
            pool="thread",
            workers=2,
            nice=0,
            call_timeout=10.0,
        )
        self.worker = WorkerFor(worker_config, handler=Handler())
        self.loop.run_until_complete(self.worker.__aenter__())
        # No watchdog: between examples the loop does not run, which is no stall.
        config = override(
            GatewayConfig(
                idl=ALLTYPES_IDL,
                backends={"AllTypes": (self.worker.address,)},
                services=("AllTypes",),
            ),
            watchdog=False,
        )
        self.gateway: Gateway = build_gateway(config, network=self.worker.network)
        self.run(self.gateway.startup())
        self.doc: dict[str, Any] = json.loads(self.get("/openapi.json").body)

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(asyncio.wait_for(coro, 30))

    def get(self, path: str) -> Response:
        return self.run(self.gateway.handle(Request("GET", path, {})))  # type: ignore[no-any-return]

    def post(self, method: str, body: bytes) -> tuple[int, Any]:
        request = Request("POST", f"/rpc/AllTypes/{method}", JSON, body)
        response: Response = self.run(self.gateway.handle(request))
        return response.status, json.loads(response.body)

    def close(self) -> None:
        try:
            self.run(self.gateway.shutdown(0))
            self.run(self.worker.__aexit__(None, None, None))
        finally:
            self.loop.close()


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    stack = Served()
    try:
        yield stack
    finally:
        stack.close()


# -- bodies from a schema --------------------------------------------------------------------

_TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=8)
_FLOATS = st.floats(allow_nan=False, allow_infinity=False).map(lambda f: f + 0.0)  # no -0.0


def from_schema(
    schema: dict[str, Any], doc: dict[str, Any], depth: int = 0
) -> st.SearchStrategy[Any]:
    """Values valid against ``schema``, a schema of the kinds ``build_openapi`` writes."""
    components = doc["components"]["schemas"]
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return st.deferred(lambda: from_schema(components[name], doc, depth))
    if "oneOf" in schema:
        return st.one_of([from_schema(s, doc, depth) for s in schema["oneOf"]])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    if "const" in schema:
        return st.just(schema["const"])
    kind = schema.get("type")
    if kind == "boolean":
        return st.booleans()
    if kind == "integer":
        return st.integers(schema.get("minimum"), schema.get("maximum"))
    if kind == "number":
        return _FLOATS
    if kind == "string":
        if "pattern" in schema:
            return st.from_regex(schema["pattern"], fullmatch=True)
        return _TEXT
    deeper = depth + 1
    if kind == "array":
        if "prefixItems" in schema:
            return st.tuples(*(from_schema(s, doc, deeper) for s in schema["prefixItems"])).map(
                list
            )
        most = 0 if deeper >= DEPTH else 3
        items = from_schema(schema["items"], doc, deeper)
        if schema.get("uniqueItems"):
            return st.lists(items, max_size=most, unique_by=lambda v: json.dumps(v, sort_keys=True))
        return st.lists(items, max_size=most)
    if kind == "object":
        return _objects(schema, doc, deeper)
    raise AssertionError(f"a schema the generator does not know: {schema}")


def _objects(schema: dict[str, Any], doc: dict[str, Any], depth: int) -> st.SearchStrategy[Any]:
    properties: dict[str, Any] = schema.get("properties", {})
    if properties or schema.get("additionalProperties") is False:
        required = set(schema.get("required", ()))
        must = {n: from_schema(s, doc, depth) for n, s in properties.items() if n in required}
        may = (
            {}
            if depth >= DEPTH
            else {n: from_schema(s, doc, depth) for n, s in properties.items() if n not in required}
        )
        return st.fixed_dictionaries(must, optional=may)
    names = schema.get("propertyNames", {})
    if "enum" in names:
        keys: st.SearchStrategy[str] = st.sampled_from(names["enum"])
    elif "pattern" in names:
        keys = st.from_regex(names["pattern"], fullmatch=True)
    else:
        keys = _TEXT
    values = from_schema(schema["additionalProperties"], doc, depth)
    return st.dictionaries(keys, values, max_size=0 if depth >= DEPTH else 3)


def _validator(schema: dict[str, Any], doc: dict[str, Any]) -> jsonschema.Validator:
    return jsonschema.Draft202012Validator({**schema, "components": doc["components"]})


def _operation(doc: dict[str, Any], method: str) -> dict[str, Any]:
    return doc["paths"][f"/rpc/AllTypes/{method}"]["post"]  # type: ignore[no-any-return]


def _body_schema(doc: dict[str, Any], method: str) -> dict[str, Any]:
    return _operation(doc, method)["requestBody"]["content"]["application/json"]["schema"]  # type: ignore[no-any-return]


def _nulled(
    value: Any, schema: dict[str, Any], doc: dict[str, Any], path: str = "argument"
) -> Iterator[tuple[Any, str]]:
    """Copies of a body with one value inside it made ``null``, each with that value's path
    as the gateway names it: ``.field`` in a struct, ``["key"]`` in a map, ``[i]`` in an
    array (``argument.thing.i32_thing``, ``argument.c.by_string["k"]``)."""
    while "$ref" in schema:
        schema = doc["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
    if isinstance(value, dict):
        fields = schema.get("properties")
        for key, item in value.items():
            if fields is not None:
                here = path + field_segment(key)
                inner_schema = fields[key]
            else:
                # Written as the gateway writes a key in a path (long ones shortened).
                here, inner_schema = path + key_segment(key), schema["additionalProperties"]
            yield {**value, key: None}, here
            for inner, where in _nulled(item, inner_schema, doc, here):
                yield {**value, key: inner}, where
    elif isinstance(value, list):
        for index, item in enumerate(value):
            here = f"{path}[{index}]"
            if "prefixItems" in schema:
                inner_schema = schema["prefixItems"][index]
            else:
                inner_schema = schema["items"]
            yield [*value[:index], None, *value[index + 1 :]], here
            for inner, where in _nulled(item, inner_schema, doc, here):
                yield [*value[:index], inner, *value[index + 1 :]], where


METHODS = sorted(ALLTYPES.methods)
_SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


# -- the properties --------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
@_SETTINGS
@given(data=st.data())
def test_a_body_the_schema_accepts_is_answered(
    served: Served, method: str, data: st.DataObject
) -> None:
    doc = served.doc
    schema = _body_schema(doc, method)
    body = data.draw(from_schema(schema, doc))
    _validator(schema, doc).validate(body)  # the generator's own check
    status, reply = served.post(method, json.dumps(body).encode())
    op = _operation(doc, method)
    expected = "202" if ALLTYPES.methods[method].oneway else "200"
    assert str(status) == expected, (body, reply)
    _validator(op["responses"][expected]["content"]["application/json"]["schema"], doc).validate(
        reply
    )


@pytest.mark.parametrize("method", METHODS)
@_SETTINGS
@given(data=st.data())
def test_a_body_without_a_required_argument_or_with_a_null_is_a_400(
    served: Served, method: str, data: st.DataObject
) -> None:
    doc = served.doc
    schema = _body_schema(doc, method)
    body = data.draw(from_schema(schema, doc))
    broken: list[tuple[Any, str]] = [
        ({k: v for k, v in body.items() if k != name}, f"argument.{name}")
        for name in schema.get("required", ())
    ]
    broken += list(_nulled(body, schema, doc))
    if not broken:
        return  # nothing to leave out and nothing to null: testVoid with {}
    wrong, path = data.draw(st.sampled_from(broken))
    assert not _validator(schema, doc).is_valid(wrong)
    status, reply = served.post(method, json.dumps(wrong).encode())
    assert status == 400, (wrong, reply)
    assert reply["error"]["path"] == path


@pytest.mark.parametrize("method", [m for m in METHODS if ALLTYPES.methods[m].arg_names])
def test_an_empty_body_and_an_empty_object_are_a_400_naming_the_argument(
    served: Served, method: str
) -> None:
    schema = _body_schema(served.doc, method)
    assert served.doc["paths"][f"/rpc/AllTypes/{method}"]["post"]["requestBody"]["required"] is (
        "required" in schema
    )
    for body in (b"", b"{}", b"  "):
        status, reply = served.post(method, body)
        if "required" in schema:
            first = schema["required"][0]
            assert (status, reply["error"]["path"]) == (400, f"argument.{first}")
            assert reply["error"]["message"] == f"argument.{first}: required argument is missing"
        else:
            assert status in (200, 202)


def test_the_documents_required_lists_follow_the_idl(served: Served) -> None:
    doc = served.doc
    assert _body_schema(doc, "grid")["required"] == ["rows"]  # 2: optional string label
    assert _body_schema(doc, "sumXtructs")["required"] == ["xtructs"]  # 2: i32 scale = 1
    assert _body_schema(doc, "testString")["required"] == ["thing"]  # 1: string thing
    assert "required" not in _body_schema(doc, "testVoid")
    assert doc["components"]["schemas"]["Node"]["required"] == ["label"]
    assert served.post("testVoid", b"")[0] == 200


def test_a_reply_that_breaks_the_idl_is_a_502_naming_struct_and_field(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    body = json.dumps({"root": {"label": "a", "children": []}}).encode()
    assert served.post("echoTree", body) == (200, {"result": {"label": "a", "children": []}})
    Handler.broken = True
    try:
        with caplog.at_level(logging.WARNING, logger="offloop.gateway"):
            status, reply = served.post("echoTree", body)
    finally:
        Handler.broken = False
    assert status == 502
    assert reply["error"]["message"] == (
        "AllTypes.echoTree: reply breaks the IDL: required field Node.label is missing"
    )
    logged = [r.getMessage() for r in caplog.records if r.name == "offloop.gateway"]
    assert any("Node.label" in line and "echoTree" in line for line in logged), logged


def test_no_result_from_a_method_that_returns_one_is_a_502(served: Served) -> None:
    Handler.broken = True
    try:
        status, reply = served.post("testString", b'{"thing": "x"}')
    finally:
        Handler.broken = False
    assert (status, reply["error"]["message"]) == (
        502,
        "AllTypes.testString: backend returned no result",
    )
