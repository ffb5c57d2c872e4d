"""What THeader costs end to end: ``ping`` req/s through the gateway, framed vs header.

Run: ``.venv/bin/python -m bench.header_overhead [--seconds 5] [--repeats 3]``. Starts one
``offloop worker --pool thread --workers 4`` and two gateways in front of it, one with
``--backend-transport framed`` and one with ``header`` (which sends the request id and the
deadline with every call), and drives each in turn with 32 closed-loop keep-alive clients of
``POST /rpc/TextLab/ping``, alternating within each repeat. Prints the median req/s of each
and their ratio. Nothing is pinned: on a loaded host, read the ratio, not the numbers.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
from pathlib import Path

from bench.common import free_port
from bench.loadgen import HttpStream, run_load
from bench.servers import running, wait_ready

IDL = str(Path(__file__).resolve().parents[1] / "src/offloop/demo/textlab.thrift")
CLIENTS = 32


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--repeats", type=int, default=3)
    opts = parser.parse_args()
    offloop = [sys.executable, "-m", "offloop.cli", "--log-level", "WARNING"]
    worker_port, admin_port = free_port(), free_port()
    worker = [
        *offloop, "worker", "--idl", IDL, "--service", "TextLab",
        "--handler", "offloop.demo.textlab:Handler", "--pool", "thread", "--workers", "4",
        "--max-queued", "256", "--port", str(worker_port), "--admin-port", str(admin_port),
    ]  # fmt: skip
    ports = {"framed": free_port(), "header": free_port()}
    with contextlib.ExitStack() as stack:
        proc = stack.enter_context(running(worker, stop_timeout=15))
        wait_ready(admin_port, "/readyz", proc=proc)
        for transport, port in ports.items():
            gateway = [
                *offloop, "gateway", "--idl", IDL, "--backend", f"127.0.0.1:{worker_port}",
                "--port", str(port), "--backend-transport", transport, "--grace", "1",
            ]  # fmt: skip
            proc = stack.enter_context(running(gateway, stop_timeout=15))
            wait_ready(port, "/readyz", proc=proc)
        rates: dict[str, list[float]] = {name: [] for name in ports}
        stream = HttpStream(
            "ping",
            path="/rpc/TextLab/ping",
            method="POST",
            body=b'{"msg": "hello"}',
            connections=CLIENTS,
        )
        for _ in range(opts.repeats):
            for name, port in ports.items():
                result = run_load(port, [stream], duration=opts.seconds, warmup=1.0)
                ping = result.streams["ping"]
                assert ping.failed == 0, ping.statuses
                rates[name].append(ping.throughput)
        framed, header = (statistics.median(rates[n]) for n in ("framed", "header"))
        print(f"ping req/s, {CLIENTS} clients, median of {opts.repeats} x {opts.seconds:g} s")
        for name in ports:
            print(f"  {name:7} {statistics.median(rates[name]):9.0f}   runs: "
                  + ", ".join(f"{r:.0f}" for r in rates[name]))  # fmt: skip
        print(f"  header / framed: {header / framed:.3f}")


if __name__ == "__main__":
    main()
