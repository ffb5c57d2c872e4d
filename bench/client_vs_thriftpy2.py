"""Calls per second of ``ping``: offloop's multiplexed pool versus thriftpy2's async client.

Starts a framed Thrift server for the demo IDL in a separate process (so that the clients do
not share its event loop), then, in rounds that alternate between the two clients:

- offloop: one :class:`~offloop.client.pool.ConnectionPool` of ``--pool-size`` connections,
  ``--callers`` concurrent callers;
- thriftpy2: ``make_aio_client`` (framed, binary), one client (one connection) per caller,
  since its client sends seqid 0 and cannot carry two calls at once.

Prints the median calls/s of each and the ratio. Not a test: run it by hand::

    .venv/bin/python bench/client_vs_thriftpy2.py [--seconds 2] [--rounds 3] [--loop uvloop]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from offloop.client.config import ClientConfig
from offloop.client.pool import ConnectionPool
from offloop.codec.framing import FrameDecoder, encode_frame
from offloop.codec.message import MessageCodec
from offloop.idl import load_idl, service_info

IDL = Path(__file__).resolve().parents[1] / "src" / "offloop" / "demo" / "textlab.thrift"


# -- the server (its own process) -----------------------------------------------------------


class _PingServer(asyncio.Protocol):
    """Answers every ``ping`` at once, in arrival order, with its own seqid."""

    def __init__(self) -> None:
        self.decoder = FrameDecoder()
        self.codec = MessageCodec("binary")
        self.method = service_info(load_idl(IDL), "TextLab").methods["ping"]
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.decoder.feed(data)
        out = []
        for frame in self.decoder.frames():
            header, args = self.codec.decode_args(frame, self.method)
            result = self.method.result_cls(success=args.msg)
            out.append(encode_frame(self.codec.encode_reply("ping", header.seqid, result)))
        if out:
            self.transport.write(b"".join(out))


async def _serve(loop_kind: str) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_PingServer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    print(port, flush=True)
    await loop.run_in_executor(None, sys.stdin.read)  # until the parent closes our stdin
    server.close()


# -- the clients ------------------------------------------------------------------------------


async def _drive(call: Callable[[], Coroutine[Any, Any, Any]], callers: int, seconds: float) -> int:
    count = 0
    stop_at = 0.0

    async def caller() -> None:
        nonlocal count
        while time.perf_counter() < stop_at:
            await call()
            count += 1

    stop_at = time.perf_counter() + seconds
    await asyncio.gather(*(caller() for _ in range(callers)))
    return count


Result = tuple[float, float]  # (calls per second, client CPU microseconds per call)


async def _measure(
    call: Callable[[], Coroutine[Any, Any, Any]], callers: int, seconds: float
) -> Result:
    await _drive(call, callers, 0.3)  # warm up: connections open, code paths hot
    start, cpu = time.perf_counter(), time.process_time()
    n = await _drive(call, callers, seconds)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    return n / wall, cpu / n * 1e6


async def bench_offloop(port: int, callers: int, seconds: float, pool_size: int) -> Result:
    method = service_info(load_idl(IDL), "TextLab").methods["ping"]
    args = method.args_cls(msg="hello")
    pool = ConnectionPool("127.0.0.1", port, ClientConfig(), size=pool_size)
    try:

        def call() -> Coroutine[Any, Any, Any]:
            return pool.call(method, args, timeout=10.0)

        return await _measure(call, callers, seconds)
    finally:
        await pool.close()


async def bench_thriftpy2(port: int, callers: int, seconds: float) -> Result:
    from thriftpy2.contrib.aio.protocol import TAsyncBinaryProtocolFactory
    from thriftpy2.contrib.aio.transport import TAsyncFramedTransportFactory
    from thriftpy2.rpc import make_aio_client

    service = load_idl(IDL).TextLab
    clients = [
        await make_aio_client(
            service,
            "127.0.0.1",
            port,
            proto_factory=TAsyncBinaryProtocolFactory(),
            trans_factory=TAsyncFramedTransportFactory(),
            timeout=10_000,
        )
        for _ in range(callers)
    ]
    try:
        free = list(clients)

        async def call() -> Any:
            client = free.pop()  # one call at a time per client
            try:
                return await client.ping("hello")
            finally:
                free.append(client)

        return await _measure(call, callers, seconds)
    finally:
        for client in clients:
            client.close()


def _run(loop_kind: str, coro: Coroutine[Any, Any, Result]) -> Result:
    if loop_kind == "uvloop":
        import uvloop

        return uvloop.run(coro)
    return asyncio.run(coro)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--callers", type=int, default=64)
    parser.add_argument("--pool-size", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=2.0, help="per round and client")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--loop", choices=["asyncio", "uvloop"], default="uvloop")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    opts = parser.parse_args()

    if opts.serve:
        _run(opts.loop, _serve(opts.loop))  # type: ignore[arg-type]
        return

    server = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "--serve", "--loop", opts.loop],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        ours: list[Result] = []
        theirs: list[Result] = []
        for _ in range(opts.rounds):
            ours.append(
                _run(opts.loop, bench_offloop(port, opts.callers, opts.seconds, opts.pool_size))
            )
            theirs.append(_run(opts.loop, bench_thriftpy2(port, opts.callers, opts.seconds)))
    finally:
        assert server.stdin is not None
        server.stdin.close()
        try:
            server.wait(timeout=5)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()

    print(
        f"ping, {opts.callers} callers, loop={opts.loop}, {opts.rounds} rounds of "
        f"{opts.seconds}s, server in its own process; medians (client CPU: this process)"
    )
    print(f"  {'client':34} {'calls/s':>10} {'CPU us/call':>12}   calls/s per round")
    rows = [
        (f"offloop pool ({opts.pool_size} connections)", ours),
        (f"thriftpy2 make_aio_client ({opts.callers} conns)", theirs),
    ]
    medians = []
    for name, results in rows:
        rate = statistics.median(r[0] for r in results)
        cpu = statistics.median(r[1] for r in results)
        medians.append((rate, cpu))
        rounds = ", ".join(f"{r[0]:,.0f}" for r in results)
        print(f"  {name:34} {rate:10,.0f} {cpu:12.1f}   {rounds}")
    (a, a_cpu), (b, b_cpu) = medians
    print(f"  {'ratio offloop / thriftpy2':34} {a / b:9.2f}x {a_cpu / b_cpu:11.2f}x")


if __name__ == "__main__":
    main()
