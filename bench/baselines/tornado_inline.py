"""Tornado with the TextLab work inline: the handler runs on the event loop.

What many services look like: an async framework, a CPU-heavy call made straight from the
request handler. While it runs, nothing else on the loop does.

    python bench/baselines/tornado_inline.py --port 8001
"""

from __future__ import annotations

import asyncio

import tornado.web
from _common import HEALTHZ, call, install_uvloop, parser

from offloop.demo.textlab import Handler


class Healthz(tornado.web.RequestHandler):
    def get(self) -> None:
        self.set_header("Content-Type", "application/json")
        self.write(HEALTHZ)


class Rpc(tornado.web.RequestHandler):
    def initialize(self, handler: Handler) -> None:
        self.handler = handler

    def post(self, method: str) -> None:
        self.set_header("Content-Type", "application/json")
        self.write(call(self.handler, method, self.request.body))


async def main() -> None:
    opts = parser(__doc__ or "").parse_args()
    app = tornado.web.Application(
        [(r"/healthz", Healthz), (r"/rpc/TextLab/(\w+)", Rpc, {"handler": Handler()})]
    )
    app.listen(opts.port, opts.host, backlog=2048)
    await asyncio.Event().wait()


if __name__ == "__main__":
    install_uvloop()
    asyncio.run(main())
