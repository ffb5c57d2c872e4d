"""Issue 11, items 10 and 11, measured against any gateway: a 503 storm, and a burst.

For each system under test (a gateway command and a worker command, e.g. an older tree's
``offloop gateway`` and ``offloop worker``) this starts the worker and the gateway on
127.0.0.1, drives them from forked load-generator processes, and stops everything it started
(SIGTERM to each process group, then SIGKILL), whatever happened.

Storm (item 10), once per gateway kind (``loop``: uvicorn in loop mode, ``actor``: uvicorn in
actor mode, ``tornado``: Tornado in loop mode): a worker with ``--workers`` processes (and the
default queue of four calls per process) serves ``burn(--burn)``: its capacity is
``workers * 1000 / burn`` calls per second (2 processes, 50 ms: 40/s). ``--clients`` clients
call it through the gateway in a closed loop, each on its own keep-alive connection, sending
the next call as soon as the last one is answered, 503 or not (``--polite`` adds a run whose
clients wait ``Retry-After`` after a 503, for reference). Meanwhile another process GETs
``/healthz`` at ``--healthz-rate`` per second on a fixed schedule (latency counted from when
each was due). Reported, over the ``--duration`` window after ``--warmup``:

- goodput: calls answered 200 per second, as a share of the worker's capacity;
- the 99th percentile latency of the 503 answers, and of ``/healthz``;
- the CPU seconds the gateway process used in the window (and the worker's, all processes);
- the share of the 503 answers that cost a round trip to the worker (calls the worker refused,
  from its admin port's ``/metrics``).

Burst (item 11): a worker with a thread pool of ``--burst-threads`` threads and a queue that
takes the whole burst serves ``sleep(--burst-millis)``; a gateway in loop mode (its
``--max-inflight`` raised so that it takes the whole burst) gets ``--burst`` calls at once,
each on its own connection opened beforehand: ``cold`` right after the gateway is ready,
``warm`` after that, and ``restart`` right after the worker is stopped and a new one listens on
its port (and the gateway reports ready). Reported: answered (200), refused (503), other.

Example (the tree of two commits ago, then this one)::

    .venv/bin/python bench/attacks/storm.py \\
        --gateway-cmd "before=/tmp/x/before/.venv/bin/offloop gateway" \\
        --worker-cmd "before=/tmp/x/before/.venv/bin/offloop worker" \\
        --gateway-cmd "after=.venv/bin/offloop gateway" \\
        --worker-cmd "after=.venv/bin/offloop worker"

The load generator uses the standard library (and uvloop if installed) and writes its HTTP
requests by hand, so it drives any version. Its own CPU use is reported: on a small machine
it competes with the system under test. There, give the worker cores of its own and the
clients the lowest priority, e.g. on two cores ``--workers 1 --worker-cpus 1 --gateway-cpus 0
--generator-cpus 0 --generator-nice 19`` (capacity 20/s), and repeat runs (``--repeat``,
``--wait-quiet``): what else the machine runs is reported as ``host busy %``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing as mp
import os
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
IDL = ROOT / "src/offloop/demo/textlab.thrift"
HANDLER = "offloop.demo.textlab:Handler"
HOST = "127.0.0.1"

#: Seconds a server gets to start (the demo handler loads NLTK and calibrates ``burn`` in
#: each process), and to stop on SIGTERM before it is killed.
START = 90.0
STOP = 10.0
#: Connections a generator process opens at once: thousands at once overflow a backlog.
CONNECT_CONCURRENCY = 100
#: Seconds a storm client's call may take before it is counted as failed; the gateway's own
#: deadline (30 s by default) answers first.
CALL_TIMEOUT = 40.0
#: Seconds calls still in flight after the window may take before they are cut.
DRAIN = 2.0
#: Longest wait for a quiet machine before a storm run (``--wait-quiet``).
QUIET_WAIT = 180.0
#: Connections the /healthz probe opens before it starts, and the most it opens: one per
#: request outstanding at once (so that it measures requests, not connects, unless it must).
PROBE_OPEN = 16
PROBE_CONNECTIONS = 64
#: Seconds the burst waits for its answers before counting the rest as "no answer".
BURST_TIMEOUT = 60.0
GATEWAY_KINDS = {"loop": ("loop", "uvicorn"), "actor": ("actor", "uvicorn")}
GATEWAY_KINDS["tornado"] = ("loop", "tornado")


# -- processes -------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def tree_pids(pid: int) -> list[int]:
    """``pid`` and its descendants (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            stat = (entry / "stat").read_text()
            ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds of ``pids`` (those still alive)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            stat = Path(f"/proc/{pid}/stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            total += int(fields[11]) + int(fields[12])
    return total / tick


def _cpu_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs since boot, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def cpu_busy(seconds: float = 1.0) -> float:
    """Share of all CPUs busy over the next ``seconds``: the others' work, when nothing of
    ours runs. On a shared machine it says how far to trust a run."""
    busy0, total0 = _cpu_ticks()
    time.sleep(seconds)
    busy1, total1 = _cpu_ticks()
    return (busy1 - busy0) / (total1 - total0) if total1 > total0 else 0.0


def wait_quiet(below: float, longest: float = QUIET_WAIT) -> float:
    """Wait (at most ``longest`` seconds) until others use less than ``below`` percent of the
    machine; returns the share last measured (0 to 1)."""
    deadline = time.monotonic() + longest
    while True:
        busy = cpu_busy()
        if 100 * busy < below or time.monotonic() > deadline:
            return busy


def worker_refusals(admin_port: int) -> float:
    """Calls the worker refused (``offloop_worker_calls_total{outcome="overloaded"}`` of its
    admin port's ``/metrics``): each one cost the gateway a round trip."""
    url = f"http://{HOST}:{admin_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as r:
        text = r.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("offloop_worker_calls_total{") and 'outcome="overloaded"' in line
    )


@dataclass
class Server:
    """A server process in its own session, so that its whole tree can be signalled."""

    name: str
    args: list[str]
    log: Path
    port: int
    cpus: tuple[int, ...] | None = None  # the process and its children run only there
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Server:
        cpus = self.cpus

        def pin() -> None:  # in the child, before exec: inherited by all it starts
            if cpus is not None:
                os.sched_setaffinity(0, cpus)

        with self.log.open("ab") as out:
            out.write(f"$ {shlex.join(self.args)}\n".encode())
            out.flush()
            self.proc = subprocess.Popen(
                self.args,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=pin,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def check(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            tail = self.log.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{self.name} exited ({self.proc.returncode}):\n{tail}")

    def wait_port(self) -> None:
        deadline = time.monotonic() + START
        while True:
            self.check()
            with contextlib.suppress(OSError), socket.create_connection((HOST, self.port), 1):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not listen within {START:g} s")
            time.sleep(0.05)

    def wait_ready(self) -> None:
        """Wait for ``GET /readyz`` to answer 200 (a gateway with a backend up)."""
        deadline = time.monotonic() + START
        url = f"http://{HOST}:{self.port}/readyz"
        while True:
            self.check()
            with (
                contextlib.suppress(OSError, urllib.error.URLError),
                urllib.request.urlopen(url, timeout=2) as r,
            ):
                if r.status == 200:
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} was not ready within {START:g} s")
            time.sleep(0.05)

    def stop(self) -> None:
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(STOP)
        with contextlib.suppress(ProcessLookupError):  # children left by a hard exit
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(STOP)


@contextlib.contextmanager
def servers() -> Iterator[list[Server]]:
    """Servers started in the block are stopped at its end, last first."""
    started: list[Server] = []
    try:
        yield started
    finally:
        for server in reversed(started):
            server.stop()


@dataclass(frozen=True)
class Placement:
    """Where each part runs: CPU sets (None: anywhere), and the generator's niceness."""

    gateway: tuple[int, ...] | None = None
    worker: tuple[int, ...] | None = None
    generator: tuple[int, ...] | None = None
    generator_nice: int = 0
    probe_nice: int = 0

    def describe(self) -> str:
        def cpus(c: tuple[int, ...] | None) -> str:
            return "any" if c is None else ",".join(map(str, c))

        return (
            f"CPUs: gateway {cpus(self.gateway)}, worker {cpus(self.worker)}, generator "
            f"{cpus(self.generator)} (nice {self.generator_nice}, /healthz probe nice "
            f"{self.probe_nice})"
        )


@dataclass(frozen=True)
class System:
    """One system under test: how to start its gateway and its worker, and where."""

    name: str
    gateway: list[str]
    worker: list[str]
    placement: Placement

    def worker_server(self, logs: Path, port: int, **flags: Any) -> Server:
        args = [*self.worker, "--idl", str(IDL), "--service", "TextLab", "--handler", HANDLER]
        args += ["--host", HOST, "--port", str(port)]
        for key, value in flags.items():
            args += [f"--{key.replace('_', '-')}", str(value)]
        log = logs / f"{self.name}-worker.log"
        return Server(f"{self.name} worker", args, log, port, self.placement.worker)

    def gateway_server(self, logs: Path, backend: int, kind: str, **flags: Any) -> Server:
        mode, server = GATEWAY_KINDS[kind]
        port = free_port()
        args = [*self.gateway, "--idl", str(IDL), "--backend", f"{HOST}:{backend}"]
        args += ["--host", HOST, "--port", str(port), "--mode", mode, "--server", server]
        for key, value in flags.items():
            args += [f"--{key.replace('_', '-')}", str(value)]
        log = logs / f"{self.name}-gateway.log"
        return Server(f"{self.name} gateway", args, log, port, self.placement.gateway)


# -- the HTTP load generator -----------------------------------------------------------------


def request_bytes(port: int, method: str, path: str, body: bytes = b"") -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
    if method != "GET":
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + body


class _Http(asyncio.Protocol):
    """A keep-alive connection with one request in flight at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.waiter: asyncio.Future[tuple[int, bool]] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionResetError("closed by the server"))

    def data_received(self, data: bytes) -> None:
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0 or self.waiter is None or self.waiter.done():
            return
        head = bytes(self.buf[:end]).lower()
        start = head.find(b"\r\ncontent-length:")
        length = 0
        if start >= 0:
            stop = head.find(b"\r\n", start + 2)
            length = int(head[start + 17 : stop if stop >= 0 else None])
        if len(self.buf) < end + 4 + length:
            return
        del self.buf[: end + 4 + length]
        self.waiter.set_result((int(head[9:12]), b"\r\nconnection: close" in head))

    async def send(self, request: bytes) -> tuple[int, bool]:
        if self.transport is None:
            raise ConnectionResetError("connection is closed")
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return await self.waiter

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def _open(port: int) -> _Http:
    loop = asyncio.get_running_loop()
    for attempt in range(5):
        try:
            _, proto = await loop.create_connection(_Http, HOST, port)
            return proto
        except OSError:
            if attempt == 4:
                raise
            await asyncio.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")


async def _open_many(port: int, n: int) -> list[_Http]:
    sem = asyncio.Semaphore(CONNECT_CONCURRENCY)

    async def one() -> _Http:
        async with sem:
            return await _open(port)

    return list(await asyncio.gather(*(one() for _ in range(n))))


@dataclass
class Tally:
    """What one generator process (or all of them, merged) saw."""

    statuses: dict[str, int] = field(default_factory=dict)
    latencies: dict[str, list[float]] = field(default_factory=dict)
    ok_in_window: int = 0
    cpu: float = 0.0

    def add(self, status: str, latency: float | None) -> None:
        self.statuses[status] = self.statuses.get(status, 0) + 1
        if latency is not None:
            self.latencies.setdefault(status, []).append(latency)

    def merge(self, other: Tally) -> None:
        for k, n in other.statuses.items():
            self.statuses[k] = self.statuses.get(k, 0) + n
        for k, values in other.latencies.items():
            self.latencies.setdefault(k, []).extend(values)
        self.ok_in_window += other.ok_in_window
        self.cpu += other.cpu

    def quantile(self, status: str, q: float) -> float | None:
        values = sorted(self.latencies.get(status, []))
        if not values:
            return None
        return values[min(len(values) - 1, int(len(values) * q))]


def _loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop

        return uvloop.new_event_loop()
    except ImportError:
        return asyncio.new_event_loop()


def _cpu() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _storm(
    barrier: Any, port: int, conns: int, request: bytes, pause: float, warmup: float,
    duration: float,
) -> Tally:  # fmt: skip
    pool = await _open_many(port, conns)
    await asyncio.get_running_loop().run_in_executor(None, barrier.wait, START)
    cpu0 = _cpu()
    start = time.monotonic() + warmup
    end = start + duration
    tally = Tally()

    async def client(conn: _Http) -> None:
        while time.monotonic() < end:
            sent = time.monotonic()
            try:
                async with asyncio.timeout(CALL_TIMEOUT):
                    status, close = await conn.send(request)
                code = str(status)
            except (OSError, TimeoutError) as exc:
                code, close = type(exc).__name__, True
            done = time.monotonic()
            if start <= sent < end:
                tally.add(code, done - sent)
            if code == "200" and start <= done < end:
                tally.ok_in_window += 1
            if close:
                conn.close()
                conn = await _open(port)
            if code != "200" and pause:
                await asyncio.sleep(pause)  # a polite client: Retry-After
        conn.close()

    tasks = [asyncio.ensure_future(client(c)) for c in pool]
    await asyncio.sleep(max(0.0, end - time.monotonic()))
    _, pending = await asyncio.wait(tasks, timeout=DRAIN)
    for task in pending:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    tally.cpu = _cpu() - cpu0
    return tally


async def _paced(
    barrier: Any, port: int, request: bytes, rate: float, warmup: float, duration: float
) -> Tally:
    """GET at ``rate`` per second on a fixed schedule, each on an idle connection of its own
    (up to :data:`PROBE_CONNECTIONS`), latency counted from when it was due: a slow answer
    neither delays the next request nor hides behind it."""
    idle = await _open_many(port, PROBE_OPEN)
    opened = len(idle)
    await asyncio.get_running_loop().run_in_executor(None, barrier.wait, START)
    cpu0 = _cpu()
    t0 = time.monotonic()
    start, end = t0 + warmup, t0 + warmup + duration
    tally = Tally()
    tasks: set[asyncio.Task[None]] = set()

    async def one(conn: _Http | None, due: float) -> None:
        nonlocal opened
        try:
            if conn is None:
                conn = await _open(port)
            status, close = await conn.send(request)
            code = str(status)
        except OSError as exc:
            code, close = type(exc).__name__, True
        if due >= start:
            tally.add(code, time.monotonic() - due)
        if close or conn is None:
            opened -= 1
            if conn is not None:
                conn.close()
        else:
            idle.append(conn)

    i = 0
    while True:
        due = t0 + i / rate
        if due >= end:
            break
        i += 1
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        due = min(due, time.monotonic())  # a timer may wake a little early
        if idle:
            conn: _Http | None = idle.pop()
        elif opened < PROBE_CONNECTIONS:
            conn, opened = None, opened + 1
        else:
            tally.add("no connection free", None)
            continue
        task = asyncio.ensure_future(one(conn, due))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.wait(tasks, timeout=DRAIN)
        for task in list(tasks):
            task.cancel()
    for conn in idle:
        conn.close()
    tally.cpu = _cpu() - cpu0
    return tally


async def _burst(barrier: Any, port: int, conns: int, request: bytes) -> Tally:
    pool = await _open_many(port, conns)
    await asyncio.get_running_loop().run_in_executor(None, barrier.wait, START)
    tally = Tally()

    async def one(conn: _Http) -> None:
        try:
            async with asyncio.timeout(BURST_TIMEOUT):
                status, _ = await conn.send(request)
            tally.add(str(status), None)
        except (OSError, TimeoutError) as exc:
            tally.add(type(exc).__name__, None)
        conn.close()

    await asyncio.gather(*(one(c) for c in pool))
    return tally


_SCENARIOS: dict[str, Callable[..., Coroutine[Any, Any, Tally]]] = {
    "storm": _storm,
    "paced": _paced,
    "burst": _burst,
}


def _child(
    kind: str, args: tuple[Any, ...], barrier: Any, placement: Placement, pipe: Connection
) -> None:
    try:
        if placement.generator is not None:
            os.sched_setaffinity(0, placement.generator)
        nice = placement.probe_nice if kind == "paced" else placement.generator_nice
        if nice:
            # The /healthz probe may run ahead of the storm's clients (as root), so that it
            # measures the gateway rather than its own wait for a CPU.
            with contextlib.suppress(PermissionError):
                os.nice(nice)
        loop = _loop()
        scenario: Callable[..., Coroutine[Any, Any, Tally]] = _SCENARIOS[kind]
        coro = scenario(barrier, *args)
        pipe.send(("ok", loop.run_until_complete(coro)))
        loop.close()
    except BaseException as exc:  # reported to the parent, which raises it
        with contextlib.suppress(Exception):
            barrier.abort()
        pipe.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        pipe.close()


def run_generators(
    jobs: list[tuple[str, tuple[Any, ...]]],
    placement: Placement,
    during: Callable[[], None] | None = None,
) -> list[Tally]:
    """Run each ``(kind, args)`` in a forked process; once all have connected they start
    together, and ``during`` runs here; returns their tallies in order."""
    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(len(jobs) + 1)
    procs: list[tuple[Any, Connection]] = []
    try:
        for kind, args in jobs:
            parent, child = ctx.Pipe(duplex=False)
            proc = ctx.Process(
                target=_child, args=(kind, args, barrier, placement, child), daemon=True
            )
            proc.start()
            child.close()
            procs.append((proc, parent))
        with contextlib.suppress(threading.BrokenBarrierError):  # a child failed: see below
            barrier.wait(START)
            if during is not None:
                during()
        out = []
        for _proc, pipe in procs:
            if not pipe.poll(START + CALL_TIMEOUT + BURST_TIMEOUT):
                raise RuntimeError("a generator process did not report")
            status, value = pipe.recv()
            if status != "ok":
                raise RuntimeError(f"generator failed: {value}")
            out.append(value)
        return out
    finally:
        for proc, pipe in procs:
            proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join()
            pipe.close()


def split(total: int, parts: int) -> list[int]:
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts) if base + (i < extra)]


# -- the scenarios ---------------------------------------------------------------------------


@dataclass
class StormResult:
    system: str
    kind: str
    polite: bool
    capacity: float
    duration: float
    storm: Tally
    healthz: Tally
    gateway_cpu: float
    worker_cpu: float
    host_busy: float
    worker_refusals: float

    @property
    def goodput(self) -> float:
        return self.storm.ok_in_window / self.duration / self.capacity

    def row(self) -> dict[str, Any]:
        def ms(value: float | None) -> str:
            return "-" if value is None else f"{value * 1000:.1f}"

        refused = self.storm.statuses.get("503", 0)
        return {
            "system": self.system,
            "gateway": self.kind + (" (polite)" if self.polite else ""),
            "goodput %": f"{100 * self.goodput:.0f}",
            "200/s": f"{self.storm.ok_in_window / self.duration:.1f}",
            "503 p50/p99 ms": f"{ms(self.storm.quantile('503', 0.5))}/"
            f"{ms(self.storm.quantile('503', 0.99))}",
            "503 via worker %": f"{100 * self.worker_refusals / max(1, refused):.1f}",
            "/healthz p50/p99 ms": f"{ms(self.healthz.quantile('200', 0.5))}/"
            f"{ms(self.healthz.quantile('200', 0.99))}",
            "gateway CPU s": f"{self.gateway_cpu:.1f}",
            "worker CPU s": f"{self.worker_cpu:.1f}",
            "generator CPU s": f"{self.storm.cpu + self.healthz.cpu:.1f}",
            "host busy %": f"{100 * self.host_busy:.0f}",
            "statuses": " ".join(f"{k}:{n}" for k, n in sorted(self.storm.statuses.items())),
        }


def storm(
    system: System, kind: str, opts: argparse.Namespace, logs: Path, *, polite: bool
) -> StormResult:
    host_busy = wait_quiet(opts.wait_quiet)  # what others use of the machine, before we start
    with servers() as started:
        wport = free_port()
        admin = free_port()
        worker = system.worker_server(
            logs, wport, pool="process", workers=opts.workers, admin_port=admin
        )
        started.append(worker.start())
        worker.wait_port()
        gateway = system.gateway_server(logs, wport, kind)
        started.append(gateway.start())
        gateway.wait_ready()
        body = json.dumps({"millis": opts.burn}).encode()
        call = request_bytes(gateway.port, "POST", "/rpc/TextLab/burn", body)
        healthz = request_bytes(gateway.port, "GET", "/healthz")
        pause = 1.0 if polite else 0.0
        window = (opts.warmup, opts.duration)
        jobs: list[tuple[str, tuple[Any, ...]]] = [
            ("storm", (gateway.port, n, call, pause, *window))
            for n in split(opts.clients, opts.generators)
        ]
        jobs.append(("paced", (gateway.port, healthz, opts.healthz_rate, *window)))
        cpu: list[tuple[float, float, float]] = []

        def sample() -> None:
            gw, wk = cpu_seconds([gateway.pid]), cpu_seconds(tree_pids(worker.pid))
            cpu.append((gw, wk, worker_refusals(admin)))

        def sample_window() -> None:
            # What the servers used in the window: sampled when it starts and when it ends.
            time.sleep(opts.warmup)
            sample()
            time.sleep(opts.duration)
            sample()

        tallies = run_generators(jobs, system.placement, sample_window)
        total = Tally()
        for t in tallies[:-1]:
            total.merge(t)
        (gw0, wk0, rf0), (gw1, wk1, rf1) = cpu
        return StormResult(
            system.name,
            kind,
            polite,
            opts.workers * 1000 / opts.burn,
            opts.duration,
            total,
            tallies[-1],
            gw1 - gw0,
            wk1 - wk0,
            host_busy,
            rf1 - rf0,
        )


@dataclass
class BurstResult:
    system: str
    when: str
    tally: Tally

    def row(self) -> dict[str, Any]:
        s = self.tally.statuses
        other = sum(n for k, n in s.items() if k not in ("200", "503"))
        return {
            "system": self.system,
            "burst": self.when,
            "answered": s.get("200", 0),
            "refused (503)": s.get("503", 0),
            "other": other,
        }


def bursts(system: System, opts: argparse.Namespace, logs: Path) -> list[BurstResult]:
    results = []
    with servers() as started:
        wport = free_port()
        flags = {"pool": "thread", "workers": opts.burst_threads, "max_queued": 2 * opts.burst}
        worker = system.worker_server(logs, wport, **flags)
        started.append(worker.start())
        worker.wait_port()
        gateway = system.gateway_server(logs, wport, "loop", max_inflight=2 * opts.burst)
        started.append(gateway.start())
        gateway.wait_ready()
        body = json.dumps({"millis": opts.burst_millis}).encode()
        call = request_bytes(gateway.port, "POST", "/rpc/TextLab/sleep", body)

        def fire(when: str) -> None:
            jobs: list[tuple[str, tuple[Any, ...]]] = [
                ("burst", (gateway.port, n, call)) for n in split(opts.burst, opts.generators)
            ]
            total = Tally()
            for t in run_generators(jobs, system.placement):
                total.merge(t)
            results.append(BurstResult(system.name, when, total))

        fire("cold")
        fire("warm")
        # The worker goes; a new one listens on its port; the burst comes once the gateway
        # says it is ready.
        worker.stop()
        started.remove(worker)
        worker = system.worker_server(logs, wport, **flags)
        started.insert(0, worker.start())
        worker.wait_port()
        gateway.wait_ready()
        fire("restart")
    return results


# -- the command -----------------------------------------------------------------------------


def named(values: list[str], flag: str) -> dict[str, list[str]]:
    out = {}
    for value in values:
        name, sep, cmd = value.partition("=")
        if not sep or " " in name or "/" in name:
            name, cmd = "default", value
        out[name] = shlex.split(cmd)
    if not out:
        raise SystemExit(f"give at least one {flag}")
    return out


def median_rows(rows: list[dict[str, Any]], keys: tuple[str, ...]) -> list[dict[str, Any]]:
    """One row per value of ``keys``: the median of each numeric column (``a/b`` pairs
    column by column), in the order first seen; other columns are left out."""
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(row[k] for k in keys), []).append(row)
    out = []
    for key, group in groups.items():
        merged: dict[str, Any] = dict(zip(keys, key, strict=True))
        for col in group[0]:
            if col in keys:
                continue
            parts = [str(r[col]).split("/") for r in group]
            try:
                med = [statistics.median(float(p[i]) for p in parts) for i in range(len(parts[0]))]
            except (ValueError, IndexError):
                continue
            merged[col] = "/".join(f"{m:.1f}" if m % 1 else f"{m:.0f}" for m in med)
        out.append(merged)
    return out


def cpu_list(text: str) -> tuple[int, ...]:
    return tuple(int(c) for c in text.split(","))


def table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    cols = list(rows[0])
    width = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in cols}
    lines = [" | ".join(c.ljust(width[c]) for c in cols)]
    lines.append("-|-".join("-" * width[c] for c in cols))
    lines += [" | ".join(str(r[c]).ljust(width[c]) for c in cols) for r in rows]
    return "\n".join(lines)


def _exit_on_signal(signum: int, frame: object) -> None:
    if mp.parent_process() is None:  # the generators are stopped by the parent
        raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--gateway-cmd",
        action="append",
        default=[],
        metavar="[NAME=]CMD",
        help="how to start a gateway under test (repeat for several, by NAME)",
    )
    p.add_argument(
        "--worker-cmd",
        action="append",
        default=[],
        metavar="[NAME=]CMD",
        help="how to start the worker of the system NAME",
    )
    p.add_argument("--only", choices=["storm", "burst"], help="run one scenario only")
    p.add_argument(
        "--kinds",
        default="loop,actor,tornado",
        help="storm: gateway kinds, of loop, actor, tornado (default: all)",
    )
    p.add_argument("--clients", type=int, default=400, help="storm clients (default 400)")
    p.add_argument("--workers", type=int, default=2, help="storm worker processes (default 2)")
    p.add_argument("--burn", type=int, default=50, help="storm: ms of CPU per call (default 50)")
    p.add_argument("--duration", type=float, default=20.0, help="storm window, s (default 20)")
    p.add_argument("--warmup", type=float, default=3.0, help="storm warm-up, s (default 3)")
    p.add_argument(
        "--healthz-rate",
        type=float,
        default=50.0,
        help="GET /healthz per second during the storm (default 50)",
    )
    p.add_argument(
        "--polite",
        action="store_true",
        help="also run each storm with clients that wait Retry-After after a 503",
    )
    p.add_argument("--burst", type=int, default=2000, help="calls in a burst (default 2000)")
    p.add_argument(
        "--burst-threads", type=int, default=256, help="burst worker threads (default 256)"
    )
    p.add_argument(
        "--burst-millis", type=int, default=200, help="burst: ms each call sleeps (default 200)"
    )
    p.add_argument(
        "--generators",
        type=int,
        default=max(2, min(4, os.cpu_count() or 1)),
        help="load-generator processes (default: 2 to 4, by cores)",
    )
    p.add_argument(
        "--generator-nice",
        type=int,
        default=0,
        help="niceness of the generator processes (default 0)",
    )
    p.add_argument(
        "--probe-nice",
        type=int,
        default=-10,
        help="niceness of the /healthz probe (default -10, when permitted)",
    )
    for part in ("gateway", "worker", "generator"):
        p.add_argument(
            f"--{part}-cpus",
            type=cpu_list,
            metavar="N,N",
            help=f"CPUs the {part} may run on (default: any)",
        )
    p.add_argument(
        "--wait-quiet",
        type=float,
        default=101.0,
        metavar="PCT",
        help="before each storm run, wait (up to 3 min) until others use less than PCT %% "
        "of the CPUs (default: do not wait); the share seen is reported as host busy %%",
    )
    p.add_argument(
        "--repeat", type=int, default=1, help="runs of each scenario, interleaved (default 1)"
    )
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--logs", type=Path, help="keep the servers' logs here (default: a temp dir)")
    opts = p.parse_args(argv)
    # SIGTERM (and SIGINT, which a shell ignores in background jobs) unwind like an error:
    # every server started is stopped on the way out.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _exit_on_signal)
    gateways = named(opts.gateway_cmd, "--gateway-cmd")
    workers = named(opts.worker_cmd, "--worker-cmd")
    missing = sorted(set(gateways) ^ set(workers))
    if missing:
        raise SystemExit(f"each NAME needs both --gateway-cmd and --worker-cmd: {missing}")
    placement = Placement(
        opts.gateway_cpus,
        opts.worker_cpus,
        opts.generator_cpus,
        opts.generator_nice,
        opts.probe_nice,
    )
    systems = [System(n, gateways[n], workers[n], placement) for n in gateways]
    kinds = [k for k in opts.kinds.split(",") if k]
    unknown = sorted(set(kinds) - set(GATEWAY_KINDS))
    if unknown:
        raise SystemExit(f"unknown --kinds: {unknown}")

    with contextlib.ExitStack() as stack:
        logs = opts.logs or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        logs.mkdir(parents=True, exist_ok=True)
        storms: list[StormResult] = []
        burst_results: list[BurstResult] = []
        # Interleaved (each system in turn, per kind and repeat), so that what else the
        # machine does weighs on every system alike.
        for _ in range(opts.repeat if opts.only != "burst" else 0):
            for kind in kinds:
                for polite in (False, True) if opts.polite else (False,):
                    for system in systems:
                        result = storm(system, kind, opts, logs, polite=polite)
                        storms.append(result)
                        print(table([result.row()]), flush=True)
        for _ in range(opts.repeat if opts.only != "storm" else 0):
            for system in systems:
                for burst in bursts(system, opts, logs):
                    burst_results.append(burst)
                    print(table([burst.row()]), flush=True)
        if storms:
            capacity = opts.workers * 1000 / opts.burn
            print(
                f"\nstorm: {opts.clients} clients, burn({opts.burn}) on {opts.workers} "
                f"processes (capacity {capacity:g} calls/s), {opts.duration:g} s window; "
                f"{placement.describe()}"
            )
            print(table([r.row() for r in storms]))
            if opts.repeat > 1:
                print(f"\nmedians of {opts.repeat} runs")
                print(table(median_rows([r.row() for r in storms], ("system", "gateway"))))
        if burst_results:
            print(
                f"\nburst: {opts.burst} calls at once, sleep({opts.burst_millis}) on "
                f"{opts.burst_threads} threads"
            )
            print(table([r.row() for r in burst_results]))
            if opts.repeat > 1:
                print(f"\nmedians of {opts.repeat} runs")
                print(table(median_rows([r.row() for r in burst_results], ("system", "burst"))))
        if opts.json:
            opts.json.write_text(json.dumps({
                "argv": sys.argv,
                "cpus": os.cpu_count(),
                "placement": placement.describe(),
                "storm": [r.row() for r in storms],
                "burst": [r.row() for r in burst_results],
            }, indent=2))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
