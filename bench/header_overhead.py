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
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from bench.loadgen import HttpStream, run_load

IDL = str(Path(__file__).resolve().parents[1] / "src/offloop/demo/textlab.thrift")
CLIENTS = 32


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_ready(port: int, path: str, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > end:
            raise RuntimeError(f"nothing ready on port {port}")
        time.sleep(0.1)


@contextlib.contextmanager
def _process(cmd: list[str]) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(cmd)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--repeats", type=int, default=3)
    opts = parser.parse_args()
    offloop = [sys.executable, "-m", "offloop.cli", "--log-level", "WARNING"]
    worker_port, admin_port = _free_port(), _free_port()
    worker = [
        *offloop, "worker", "--idl", IDL, "--service", "TextLab",
        "--handler", "offloop.demo.textlab:Handler", "--pool", "thread", "--workers", "4",
        "--max-queued", "256", "--port", str(worker_port), "--admin-port", str(admin_port),
    ]  # fmt: skip
    ports = {"framed": _free_port(), "header": _free_port()}
    with contextlib.ExitStack() as stack:
        stack.enter_context(_process(worker))
        _wait_ready(admin_port, "/readyz")
        for transport, port in ports.items():
            gateway = [
                *offloop, "gateway", "--idl", IDL, "--backend", f"127.0.0.1:{worker_port}",
                "--port", str(port), "--backend-transport", transport, "--grace", "1",
            ]  # fmt: skip
            stack.enter_context(_process(gateway))
            _wait_ready(port, "/readyz")
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
