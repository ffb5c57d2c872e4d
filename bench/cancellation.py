"""Cancellation (issue 13): how long the worker stays busy after every HTTP client gave up.

Run: ``.venv/bin/python -m bench.cancellation [--clients 200] [--millis 500] [--leave-after
0.05] [--pool process] [--workers 2]``. Starts one ``offloop worker`` (``--max-queued`` large
enough to admit every call, so that nothing is refused and the cost without cancellation is
the whole pile) and, in turn, a gateway with ``--backend-transport framed`` (which cannot
cancel: the worker runs every call to its end) and one with ``auto`` (THeader: the gateway
cancels the call of each client that goes away). For each, ``--clients`` HTTP clients send
``POST /rpc/TextLab/burn {"millis": ...}`` at once and close their socket ``--leave-after``
seconds later; then the worker's admin ``/metrics`` is polled until it is idle (no busy
worker, nothing queued). Prints, for each transport, the seconds from the last disconnect
until idle, the worker's ``cancelled`` count, and the host's load average before and after.
Nothing is pinned: on a loaded host the framed figure grows with the load; the header one
should stay under a second.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

IDL = str(Path(__file__).resolve().parents[1] / "src/offloop/demo/textlab.thrift")
#: Longest wait for the worker to become idle: beyond the physical cost of the framed case.
IDLE_TIMEOUT = 300.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _get(port: int, path: str) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
        return str(resp.read().decode())


def _wait_ready(port: int, path: str, timeout: float = 120.0) -> None:
    end = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError):
            _get(port, path)
            return
        if time.monotonic() > end:
            raise RuntimeError(f"nothing ready on port {port}{path}")
        time.sleep(0.1)


@contextlib.contextmanager
def _process(cmd: list[str]) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(cmd)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _sample(text: str, name: str, **labels: str) -> float:
    """The sum of the samples ``name`` whose labels include ``labels``."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name) or line.startswith("#"):
            continue
        match = re.match(r"([a-zA-Z_:]+)(\{[^}]*\})?\s+(\S+)", line)
        if match is None or match.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(match.group(3))
    return total


def _busy(admin_port: int) -> tuple[float, float]:
    text = _get(admin_port, "/metrics")
    return (
        _sample(text, "offloop_worker_busy_workers"),
        _sample(text, "offloop_worker_queue_depth"),
    )


async def _client(port: int, millis: int, leave_after: float) -> float:
    """One HTTP client: send the call, go away ``leave_after`` s later; when it left."""
    body = json.dumps({"millis": millis}).encode()
    _reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"POST /rpc/TextLab/burn HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    await writer.drain()
    await asyncio.sleep(leave_after)
    writer.transport.abort()  # gone, without waiting for anything
    return time.monotonic()


async def _crowd(port: int, clients: int, millis: int, leave_after: float) -> float:
    left = await asyncio.gather(*(_client(port, millis, leave_after) for _ in range(clients)))
    return max(left)


def run_once(
    transport: str, worker_port: int, admin_port: int, clients: int, millis: int, leave: float
) -> dict[str, float]:
    offloop = [sys.executable, "-m", "offloop.cli", "--log-level", "ERROR"]
    port = _free_port()
    gateway = [
        *offloop, "gateway", "--idl", IDL, "--backend", f"127.0.0.1:{worker_port}",
        "--port", str(port), "--backend-transport", transport, "--timeout", "600",
    ]  # fmt: skip
    before = _sample(
        _get(admin_port, "/metrics"), "offloop_worker_calls_total", outcome="cancelled"
    )
    with _process(gateway):
        _wait_ready(port, "/readyz")
        last_left = asyncio.run(_crowd(port, clients, millis, leave))
        seen_busy = 0.0
        while True:
            busy, queued = _busy(admin_port)
            seen_busy = max(seen_busy, busy + queued)
            now = time.monotonic()
            if busy == 0 and queued == 0:
                break
            if now - last_left > IDLE_TIMEOUT:
                raise RuntimeError(f"{transport}: still busy after {IDLE_TIMEOUT:g} s")
            time.sleep(0.02)
    text = _get(admin_port, "/metrics")
    outcomes = {
        outcome: _sample(text, "offloop_worker_calls_total", method="burn", outcome=outcome)
        for outcome in ("ok", "cancelled", "timeout", "overloaded", "crashed")
    }
    print(f"  {transport}: worker outcomes of burn so far: {outcomes}")
    return {
        "busy_after_last_disconnect_s": now - last_left,
        "cancelled": _sample(text, "offloop_worker_calls_total", outcome="cancelled") - before,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--millis", type=int, default=500)
    parser.add_argument("--leave-after", type=float, default=0.05)
    parser.add_argument("--pool", choices=["process", "thread"], default="process")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--transports", default="framed,auto", help="comma-separated, run in this order"
    )
    opts = parser.parse_args()
    offloop = [sys.executable, "-m", "offloop.cli", "--log-level", "ERROR"]
    worker_port, admin_port = _free_port(), _free_port()
    worker = [
        *offloop, "worker", "--idl", IDL, "--service", "TextLab",
        "--handler", "offloop.demo.textlab:Handler", "--pool", opts.pool,
        "--workers", str(opts.workers), "--max-queued", str(opts.clients + 16),
        "--call-timeout", "600", "--port", str(worker_port), "--admin-port", str(admin_port),
    ]  # fmt: skip
    print(
        f"{opts.clients} clients x burn({opts.millis}), leaving after {opts.leave_after * 1000:g}"
        f" ms; {opts.pool} pool, {opts.workers} workers; physical cost without cancellation "
        f"~{opts.clients * opts.millis / 1000 / opts.workers:.0f} s"
    )
    with _process(worker):
        _wait_ready(admin_port, "/readyz")
        for transport in opts.transports.split(","):
            load_before = os.getloadavg()
            result = run_once(
                transport, worker_port, admin_port, opts.clients, opts.millis, opts.leave_after
            )
            load_after = os.getloadavg()
            print(
                f"--backend-transport {transport:6}: worker busy "
                f"{result['busy_after_last_disconnect_s']:.2f} s after the last disconnect, "
                f"{result['cancelled']:.0f} calls cancelled; load average "
                f"{load_before[0]:.2f} before, {load_after[0]:.2f} after"
            )


if __name__ == "__main__":
    main()
