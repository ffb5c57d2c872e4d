"""FastAPI on uvicorn with a sync (``def``) endpoint: its thread pool, under the GIL.

FastAPI runs a ``def`` endpoint in a thread pool (anyio's, 40 threads), which keeps the loop
free of *blocking* calls, but pure-Python CPU work still holds the GIL that the loop needs.
``/healthz`` is an ``async def`` answered on the loop.

    python bench/baselines/fastapi_sync.py --port 8003
"""

from __future__ import annotations

from typing import Any

import uvicorn
from _common import parser, to_json
from fastapi import Body, FastAPI

from offloop.demo.textlab import Handler

app = FastAPI()
handler = Handler()


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@app.post("/rpc/TextLab/{method}")
def rpc(method: str, args: dict[str, Any] = Body(...)) -> dict[str, Any]:  # noqa: B008
    return {"result": to_json(getattr(handler, method)(**args))}


if __name__ == "__main__":
    opts = parser(__doc__ or "").parse_args()
    uvicorn.run(
        app,
        host=opts.host,
        port=opts.port,
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
        backlog=2048,
    )
