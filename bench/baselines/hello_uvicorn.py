"""A bare ASGI hello world on uvicorn (uvloop, httptools): the floor for a uvicorn front.

Reads the body, answers a fixed small JSON body; no framework, no JSON parsing, no backend.

    python bench/baselines/hello_uvicorn.py --port 8005
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import uvicorn
from _common import HEALTHZ, parser

HELLO = b'{"result":"hello"}'
HEADERS = [(b"content-type", b"application/json")]


async def app(
    scope: dict[str, Any],
    receive: Callable[[], Awaitable[dict[str, Any]]],
    send: Callable[[dict[str, Any]], Awaitable[None]],
) -> None:
    if scope["type"] != "http":
        return
    more = True
    while more:
        more = (await receive()).get("more_body", False)
    body = HEALTHZ if scope["path"] == "/healthz" else HELLO
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": body})


if __name__ == "__main__":
    opts = parser(__doc__ or "").parse_args()
    uvicorn.run(
        app,
        host=opts.host,
        port=opts.port,
        loop="uvloop",
        http="httptools",
        lifespan="off",
        log_level="warning",
        access_log=False,
        backlog=2048,
    )
