"""Many calls in flight at once: python docs/examples/async_client.py [HOST:PORT]."""

import asyncio
import sys

from handlers import IDL

from offloop import AsyncClient, ClientConfig


async def main(address: str) -> None:
    config = ClientConfig(pool_size=2)  # connections to the worker
    async with AsyncClient(IDL, "Echo", address, config=config, timeout=5.0) as client:
        # Eight calls at once: the worker runs two and queues six (it refuses calls beyond
        # workers + max_queued with Overloaded, at once).
        sums = await asyncio.gather(*(client.call("add", a=i, b=i) for i in range(8)))
        print(sum(sums))


asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:9090"))
