"""An OpenAPI 3.1 document for the gateway, built from the Thrift IDL.

Every method of every service becomes ``POST /rpc/{Service}/{method}``. The request body is
an object of named arguments; the reply is ``{"result": ...}`` (``null`` for ``void``), or
``202 {"result": null}`` for ``oneway`` methods. Errors share one body,
``components/schemas/Error``::

    {"error": {"request_id": "...", "code": 400, "message": "...", "type": "...",
               "fields": {...}, "path": "..."}}

A declared Thrift exception answers ``422`` (or the status ``exception_status`` gives its type)
with ``error.type`` set to the exception's Thrift name and ``error.fields`` to its JSON object;
each such body is a named schema, ``Error.<Exception>``.

Structs, exceptions and enums reached from a service are named schemas under
``components/schemas``, by their Thrift name (qualified by their IDL's name where two IDLs
declare the same name), referenced with ``$ref``; recursive structs need nothing more. The
schemas follow :mod:`offloop.codec.jsonmap` exactly, and use its helpers to classify types,
so that what the gateway emits validates against what this document says, and what it accepts
is what this document allows (but for an enum: its schema is its names, one type, which
generated clients make one enum class of, while the mapping also takes its integer):
a request body's ``required`` list holds every argument the IDL neither marks ``optional``
nor gives a default (:mod:`offloop.idl_requiredness`), a struct's the fields the IDL marks
``required``; no schema of an argument or field allows ``null``,
which the mapping refuses; integer strings (``i64``, integer map keys) have a pattern that
holds their range exactly.
The document's ``servers`` entry is the root path the gateway is reached under (``/`` unless
mounted or behind a proxy: :func:`with_root_path`).

The IDL's doc comments (:mod:`offloop.idl_docs`) become descriptions: a service's of its tag,
a method's of its operation, an argument's or a field's of its property, a struct's,
exception's or enum's (with its values' docs) of its schema. Each request body, result and
declared exception has an example made from the types alone: a field's default where it has
one (but an empty container), else ``"example sentence"`` for a string ``sentence``, ``1``,
``1.5``, ``true``, base64 of ``example``, an enum's first name, one element per container;
every field but those that would recurse, one field of a union. It is a value both its schema
and the JSON mapping accept, whatever the IDL; where none can be made (a required field that
recurses) there is no example.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import ModuleType
from typing import Any, Final

from offloop.codec.jsonmap import (
    split_field_spec,
)
from offloop.gateway.examples import NoExample
from offloop.gateway.openapi_types import ERROR_SCHEMA, TypeSchemas, ref
from offloop.idl import MethodInfo, ServiceInfo, included_modules
from offloop.idl_docs import IdlDocs

__all__ = [
    "DEFAULT_API_VERSION",
    "DEFAULT_EXCEPTION_STATUS",
    "build_openapi",
    "default_title",
    "with_root_path",
]

DEFAULT_EXCEPTION_STATUS: Final = 422
"""The status of a declared Thrift exception: the request was understood, and refused."""

DEFAULT_API_VERSION: Final = "0.1.0"
"""``info.version`` unless given: the API's version, which the IDL does not say (not offloop's
version: the API does not change when offloop does)."""

_OPENAPI_VERSION: Final = "3.1.0"
_JSON: Final = "application/json"
_ERROR: Final = ERROR_SCHEMA
_SCHEMAS: Final = "#/components/schemas/"
_RESPONSES: Final = "#/components/responses/"
# Exactly what base64.b64decode(..., validate=True) accepts: the standard alphabet, padded.
_BASE64_PATTERN: Final = "^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"

# The errors every call may meet, whatever its IDL: (component name, description).
_STANDARD_ERRORS: Final[dict[int, tuple[str, str]]] = {
    400: (
        "BadRequest",
        "The body is not JSON (bare NaN or Infinity, a duplicate key and nesting too deep "
        "count as not JSON), or the arguments do not fit the IDL (one required is left out, "
        "a value is `null` or of the wrong type); `error.path` says where "
        "(e.g. `argument.xtructs[2].i32_thing`).",
    ),
    404: ("NotFound", "No such service or method."),
    408: ("RequestTimeout", "The request's head or body did not arrive in time."),
    413: (
        "PayloadTooLarge",
        "The request body is over the gateway's limit, or came in too many chunks.",
    ),
    414: ("URITooLong", "The request line is over the gateway's limit."),
    415: ("UnsupportedMediaType", "The request body is not `application/json`."),
    431: (
        "RequestHeaderFieldsTooLarge",
        "The request's header fields are over the gateway's size or count limit.",
    ),
    500: ("InternalServerError", "The gateway failed unexpectedly (a bug: see its log)."),
    502: (
        "BadGateway",
        "The worker failed: it broke the connection, sent garbage, answered with a Thrift "
        "application error, or sent a reply that breaks the IDL (a `required` field left "
        "out, named in the message).",
    ),
    503: (
        "ServiceUnavailable",
        "No worker can take the call now (overloaded, or shutting down); try again later.",
    ),
    504: ("GatewayTimeout", "The call's deadline passed before the worker answered."),
}


#: ``error.request_id``: every error body carries it (the gateway adds it to each one).
_REQUEST_ID_SCHEMA: Final[dict[str, Any]] = {
    "type": "string",
    "description": "The request's id, as in the X-Request-Id response header: the one the "
    "request sent, if acceptable, else one the gateway made. Its log lines about the request "
    "end with it.",
}


def _error_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "description": "The body of every error the gateway answers.",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {
                    "request_id": _REQUEST_ID_SCHEMA,
                    "code": {"type": "integer", "description": "The HTTP status."},
                    "message": {"type": "string", "description": "What went wrong."},
                    "type": {
                        "type": "string",
                        "description": "The Thrift name of a declared exception, or the kind "
                        "of error.",
                    },
                    "fields": {
                        "type": "object",
                        "description": "A declared exception's fields, as JSON.",
                    },
                    "path": {
                        "type": "string",
                        "description": "Where in the request a bad value is.",
                    },
                },
            }
        },
    }


def _exception_error_schema(thrift_name: str, component: str) -> dict[str, Any]:
    return {
        "type": "object",
        "description": f"The error body of the declared exception {thrift_name}.",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message", "type", "fields"],
                "properties": {
                    "request_id": _REQUEST_ID_SCHEMA,
                    "code": {"type": "integer", "description": "The HTTP status."},
                    "message": {"type": "string"},
                    "type": {"const": thrift_name},
                    "fields": ref(component),
                },
            }
        },
    }


def _exception_statuses(types: TypeSchemas, overrides: Mapping[str, int] | None) -> dict[Any, int]:
    """The status of each declared exception type, after ``overrides`` (by Thrift name).

    A name that no served service declares is ignored, as the gateway ignores it: one
    configuration may serve several IDLs, or a subset of an IDL's services.

    Raises:
        ValueError: an override is not a 4xx or 5xx status.
    """
    overrides = overrides or {}
    for name, status in overrides.items():
        if not isinstance(status, int) or isinstance(status, bool) or not 400 <= status <= 599:
            raise ValueError(f"exception_status[{name!r}] must be a 4xx or 5xx, not {status!r}")
    return {
        cls: overrides.get(cls.__name__, DEFAULT_EXCEPTION_STATUS) for cls in types.exceptions()
    }


def _method_responses(
    service: ServiceInfo, method: MethodInfo, types: TypeSchemas, statuses: Mapping[Any, int]
) -> dict[str, Any]:
    responses: dict[str, Any] = {}
    if method.oneway:
        responses["202"] = _json_response(
            "Sent: a oneway call has no reply, so there is no result.",
            {
                "type": "object",
                "properties": {"result": {"type": "null"}},
                "required": ["result"],
                "additionalProperties": False,
            },
        )
        responses["202"]["content"][_JSON]["example"] = {"result": None}
    else:
        result: dict[str, Any] = {"type": "null"}
        example: dict[str, Any] | None = {"result": None}
        for field in method.result_cls.thrift_spec.values():
            if field[1] == "success":
                ttype, spec = split_field_spec(field)
                result = types.schema(ttype, spec)
                try:
                    example = {"result": types.example(ttype, spec, "result")}
                except NoExample:
                    example = None
        success: dict[str, Any] = {
            "schema": {
                "type": "object",
                "properties": {"result": result},
                "required": ["result"],
                "additionalProperties": False,
            }
        }
        if example is not None:
            success["example"] = example
        responses["200"] = {
            "description": "The method's result (`null` for a void method).",
            "content": {_JSON: success},
        }
    thrown: dict[int, list[Any]] = {}
    for _, cls in method.exceptions:
        thrown.setdefault(statuses[cls], []).append(cls)
    throws_docs = {
        cls: types.docs.method(service.service, method.name, "throws", field)
        for field, cls in method.exceptions
    }
    for status in sorted(set(_STANDARD_ERRORS) | set(thrown)):
        standard = _STANDARD_ERRORS.get(status)
        classes = thrown.get(status, [])
        if not classes:
            assert standard is not None  # a status is standard, thrown, or both
            responses[str(status)] = {"$ref": _RESPONSES + standard[0]}
            continue
        bodies = [ref(f"{_ERROR}.{types.names[cls]}") for cls in classes]
        listed = ", ".join(cls.__name__ for cls in classes)
        description = f"A declared exception: {listed}."
        if standard:
            # The generic Error also matches every exception body, so not oneOf here.
            schema: dict[str, Any] = {"anyOf": [ref(_ERROR), *bodies]}
            description = f"{standard[1]} Or a declared exception: {listed}."
        elif len(bodies) == 1:
            schema = bodies[0]
        elif len({cls.__name__ for cls in classes}) < len(classes):
            # Two IDLs' exceptions of one name: error.type cannot tell them apart.
            schema = {"anyOf": bodies}
        else:
            schema = {"oneOf": bodies}
        examples: dict[str, Any] = {}
        for cls in classes:
            example = _exception_example(service, method, types, cls, status)
            if example is not None:
                examples[types.names[cls]] = example
                if throws_docs[cls]:
                    example["description"] = throws_docs[cls]
        media: dict[str, Any] = {"schema": schema}
        if examples:
            media["examples"] = examples
        responses[str(status)] = {"description": description, "content": {_JSON: media}}
    return responses


def _exception_example(
    service: ServiceInfo, method: MethodInfo, types: TypeSchemas, cls: Any, status: int
) -> dict[str, Any] | None:
    """An Example Object of the body the gateway answers when ``method`` raises ``cls``."""
    fields = types.example_fields(cls)
    if fields is None:
        return None
    name = cls.__name__
    error = {
        "code": status,
        "message": f"{service.name}.{method.name} raised {name}",
        "type": name,
        "fields": fields,
    }
    return {"summary": name, "value": {"error": error}}


def _method_operation(
    service: ServiceInfo, method: MethodInfo, types: TypeSchemas, statuses: Mapping[Any, int]
) -> dict[str, Any]:
    docs = {
        name: types.docs.method(service.service, method.name, name) for name in method.arg_names
    }
    body = types.fields_schema(method.args_cls, docs=docs, arguments=True)
    media: dict[str, Any] = {"schema": body}
    example = types.example_fields(method.args_cls, arguments=True)
    if example is not None:
        media["example"] = example
    kind = "oneway method" if method.oneway else "method"
    doc = types.docs.method(service.service, method.name)
    return {
        "operationId": f"{service.name}_{method.name}",
        "summary": f"{service.name}.{method.name}",
        "description": doc or f"Calls the Thrift {kind} {service.name}.{method.name}.",
        "tags": [service.name],
        "requestBody": {
            "description": "The arguments, by name.",
            "required": "required" in body,
            "content": {_JSON: media},
        },
        "responses": _method_responses(service, method, types, statuses),
    }


def _json_response(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {_JSON: {"schema": schema}}}


def _readiness_schema() -> dict[str, Any]:
    backend = {
        "type": "object",
        "properties": {
            "service": {"type": "string"},
            "address": {"type": "string"},
            "up": {"type": "boolean"},
            "in_flight": {"type": "integer", "minimum": 0},
        },
    }
    return {
        "type": "object",
        "required": ["ready"],
        "properties": {
            "ready": {"type": "boolean"},
            "backends": {"type": "array", "items": backend},
        },
    }


def _operations_paths() -> dict[str, Any]:
    def get(operation: str, summary: str, responses: dict[str, Any]) -> dict[str, Any]:
        return {
            "get": {
                "operationId": operation,
                "summary": summary,
                "tags": ["operations"],
                "responses": responses,
            }
        }

    status = {"type": "object", "properties": {"status": {"const": "ok"}}}
    text = {"text/plain": {"schema": {"type": "string"}}}
    return {
        "/healthz": get(
            "healthz",
            "Liveness",
            {"200": _json_response("The gateway's event loop answers.", status)},
        ),
        "/readyz": get(
            "readyz",
            "Readiness",
            {
                "200": _json_response(
                    "Every service has a reachable backend.", _readiness_schema()
                ),
                "503": _json_response(
                    "Some service has no reachable backend, or the gateway is shutting down.",
                    _readiness_schema(),
                ),
            },
        ),
        "/metrics": get(
            "metrics",
            "Prometheus metrics",
            {
                "200": {
                    "description": "Metrics in the Prometheus text exposition format.",
                    "content": text,
                }
            },
        ),
        "/openapi.json": get(
            "openapi",
            "This document",
            {"200": _json_response("The OpenAPI document of this gateway.", {"type": "object"})},
        ),
        "/docs": get(
            "docs",
            "Interactive API documentation",
            {
                "200": {
                    "description": "A page to browse and try the API.",
                    "content": {"text/html": {"schema": {"type": "string"}}},
                }
            },
        ),
    }


def default_title(services: Sequence[ServiceInfo]) -> str:
    """The document's title unless one is given: ``"TextLab API"``, ``"A, B API"``."""
    if not services:
        return "offloop gateway"
    return ", ".join(service.name for service in services) + " API"


