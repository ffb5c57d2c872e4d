"""Tornado with ``run_in_executor`` on a ``ProcessPoolExecutor``: the textbook fix.

The handler awaits ``loop.run_in_executor(pool, ...)``; the work runs in ``--workers`` worker
processes (each builds its own TextLab handler once), the loop stays free. The pool is started
and warmed before the port opens.

    python bench/baselines/tornado_executor.py --port 8002 --workers 2
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
from typing import Any

import tornado.web
from _common import HEALTHZ, call, install_uvloop, parser

_handler: Any = None


def _init() -> None:
    global _handler
    from offloop.demo.textlab import Handler

    _handler = Handler()


def _call(method: str, body: bytes) -> bytes:
    return call(_handler, method, body)


def _warm(_: int) -> int:
    return os.getpid()


class Healthz(tornado.web.RequestHandler):
    def get(self) -> None:
        self.set_header("Content-Type", "application/json")
        self.write(HEALTHZ)


class Rpc(tornado.web.RequestHandler):
    def initialize(self, pool: concurrent.futures.ProcessPoolExecutor) -> None:
        self.pool = pool

    async def post(self, method: str) -> None:
        loop = asyncio.get_running_loop()
        answer = await loop.run_in_executor(self.pool, _call, method, self.request.body)
        self.set_header("Content-Type", "application/json")
        self.write(answer)


async def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    opts = p.parse_args()
    pool = concurrent.futures.ProcessPoolExecutor(opts.workers, initializer=_init)
    loop = asyncio.get_running_loop()
    # Start every worker (and build its handler) before serving.
    await asyncio.gather(*(loop.run_in_executor(pool, _warm, i) for i in range(opts.workers * 4)))
    app = tornado.web.Application(
        [(r"/healthz", Healthz), (r"/rpc/TextLab/(\w+)", Rpc, {"pool": pool})]
    )
    app.listen(opts.port, opts.host, backlog=2048)
    await asyncio.Event().wait()


if __name__ == "__main__":
    install_uvloop()
    asyncio.run(main())
