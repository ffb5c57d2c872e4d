"""Who is at fault for each error, in memory: python docs/examples/errors.py."""

import asyncio

from handlers import IDL, Echo

from offloop import AsyncClient, OffloopError, PoolConfig, WorkerConfig, WorkerLimits
from offloop.testing import WorkerFor

CONFIG = WorkerConfig(
    idl=IDL,
    service="Echo",
    pool=PoolConfig(kind="thread", workers=1),
    limits=WorkerLimits(max_queued=0),  # one call at a time, none waiting
)


async def show(what: str, call) -> None:
    try:
        await call
    except OffloopError as exc:
        print(f"{what}: {type(exc).__name__}, blame {exc.blame.name}: {exc.public_message}")


async def main() -> None:
    async with WorkerFor(CONFIG, handler=Echo()) as worker:
        net = worker.network
        async with (
            AsyncClient(IDL, "Echo", worker.address, network=net) as client,
            AsyncClient(IDL, "Echo", worker.address, network=net) as other,
            AsyncClient(IDL, "Echo", ("memory", 9), network=net) as nobody,
        ):
            await show("wrong argument", client.call("echo", txt="hi"))
            await show("handler raised", client.call("fail", why="boom"))
            await show("too slow", client.call("sleep", seconds=0.5, timeout=0.1))
            await show("worker busy", other.call("echo", text="hi"))  # the sleep runs on
            await show("nobody there", nobody.call("echo", text="hi"))
            await asyncio.sleep(0.5)  # let the sleep end before the worker stops


asyncio.run(main())
