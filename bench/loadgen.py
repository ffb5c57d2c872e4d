"""Load generators that are not the bottleneck: forked processes, each one uvloop loop.

Two clients, one harness:

- HTTP/1.1 (:class:`HttpStream`): keep-alive connections, request bytes written by hand once,
  replies read by a small protocol that parses the status line and ``Content-Length`` (or a
  chunked body) and nothing else. Either *closed loop* (``connections`` clients, each sends
  its next request when the last one is answered) or *paced* (open loop, ``rate`` requests
  per second on a schedule fixed in advance; a request's latency is counted from the time it
  was *due*, so that a server that stalls is charged for the requests it held up: no
  coordinated omission).
- Thrift (:class:`ThriftStream`): callers sharing one multiplexed
  :class:`~offloop.client.pool.ConnectionPool` per process, closed loop.

Each stream runs in its own process(es) (``processes``): a light probe never shares a loop
with the heavy load it measures. Processes connect first, meet at a barrier, then run for
``warmup + duration`` seconds; throughput and latencies count only what completed in the
``duration`` window. Each process returns its CPU time (user + system), so every result
states how much of a core the generator used (:attr:`LoadResult.max_process_util`).

A stream with ``count`` is a burst: each connection sends ``count`` requests and stops; the
run ends when every burst has ended, and the other streams stop with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import os
import resource
import time
from array import array
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

__all__ = ["HttpStream", "LoadError", "LoadResult", "StreamResult", "ThriftStream", "run_load"]

CONNECT_CONCURRENCY = 200
"""Connections a process opens at once: thousands at once overflow a listen backlog."""

CONNECT_TIMEOUT = 30.0
"""Seconds a process may take to open all its connections before the run is abandoned: a
server that cannot accept them in that time has failed the run."""

DRAIN_GRACE = 10.0
"""Default seconds after the window that requests still in flight may take before they are
cut (and counted as unfinished)."""


class LoadError(RuntimeError):
    """The load generator could not run: a server refused or did not accept connections."""


@dataclass(frozen=True)
class HttpStream:
    """One kind of HTTP request and how it is sent.

    Attributes:
        name: the stream's name in results.
        path: the request path.
        method: ``GET`` or ``POST``.
        body: the request body (sent as ``application/json``).
        connections: closed loop: concurrent clients; paced: most connections open at once.
        rate: paced: requests per second (all processes together); None for closed loop.
        count: closed loop: requests per connection, then it stops (a burst).
        processes: generator processes the stream is spread over.
        error_pause: closed loop: seconds a client waits after an error or a 4xx/5xx answer
            before its next request, as a polite client would (Retry-After).
    """

    name: str
    path: str = "/healthz"
    method: str = "GET"
    body: bytes = b""
    connections: int = 1
    rate: float | None = None
    count: int | None = None
    processes: int = 1
    error_pause: float = 0.0

    def request_bytes(self, port: int) -> bytes:
        head = f"{self.method} {self.path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        if self.method != "GET" or self.body:
            head += f"Content-Type: application/json\r\nContent-Length: {len(self.body)}\r\n"
        return head.encode() + b"\r\n" + self.body


@dataclass(frozen=True)
class ThriftStream:
    """Closed-loop Thrift calls through offloop's multiplexed connection pool.

    Attributes:
        name: the stream's name in results.
        method: the TextLab method.
        args: its arguments by name.
        callers: concurrent callers (all processes together).
        processes: generator processes.
        pool_size: connections per process.
    """

    name: str
    method: str
    args: dict[str, Any]
    callers: int = 1
    processes: int = 1
    pool_size: int = 4


Stream = HttpStream | ThriftStream


@dataclass
class StreamResult:
    """What one stream measured, all its processes merged.

    Attributes:
        latencies: seconds, of every successful request sent (or due) in the window
            (bursts: every successful request), however late it completed.
        offsets: when each of them was sent (or due), seconds after the start of the window.
        ok: successful requests that completed in the window (for throughput).
        statuses: HTTP status (or "error" names) -> count, of requests sent in the window.
        errors: connection errors and failed calls, whole run.
        unfinished: requests still unanswered when the run was cut.
        window: seconds measured.
        burst_wall: bursts: seconds from the start until the last request was answered.
        cpu: CPU seconds of its generator processes.
        proc_wall: wall seconds of the longest of them.
        max_util: the busiest process's CPU / wall.
    """

    name: str
    latencies: list[float] = field(default_factory=list)
    offsets: list[float] = field(default_factory=list)
    ok: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    errors: int = 0
    unfinished: int = 0
    window: float = 0.0
    burst_wall: float = 0.0
    cpu: float = 0.0
    proc_wall: float = 0.0
    max_util: float = 0.0

    @property
    def throughput(self) -> float:
        """Successful requests per second over the window."""
        return self.ok / self.window if self.window > 0 else float("nan")

    @property
    def failed(self) -> int:
        """Requests in the window that were not successful."""
        return sum(n for s, n in self.statuses.items() if not s.startswith("2")) + self.errors

    def merge(self, other: StreamResult) -> None:
        self.latencies.extend(other.latencies)
        self.offsets.extend(other.offsets)
        self.ok += other.ok
        for key, n in other.statuses.items():
            self.statuses[key] = self.statuses.get(key, 0) + n
        self.errors += other.errors
        self.unfinished += other.unfinished
        self.window = max(self.window, other.window)
        self.burst_wall = max(self.burst_wall, other.burst_wall)
        self.cpu += other.cpu
        self.proc_wall = max(self.proc_wall, other.proc_wall)
        self.max_util = max(self.max_util, other.max_util)

    def summary(self) -> dict[str, Any]:
        """Every figure except the latency lists (those go to the raw data separately)."""
        return {
            "ok": self.ok,
            "throughput": self.throughput,
            "statuses": self.statuses,
            "errors": self.errors,
            "unfinished": self.unfinished,
            "window_s": self.window,
            "burst_wall_s": self.burst_wall,
            "generator_cpu_s": self.cpu,
            "generator_max_util": self.max_util,
        }


@dataclass
class LoadResult:
    """One run of the generator: each stream's result and the generator's own CPU use."""

    streams: dict[str, StreamResult]
    wall: float
    processes: int
    cpu: float

    def __getitem__(self, name: str) -> StreamResult:
        return self.streams[name]

    @property
    def max_process_util(self) -> float:
        """CPU / wall of the busiest generator process: near 1.0 means it may be a bottleneck."""
        return max((s.max_util for s in self.streams.values()), default=0.0)

    @property
    def cores_used(self) -> float:
        """Cores the generator used on average (all processes)."""
        return self.cpu / self.wall if self.wall > 0 else float("nan")

    def generator(self) -> dict[str, float]:
        return {
            "processes": self.processes,
            "cpu_s": self.cpu,
            "wall_s": self.wall,
            "cores_used": self.cores_used,
            "max_process_util": self.max_process_util,
        }


# -- the HTTP client -------------------------------------------------------------------------


class _HttpConnection(asyncio.Protocol):
    """A keep-alive connection with one request in flight at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.waiter: asyncio.Future[tuple[int, bool]] | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionResetError("server closed the connection"))

    def data_received(self, data: bytes) -> None:
        self.buf += data
        waiter = self.waiter
        if waiter is None or waiter.done():
            return
        reply = _parse_reply(self.buf)
        if reply is not None:
            status, used, close = reply
            del self.buf[:used]
            waiter.set_result((status, close))

    def send(self, request: bytes) -> asyncio.Future[tuple[int, bool]]:
        if self.closed or self.transport is None:
            raise ConnectionResetError("connection is closed")
        fut: asyncio.Future[tuple[int, bool]] = asyncio.get_running_loop().create_future()
        self.waiter = fut
        self.transport.write(request)
        return fut

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def _parse_reply(buf: bytearray) -> tuple[int, int, bool] | None:
    """(status, bytes used, connection closes) of one whole reply at the start of ``buf``."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = bytes(buf[:end]).lower()
    status = int(head[9:12])
    close = b"\r\nconnection: close" in head
    start = head.find(b"\r\ncontent-length:")
    if start >= 0:
        stop = head.find(b"\r\n", start + 2)
        length = int(head[start + 17 : stop if stop >= 0 else None])
        total = end + 4 + length
        return (status, total, close) if len(buf) >= total else None
    if b"\r\ntransfer-encoding: chunked" in head:
        tail = buf.find(b"\r\n0\r\n\r\n", end)
        if tail < 0 and buf[end + 4 : end + 9] == b"0\r\n\r\n":
            return status, end + 9, close
        return (status, tail + 7, close) if tail >= 0 else None
    return status, end + 4, close


async def _open(port: int) -> _HttpConnection:
    loop = asyncio.get_running_loop()
    for attempt in range(5):
        try:
            _, proto = await loop.create_connection(_HttpConnection, "127.0.0.1", port)
            return proto
        except OSError:
            if attempt == 4:
                raise
            await asyncio.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")


class _Clock:
    """The window of one process: warm-up, measured window, hard end."""

    def __init__(self, warmup: float, duration: float, stop: Any, drain: float) -> None:
        self.t0 = time.perf_counter()
        self.drain = drain  # seconds requests in flight at the end may take
        self.start = self.t0 + warmup
        self.end = self.start + duration
        self._stop = stop  # an mp.Event set when the bursts are over
        self.stopped_at: float | None = None

    def running(self) -> bool:
        now = time.perf_counter()
        if now >= self.end:
            return False
        if self._stop is not None and self._stop.is_set():
            if self.stopped_at is None:
                self.stopped_at = now
            return False
        return True

    def in_window(self, t: float) -> bool:
        return self.start <= t <= (self.stopped_at or self.end)

    @property
    def window(self) -> float:
        return max(0.0, min(self.stopped_at or self.end, self.end) - self.start)


class _Recorder:
    """Counts a request's latency and status by when it was *sent* (so that a request held
    up past the window still counts: no survivorship bias) and its completion, for
    throughput, by when it *completed*."""

    def __init__(self, name: str) -> None:
        self.result = StreamResult(name)
        self.lat = array("d")
        self.off = array("d")
        self.statuses: Counter[str] = Counter()
        self.completed = 0

    def record(self, clock: _Clock, sent: float, done: float, status: str, burst: bool) -> None:
        ok = status.startswith("2")
        if burst or clock.in_window(sent):
            self.statuses[status] += 1
            if ok:
                self.lat.append(done - sent)
                self.off.append(sent - clock.start)
        if ok and (burst or clock.in_window(done)):
            self.completed += 1

    def finish(self, clock: _Clock, burst: bool) -> StreamResult:
        r = self.result
        r.latencies = self.lat.tolist()
        r.offsets = self.off.tolist()
        r.statuses = dict(self.statuses)
        r.ok = self.completed
        r.window = clock.window if not burst else r.burst_wall
        return r


async def _http_closed(
    stream: HttpStream, port: int, conns: int, count: int | None, clock_box: list[_Clock],
    ready: Any, stop: Any, warmup: float, duration: float, drain: float,
) -> StreamResult:  # fmt: skip
    request = stream.request_bytes(port)
    rec = _Recorder(stream.name)
    sem = asyncio.Semaphore(CONNECT_CONCURRENCY)

    async def opened() -> _HttpConnection:
        async with sem:
            return await _open(port)

    opening = [asyncio.ensure_future(opened()) for _ in range(conns)]
    done, pending = await asyncio.wait(opening, timeout=CONNECT_TIMEOUT)
    if pending:
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for task in done:
            if not task.exception():
                task.result().close()
        raise ConnectionError(
            f"opened only {len(done)} of {conns} connections in {CONNECT_TIMEOUT:g} s"
        )
    pool = [task.result() for task in opening]
    ready()
    clock = _Clock(warmup, duration, None if count is not None else stop, drain)
    clock_box.append(clock)
    burst = count is not None
    last_done = [clock.t0]

    async def client(conn: _HttpConnection) -> None:
        sent_n = 0
        while (burst and sent_n < (count or 0)) or (not burst and clock.running()):
            sent_n += 1
            t = time.perf_counter()
            try:
                status, close = await conn.send(request)
            except OSError:
                rec.result.errors += 1
                conn.close()
                if stream.error_pause:
                    await asyncio.sleep(stream.error_pause)
                conn = await _open(port)
                continue
            done = time.perf_counter()
            last_done[0] = max(last_done[0], done)
            rec.record(clock, t, done, str(status), burst)
            if close:
                conn.close()
                conn = await _open(port)
            if status >= 400 and stream.error_pause:
                await asyncio.sleep(stream.error_pause)
        conn.close()

    tasks = [asyncio.ensure_future(client(c)) for c in pool]
    await _finish(tasks, rec, clock, burst)
    rec.result.burst_wall = last_done[0] - clock.t0 if burst else 0.0
    return rec.finish(clock, burst)


async def _finish(tasks: Sequence[asyncio.Future[None]], rec: _Recorder, clock: _Clock,
                  burst: bool) -> None:  # fmt: skip
    """Wait for the window to end, then up to ``clock.drain`` seconds for the requests in
    flight; cut the rest (counted as unfinished). Bursts run to their end."""
    if burst:
        await asyncio.gather(*tasks, return_exceptions=True)
        return
    while clock.running():
        await asyncio.sleep(min(0.05, max(0.0, clock.end - time.perf_counter())))
    _done, pending = await asyncio.wait(tasks, timeout=clock.drain)
    rec.result.unfinished += len(pending)
    for task in pending:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def _http_paced(
    stream: HttpStream, port: int, max_conns: int, rate: float, clock_box: list[_Clock],
    ready: Any, stop: Any, warmup: float, duration: float, drain: float,
) -> StreamResult:  # fmt: skip
    request = stream.request_bytes(port)
    rec = _Recorder(stream.name)
    idle = [await _open(port) for _ in range(min(max_conns, 4))]
    opened = len(idle)
    ready()
    clock = _Clock(warmup, duration, stop, drain)
    clock_box.append(clock)
    tasks: set[asyncio.Task[None]] = set()

    async def one(conn: _HttpConnection | None, due: float) -> None:
        nonlocal opened
        try:
            if conn is None:
                conn = await _open(port)
            # Latency counts from when the request was due; but uvloop may wake a timer up to
            # a millisecond early, and then it counts from when it was actually sent.
            sent = min(due, time.perf_counter())
            status, close = await conn.send(request)
        except OSError:
            rec.result.errors += 1
            if conn is not None:
                conn.close()
            opened -= 1
            return
        rec.record(clock, sent, time.perf_counter(), str(status), False)
        if close:
            conn.close()
            opened -= 1
        else:
            idle.append(conn)

    i = 0
    interval = 1.0 / rate
    while True:
        due = clock.t0 + i * interval
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        if not clock.running():
            break
        i += 1
        if idle:
            conn: _HttpConnection | None = idle.pop()
        elif opened < max_conns:
            conn, opened = None, opened + 1
        else:
            rec.statuses["skipped"] += 1  # every connection is stuck: a request not sent
            continue
        task = asyncio.ensure_future(one(conn, due))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        _done, pending = await asyncio.wait(tasks, timeout=clock.drain)
        rec.result.unfinished += len(pending)
        for task in pending:
            task.cancel()
    for conn in idle:
        conn.close()
    return rec.finish(clock, False)


# -- the Thrift client -----------------------------------------------------------------------


async def _thrift_closed(
    stream: ThriftStream, port: int, callers: int, clock_box: list[_Clock],
    ready: Any, stop: Any, warmup: float, duration: float, drain: float,
) -> StreamResult:  # fmt: skip
    from offloop.client.config import ClientConfig
    from offloop.client.pool import ConnectionPool
    from offloop.demo.textlab import textlab_idl
    from offloop.idl import service_info

    method = service_info(textlab_idl(), "TextLab").methods[stream.method]
    pool = ConnectionPool("127.0.0.1", port, ClientConfig(), size=stream.pool_size)
    rec = _Recorder(stream.name)
    try:
        # Open every connection before the window: one call per connection, concurrently.
        warm = [pool.call(method, method.args_cls(**stream.args), timeout=60.0)]
        await asyncio.gather(*warm, return_exceptions=True)
        ready()
        clock = _Clock(warmup, duration, stop, drain)
        clock_box.append(clock)

        async def caller() -> None:
            while clock.running():
                t = time.perf_counter()
                try:
                    await pool.call(method, method.args_cls(**stream.args), timeout=60.0)
                    status = "200"
                except Exception as exc:  # every failure is a figure here, not a crash
                    status = type(exc).__name__
                rec.record(clock, t, time.perf_counter(), status, False)

        tasks = [asyncio.ensure_future(caller()) for _ in range(callers)]
        await _finish(tasks, rec, clock, False)
        return rec.finish(clock, False)
    finally:
        await pool.close()


# -- processes -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Job:
    stream: Stream
    port: int
    share: int  # connections, callers or requests per second (x1000) of this process
    warmup: float
    duration: float
    cpus: tuple[int, ...] | None
    drain: float


def _child(job: _Job, pipe: Connection, barrier: Any, stop: Any) -> None:
    try:
        if job.cpus is not None:
            os.sched_setaffinity(0, job.cpus)
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        import uvloop

        loop = uvloop.new_event_loop()
        asyncio.set_event_loop(loop)
        clock_box: list[_Clock] = []
        cpu0 = [0.0]
        wall0 = [0.0]

        def ready() -> None:
            barrier.wait(timeout=CONNECT_TIMEOUT + 30)
            wall0[0] = time.perf_counter()
            cpu0[0] = _cpu()

        coro = _job_coroutine(job, clock_box, ready, stop)
        result = loop.run_until_complete(coro)
        wall = time.perf_counter() - wall0[0]
        result.cpu = _cpu() - cpu0[0]
        result.proc_wall = wall
        result.max_util = result.cpu / wall if wall > 0 else 0.0
        loop.close()
        pipe.send(("ok", result))
    except BaseException as exc:  # reported to the parent, which raises it
        with contextlib.suppress(Exception):
            barrier.abort()
        pipe.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        pipe.close()


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _job_coroutine(job: _Job, clock_box: list[_Clock], ready: Any, stop: Any) -> Any:
    s = job.stream
    if isinstance(s, ThriftStream):
        return _thrift_closed(s, job.port, job.share, clock_box, ready, stop, job.warmup,
                              job.duration, job.drain)  # fmt: skip
    if s.rate is not None:
        return _http_paced(s, job.port, max(1, s.connections // s.processes), job.share / 1000,
                           clock_box, ready, stop, job.warmup, job.duration,
                           job.drain)  # fmt: skip
    return _http_closed(s, job.port, job.share, s.count, clock_box, ready, stop, job.warmup,
                        job.duration, job.drain)  # fmt: skip


def _split(total: int, parts: int) -> list[int]:
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def run_load(
    port: int,
    streams: list[Stream],
    *,
    duration: float,
    warmup: float = 0.0,
    cpus: tuple[int, ...] | None = None,
    timeout: float | None = None,
    drain: float = DRAIN_GRACE,
) -> LoadResult:
    """Run ``streams`` against 127.0.0.1:``port`` and return what they measured.

    Args:
        port: the server's port.
        streams: what to send; each in its own process(es).
        duration: seconds measured, after ``warmup``. With bursts, the most the other
            streams run: they stop when the bursts are done.
        warmup: seconds run before the window (not counted).
        cpus: CPUs to pin the generator processes to; None for no pinning.
        timeout: seconds to wait for results before giving up (default: generous).
        drain: seconds requests still in flight after the window may take before they are
            cut and counted as unfinished.

    Raises:
        LoadError: a generator process failed (connections refused or not accepted in time
            at the start...).
    """
    ctx = mp.get_context("fork")
    if any(isinstance(s, ThriftStream) for s in streams):
        # Parse the IDL once, here: forked generators inherit it instead of each parsing it.
        from offloop.client import pool  # noqa: F401
        from offloop.demo.textlab import textlab_idl

        textlab_idl()
    jobs: list[_Job] = []
    for s in streams:
        if isinstance(s, ThriftStream):
            shares = _split(s.callers, s.processes)
        elif s.rate is not None:
            shares = [int(s.rate * 1000 / s.processes)] * s.processes
        else:
            shares = _split(s.connections, s.processes)
        jobs.extend(_Job(s, port, n, warmup, duration, cpus, drain) for n in shares if n > 0)
    barrier = ctx.Barrier(len(jobs) + 1)
    stop = ctx.Event()
    children: list[tuple[_Job, Any, Connection]] = []
    start = time.perf_counter()
    try:
        for job in jobs:
            parent_end, child_end = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=_child, args=(job, child_end, barrier, stop), daemon=True)
            proc.start()
            child_end.close()
            children.append((job, proc, parent_end))
        # A child that failed to connect breaks the barrier: its error is read below.
        with contextlib.suppress(Exception):
            barrier.wait(timeout=CONNECT_TIMEOUT + 30)
        start = time.perf_counter()
        limit = timeout or (warmup + duration + drain + 600.0)
        results: dict[str, StreamResult] = {}
        errors: list[str] = []
        # Bursts first: when they are all in, the other streams are told to stop.
        order = sorted(children, key=lambda c: not _is_burst(c[0].stream))
        has_bursts = any(_is_burst(job.stream) for job, _, _ in order)
        for job, proc, pipe in order:
            if has_bursts and not _is_burst(job.stream):
                stop.set()
            msg = _receive(proc, pipe, start + limit)
            if msg[0] == "error":
                errors.append(f"{job.stream.name}: {msg[1]}")
                stop.set()
                continue
            part: StreamResult = msg[1]
            if job.stream.name in results:
                results[job.stream.name].merge(part)
            else:
                results[job.stream.name] = part
        wall = time.perf_counter() - start
        if errors:
            # One process failing breaks the barrier for the others: report the cause.
            causes = [e for e in errors if "BrokenBarrierError" not in e] or errors
            raise LoadError("load generator failed: " + "; ".join(sorted(set(causes))))
        cpu = sum(r.cpu for r in results.values())
        return LoadResult(results, wall, len(jobs), cpu)
    finally:
        stop.set()
        for _job, proc, pipe in children:
            proc.join(timeout=5.0)
            if proc.is_alive():
                proc.kill()
                proc.join()
            pipe.close()


def _is_burst(stream: Stream) -> bool:
    return isinstance(stream, HttpStream) and stream.count is not None


def _receive(proc: Any, pipe: Connection, deadline: float) -> tuple[str, Any]:
    while True:
        if pipe.poll(0.2):
            try:
                return pipe.recv()  # type: ignore[no-any-return]
            except EOFError:
                return ("error", f"generator process exited with status {proc.exitcode}")
        if not proc.is_alive() and not pipe.poll(0):
            return ("error", f"generator process exited with status {proc.exitcode}")
        if time.perf_counter() > deadline:
            return ("error", "generator process timed out")
