"""What the baseline servers share: flags, the TextLab handler and JSON of its results.

Every baseline answers the same two routes as the offloop gateway, so that the load generator
sends the very same bytes to every contender:

- ``GET /healthz``: the light request, ``{"status": "ok"}``;
- ``POST /rpc/TextLab/{method}`` with a JSON object of arguments: ``{"result": ...}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

HEALTHZ = b'{"status":"ok"}'
"""The body of every ``GET /healthz`` answer."""

RPC_PREFIX = "/rpc/TextLab/"
"""The route prefix of TextLab calls, as on the gateway."""


def parser(description: str) -> argparse.ArgumentParser:
    """Flags every baseline takes: ``--port`` (required) and ``--host``."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--host", default="127.0.0.1")
    return p


def install_uvloop() -> None:
    """Use uvloop, as the offloop CLI does, so that fronts differ only in their framework."""
    import uvloop

    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def to_json(value: Any) -> Any:
    """A TextLab result (a thriftpy2 struct, a list, a scalar) as JSON-ready values."""
    if hasattr(value, "thrift_spec"):
        return {spec[1]: to_json(getattr(value, spec[1])) for spec in value.thrift_spec.values()}
    if isinstance(value, list | tuple):
        return [to_json(v) for v in value]
    return value


def call(handler: Any, method: str, body: bytes) -> bytes:
    """Run ``method`` of the TextLab ``handler`` with the JSON ``body``; the JSON answer."""
    args = json.loads(body or b"{}")
    result = getattr(handler, method)(**args)
    return json.dumps({"result": to_json(result)}, separators=(",", ":")).encode()