def _modules(services: Sequence[ServiceInfo]) -> list[ModuleType]:
    modules: dict[int, ModuleType] = {}
    for service in services:
        if service.module is not None:
            modules.setdefault(id(service.module), service.module)
    return list(modules.values())


def with_root_path(document: Mapping[str, Any], root_path: str) -> dict[str, Any]:
    """``document`` (from :func:`build_openapi`) with its ``servers`` entry at ``root_path``;
    the rest is shared, not copied."""
    return {**document, "servers": [{"url": root_path or "/"}]}


def build_openapi(
    services: Sequence[ServiceInfo],
    *,
    title: str | None = None,
    version: str | None = None,
    exception_status: Mapping[str, int] | None = None,
    root_path: str = "",
) -> dict[str, Any]:
    """Build the OpenAPI 3.1 document of a gateway in front of ``services``.

    The doc comments come from the ``.thrift`` files of the services' modules
    (``ServiceInfo.module``) and their includes, read here; a file that cannot be read, or
    comments the parser does not understand, only leave descriptions out.

    Args:
        services: the services the gateway serves, in the order their paths are listed.
        title: ``info.title``; ``None`` for :func:`default_title`.
        version: ``info.version``: the version of the API (not of OpenAPI); ``None`` for
            :data:`DEFAULT_API_VERSION`.
        exception_status: the HTTP status of a declared exception, by its Thrift name (as
            ``GatewayConfig.exception_status``); others answer 422, and names no service
            declares are ignored.
        root_path: the prefix the gateway is reached under (``/api``), the URL of the one
            entry of ``servers``; empty for ``/``. :func:`with_root_path` makes variants.

    Returns:
        The document, JSON-ready; it passes ``openapi_spec_validator.validate``.

    Raises:
        ValueError: two services share a name, or ``exception_status`` gives a status that is
            not 4xx or 5xx.
    """
    names = [service.name for service in services]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"services with the same name: {', '.join(duplicates)}")
    modules = _modules(services)
    unions = frozenset(
        cls
        for module in included_modules(modules)
        for cls in getattr(module, "__thrift_meta__", {}).get("unions", ())
    )
    types = TypeSchemas(services, IdlDocs.of_modules(modules), unions)
    statuses = _exception_statuses(types, exception_status)

    schemas: dict[str, Any] = {_ERROR: _error_schema()}
    for cls in types.classes:
        schemas[types.names[cls]] = types.component(cls)
    for cls in types.exceptions():
        component = types.names[cls]
        schemas[f"{_ERROR}.{component}"] = _exception_error_schema(cls.__name__, component)

    paths: dict[str, Any] = {}
    for service in services:
        for method in service.methods.values():
            paths[f"/rpc/{service.name}/{method.name}"] = {
                "post": _method_operation(service, method, types, statuses)
            }
    paths.update(_operations_paths())

    responses = {
        name: {"description": description, "content": {_JSON: {"schema": ref(_ERROR)}}}
        for name, description in _STANDARD_ERRORS.values()
    }
    tags = [
        {
            "name": service.name,
            "description": types.docs.of(service.service) or f"The Thrift service {service.name}.",
        }
        for service in services
    ]
    tags.append({"name": "operations", "description": "Health and metrics of the gateway."})
    title = default_title(services) if title is None else title
    version = DEFAULT_API_VERSION if version is None else version
    return {
        "openapi": _OPENAPI_VERSION,
        "info": {"title": title, "version": version},
        "servers": [{"url": root_path or "/"}],
        "tags": tags,
        "paths": paths,
        "components": {"schemas": schemas, "responses": responses},
    }
