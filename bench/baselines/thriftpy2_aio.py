"""thriftpy2's own asyncio Thrift server (``make_aio_server``) running the TextLab handler
inline on its loop, framed binary protocol: the reference for the worker tier's overhead.

    python bench/baselines/thriftpy2_aio.py --port 9001
"""

from __future__ import annotations

import asyncio
from typing import Any

import uvloop
from _common import parser
from thriftpy2.contrib.aio.protocol import TAsyncBinaryProtocolFactory
from thriftpy2.contrib.aio.transport import TAsyncFramedTransportFactory
from thriftpy2.rpc import make_aio_server

from offloop.demo.textlab import Handler, textlab_idl


class AsyncHandler:
    """thriftpy2's aio processor awaits each method: wrap the sync handler's methods."""

    def __init__(self, handler: Handler) -> None:
        self._handler = handler

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._handler, name)

        async def call(*args: Any) -> Any:
            return method(*args)

        return call


def main() -> None:
    opts = parser(__doc__ or "").parse_args()
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    server = make_aio_server(
        textlab_idl().TextLab,
        AsyncHandler(Handler()),
        opts.host,
        opts.port,
        proto_factory=TAsyncBinaryProtocolFactory(),
        trans_factory=TAsyncFramedTransportFactory(),
        client_timeout=None,
        loop=loop,
    )
    server.serve()


if __name__ == "__main__":
    main()
