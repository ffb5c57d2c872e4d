"""An ASGI app on uvicorn whose ``sleep`` waits with ``time.sleep`` or ``asyncio.sleep``.

``--style sync`` writes the wait the wrong way, ``time.sleep`` inside the coroutine: the loop
waits with it. ``--style async`` awaits ``asyncio.sleep``: the loop serves others meanwhile.
A monitor task measures how late the loop runs a 5 ms timer; ``GET /stall`` returns the worst
lateness since the last ``GET /stall`` (and resets it).

    python bench/baselines/sleep_asgi.py --port 8006 --style sync
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import uvicorn
from _common import HEALTHZ, parser

TICK = 0.005
"""Seconds between the monitor's wake-ups: fine enough for a 100 ms stall."""

HEADERS = [(b"content-type", b"application/json")]


class App:
    def __init__(self, style: str) -> None:
        self.style = style
        self.worst = 0.0
        self._monitor: asyncio.Task[None] | None = None

    async def monitor(self) -> None:
        while True:
            due = time.perf_counter() + TICK
            await asyncio.sleep(TICK)
            self.worst = max(self.worst, time.perf_counter() - due)

    async def __call__(
        self,
        scope: dict[str, Any],
        receive: Callable[[], Awaitable[dict[str, Any]]],
        send: Callable[[dict[str, Any]], Awaitable[None]],
    ) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    self._monitor = asyncio.ensure_future(self.monitor())
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    if self._monitor is not None:
                        self._monitor.cancel()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        path = scope["path"]
        if path == "/healthz":
            answer = HEALTHZ
        elif path == "/stall":
            answer = json.dumps({"max_stall_ms": self.worst * 1000}).encode()
            self.worst = 0.0
        else:
            seconds = json.loads(body or b"{}").get("millis", 100) / 1000
            start = time.perf_counter()
            if self.style == "sync":
                time.sleep(seconds)  # the mistake this baseline exists to show
            else:
                await asyncio.sleep(seconds)
            waited = (time.perf_counter() - start) * 1000
            answer = json.dumps({"result": waited}).encode()
        await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
        await send({"type": "http.response.body", "body": answer})


if __name__ == "__main__":
    p = parser(__doc__ or "")
    p.add_argument("--style", choices=("sync", "async"), required=True)
    opts = p.parse_args()
    uvicorn.run(
        App(opts.style),
        host=opts.host,
        port=opts.port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        log_level="warning",
        access_log=False,
        backlog=2048,
    )
