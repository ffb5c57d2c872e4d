"""Cancellation (issue 13): how long the worker stays busy after every HTTP client gave up.

Run: ``.venv/bin/python -m bench.cancellation [--clients 200] [--millis 500] [--leave-after
0.05] [--pool process] [--workers 2] [--modes loop,actor] [--transports framed,auto] [--actors
32] [--mailbox 8] [--crowds 1]``. For each gateway mode and backend transport, in that order, it
starts a fresh ``offloop worker`` (so that each case starts with the whole early-kill budget,
``--early-kills-per-minute``; ``--max-queued`` large enough to admit every call, so that nothing
is refused and the cost without cancellation is the whole pile) and a gateway in front of it:
``--backend-transport framed`` cannot cancel (the worker runs every call it was sent to its
end), ``auto`` (THeader) cancels the call of each client that goes away. In actor mode the
gateway has ``--actors`` actors with ``--mailbox`` calls queued each (enough to admit every
client by default): only the calls the actors have sent reach the worker, and a call given up in
a mailbox is never sent. After ``--actors`` concurrent ``ping`` calls (so that every actor, or
pooled connection, has connected and probed its backend, as in a gateway that has been serving
for a while), ``--clients`` HTTP clients send ``POST /rpc/TextLab/burn {"millis": ...}`` at once
and close their socket ``--leave-after`` seconds later; then the worker's admin ``/metrics`` is
polled until it is idle (no busy worker, nothing queued). With ``--crowds N``, N crowds come in
a row, each once the worker is idle and its pool whole again: a process pool's early-kill budget
(a burst of ``--workers``, then 6 a minute) is spent by the first, so the later ones show what a
running call that is no longer killed costs (it runs to its end). Prints, for each case, the
seconds from the last disconnect until idle (per crowd), the outcomes of ``burn`` (all crowds),
and the host's load average before and after. Nothing is pinned: on a loaded host the framed
figures grow with the load; the THeader ones should stay under a second.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from bench.common import free_port
from bench.servers import running, wait_ready

IDL = str(Path(__file__).resolve().parents[1] / "src/offloop/demo/textlab.thrift")
#: Longest wait for the worker to become idle: beyond the physical cost of the framed case.
IDLE_TIMEOUT = 300.0


def _get(port: int, path: str) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
        return str(resp.read().decode())


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


async def _ping(port: int) -> None:
    """One ``ping`` through the gateway, waiting for the whole answer."""
    body = b'{"msg": "warm"}'
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"POST /rpc/TextLab/ping HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n"
        b"Content-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    await writer.drain()
    answer = await reader.read()
    writer.close()
    if not answer.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"warm-up ping failed: {answer[:200]!r}")


async def _warm(port: int, calls: int) -> None:
    """``calls`` pings at once: every actor (idle ones are picked first) or pooled
    connection has connected and probed its backend before the crowd comes."""
    await asyncio.gather(*(_ping(port) for _ in range(calls)))


async def _crowd(port: int, clients: int, millis: int, leave_after: float) -> float:
    left = await asyncio.gather(*(_client(port, millis, leave_after) for _ in range(clients)))
    return max(left)


@dataclass(frozen=True)
class Case:
    """One gateway in front of one fresh worker."""

    mode: str  # loop or actor
    transport: str  # --backend-transport: framed or auto


OUTCOMES = ("ok", "cancelled", "timeout", "overloaded", "crashed")


def _idle(admin_port: int, since: float, case: Case) -> float:
    """Poll the worker until it is idle; when it was seen idle."""
    while True:
        busy, queued = _busy(admin_port)
        now = time.monotonic()
        if busy == 0 and queued == 0:
            return now
        if now - since > IDLE_TIMEOUT:
            raise RuntimeError(f"{case}: still busy after {IDLE_TIMEOUT:g} s")
        time.sleep(0.02)


def _wait_whole(admin_port: int, workers: int, case: Case) -> None:
    """Wait until the pool has all its workers (children killed by a crowd are replaced)."""
    end = time.monotonic() + IDLE_TIMEOUT
    while _sample(_get(admin_port, "/metrics"), "offloop_worker_alive_workers") < workers:
        if time.monotonic() > end:
            raise RuntimeError(f"{case}: the pool is not whole after {IDLE_TIMEOUT:g} s")
        time.sleep(0.02)


def run_case(case: Case, opts: argparse.Namespace) -> dict[str, float]:
    """Start a worker and a gateway, send the crowd, wait until the worker is idle; the
    seconds from the last disconnect until idle, and the worker's outcomes of ``burn``."""
    offloop = [sys.executable, "-m", "offloop.cli", "--log-level", "ERROR"]
    worker_port, admin_port, port = free_port(), free_port(), free_port()
    worker = [
        *offloop, "worker", "--idl", IDL, "--service", "TextLab",
        "--handler", "offloop.demo.textlab:Handler", "--pool", opts.pool,
        "--workers", str(opts.workers), "--max-queued", str(opts.clients + 16),
        "--call-timeout", "600", "--port", str(worker_port), "--admin-port", str(admin_port),
        "--grace", "1",
    ]  # fmt: skip
    gateway = [
        *offloop, "gateway", "--idl", IDL, "--backend", f"127.0.0.1:{worker_port}",
        "--port", str(port), "--backend-transport", case.transport, "--timeout", "600",
        "--mode", case.mode, "--grace", "1",
    ]  # fmt: skip
    if case.mode == "actor":
        gateway += ["--actors", str(opts.actors), "--mailbox", str(opts.mailbox)]
    with running(worker) as worker_proc:
        wait_ready(admin_port, "/readyz", proc=worker_proc)
        with running(gateway) as gateway_proc:
            wait_ready(port, "/readyz", proc=gateway_proc)
            asyncio.run(_warm(port, opts.actors))
            busy_for = []
            for _ in range(opts.crowds):
                _wait_whole(admin_port, opts.workers, case)  # killed children replaced
                last_left = asyncio.run(_crowd(port, opts.clients, opts.millis, opts.leave_after))
                busy_for.append(_idle(admin_port, last_left, case) - last_left)
        text = _get(admin_port, "/metrics")
    result = {f"busy_s_{i}": busy for i, busy in enumerate(busy_for)}
    for outcome in OUTCOMES:
        result[outcome] = _sample(
            text, "offloop_worker_calls_total", method="burn", outcome=outcome
        )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--millis", type=int, default=500)
    parser.add_argument("--leave-after", type=float, default=0.05)
    parser.add_argument("--pool", choices=["process", "thread"], default="process")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--modes", default="loop,actor", help="gateway modes, in this order")
    parser.add_argument(
        "--transports", default="framed,auto", help="comma-separated, run in this order"
    )
    parser.add_argument("--actors", type=int, default=32, help="actor mode: --actors")
    parser.add_argument("--mailbox", type=int, default=8, help="actor mode: --mailbox")
    parser.add_argument(
        "--crowds",
        type=int,
        default=1,
        help="crowds in a row against the same worker and gateway (each waits for the worker "
        "to be idle): the later ones show the early-kill budget at work",
    )
    opts = parser.parse_args()
    print(
        f"{opts.clients} clients x burn({opts.millis}), leaving after {opts.leave_after * 1000:g}"
        f" ms; {opts.pool} pool, {opts.workers} workers; physical cost without cancellation "
        f"~{opts.clients * opts.millis / 1000 / opts.workers:.0f} s; actor mode: "
        f"{opts.actors} actors, mailbox {opts.mailbox}",
        flush=True,
    )
    rows = []
    for mode in opts.modes.split(","):
        for transport in opts.transports.split(","):
            case = Case(mode, transport)
            load_before = os.getloadavg()[0]
            result = run_case(case, opts)
            load_after = os.getloadavg()[0]
            outcomes = ", ".join(f"{o} {result[o]:.0f}" for o in OUTCOMES if result[o])
            busy = " / ".join(f"{result[f'busy_s_{i}']:.2f}" for i in range(opts.crowds))
            row = (
                f"{opts.pool:7} {mode:5} --backend-transport {transport:6}: worker busy "
                f"{busy} s after the last disconnect; "
                f"burn outcomes: {outcomes}; load average {load_before:.2f} before, "
                f"{load_after:.2f} after"
            )
            print(row, flush=True)
            rows.append(row)
    print("\n".join(["", "summary:", *rows]))


if __name__ == "__main__":
    main()
