"""A bare Tornado hello world: answers every request with a fixed small JSON body.

The floor for a Tornado front: no JSON parsing, no backend. Runs on uvloop, as the gateway.

    python bench/baselines/hello_tornado.py --port 8004
"""

from __future__ import annotations

import asyncio

import tornado.web
from _common import HEALTHZ, install_uvloop, parser

HELLO = b'{"result":"hello"}'


class Healthz(tornado.web.RequestHandler):
    def get(self) -> None:
        self.set_header("Content-Type", "application/json")
        self.write(HEALTHZ)


class Hello(tornado.web.RequestHandler):
    def post(self, _method: str) -> None:
        self.set_header("Content-Type", "application/json")
        self.write(HELLO)


async def main() -> None:
    opts = parser(__doc__ or "").parse_args()
    app = tornado.web.Application([(r"/healthz", Healthz), (r"/rpc/TextLab/(\w+)", Hello)])
    app.listen(opts.port, opts.host, backlog=2048)
    await asyncio.Event().wait()


if __name__ == "__main__":
    install_uvloop()
    asyncio.run(main())
