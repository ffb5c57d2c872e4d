"""Attacks of issue 11 ("No input and no client can take a tier down") against a worker.

Starts the worker under test (``--worker-cmd``, e.g. an older tree's ``offloop worker``) on
127.0.0.1 with textlab's demo handler, once per attack and pool kind, and while four other
clients ping it one call at a time, runs one attack:

1. ``void-list``: a binary ``ping`` whose unknown field is a ``list<VOID>`` of 2**31-1.
2. ``stop-list``: a compact ``ping`` whose unknown field is a ``list<STOP>`` of 2**62.
3. ``varint``: a compact ``ping`` whose unknown i64 field is a 300 KB varint.
4. ``partial``: 32 connections each send all but one byte of a 16 MiB frame, then idle.
5. ``pipeline``: one connection writes 200,000 pings (6.6 MiB) at once and reads the replies.

For each it prints the other clients' ping latency (p50/p99) before and during the attack,
the growth of the worker's resident memory (its process and its children), what the attacker
got, and whether the worker stayed up: whether a new client is answered afterwards and the
worker is not still burning CPU on the attack. Every wait is bounded; the worker is stopped
(SIGTERM, then SIGKILL to its process group) whatever happened.

Standalone: the standard library only, frames written by hand, so it drives any version::

    python bench/attacks/worker.py \\
        --worker-cmd "before=/tmp/x/before/.venv/bin/offloop worker" \\
        --worker-cmd "after=.venv/bin/offloop worker"
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
IDL = ROOT / "src/offloop/demo/textlab.thrift"
HANDLER = "offloop.demo.textlab:Handler"
HOST = "127.0.0.1"

#: Other clients pinging during every attack, one call at a time each.
OTHERS = 4
#: Seconds of pings before the attack, for the baseline.
BASELINE = 1.5
#: Seconds a one-frame attack is watched (the frame costs a vulnerable worker seconds).
WINDOW = 5.0
#: Seconds the partial frames of attack 4 are held.
HOLD = 4.0
#: Longest the pipelining attack may run before it is cut off.
PIPELINE_BOUND = 20.0
#: Seconds a worker gets, after the attack, to answer a new client.
RECOVER = 5.0
#: CPU share (of one core) above which a worker nobody calls is "still busy with the attack"
#: (idle, one uses a few percent; a spinning pool thread at nice 10 on a busy host, ~45%).
BUSY = 0.2
#: Seconds the worker gets to start (textlab's handler takes about a second per child).
START = 90.0

_BINARY_CALL = 0x80010001
_EXCEPTION = 3


# -- frames ------------------------------------------------------------------------------


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _zigzag32(n: int) -> int:
    return ((n << 1) ^ (n >> 31)) & 0xFFFFFFFF


def ping(protocol: str, seqid: int, msg: bytes = b"hello", extra: bytes = b"") -> bytes:
    """A framed ``ping(msg)`` call, with ``extra`` field bytes before its end."""
    if protocol == "binary":
        body = struct.pack("!II", _BINARY_CALL, 4) + b"ping" + struct.pack("!i", seqid)
        body += struct.pack("!bhI", 11, 1, len(msg)) + msg
    else:
        body = bytes([0x82, 0x21]) + _varint(seqid & 0xFFFFFFFF) + _varint(4) + b"ping"
        body += bytes([0x18]) + _varint(len(msg)) + msg
    body += extra + b"\x00"
    return struct.pack("!I", len(body)) + body


def void_list() -> bytes:
    return ping("binary", 1, b"x", struct.pack("!bhbi", 15, 99, 1, 2**31 - 1))


def stop_list() -> bytes:
    return ping("compact", 1, b"x", bytes([0x29, 0xF0]) + _varint(2**62))


def long_varint() -> bytes:
    # Every byte carries 7 bits (0x80 bytes would add nothing, and decode fast).
    return ping("compact", 1, b"x", bytes([0x26]) + b"\xff" * 299_999 + b"\x01")


def read_frame(sock: socket.socket) -> bytes | None:
    """The next frame's body, or None at end of stream."""
    head = _read_exactly(sock, 4)
    if head is None:
        return None
    return _read_exactly(sock, struct.unpack("!I", head)[0])


def _read_exactly(sock: socket.socket, n: int) -> bytes | None:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(min(n - len(buf), 1 << 20))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


def is_exception(protocol: str, body: bytes) -> bool:
    kind = body[3] if protocol == "binary" else body[1] >> 5
    return kind == _EXCEPTION


# -- the worker --------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def tree_pids(pid: int) -> list[int]:
    """``pid`` and its live descendants."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                raw = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parents[int(entry)] = int(raw[raw.rindex(")") + 2 :].split()[1])
    found, frontier = [pid], [pid]
    while frontier:
        frontier = [c for c, p in parents.items() if p in frontier]
        found += frontier
    return found


def rss_bytes(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
    return total


def cpu_seconds(pids: list[int]) -> float:
    ticks = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            raw = Path(f"/proc/{pid}/stat").read_text()
            fields = raw[raw.rindex(")") + 2 :].split()
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


@dataclass
class Worker:
    """A worker process started for one attack; stop it with :meth:`stop`."""

    proc: subprocess.Popen[bytes]
    port: int
    protocol: str
    log: Path

    @classmethod
    def start(cls, cmd: str, pool: str, protocol: str, logs: Path, name: str) -> Worker:
        port = free_port()
        args = [*shlex.split(cmd), "--idl", str(IDL), "--service", "TextLab"]
        args += ["--handler", HANDLER, "--pool", pool, "--workers", "2", "--host", HOST]
        args += ["--port", str(port), "--protocol", protocol, "--grace", "1"]
        log = logs / f"{name}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        worker = cls(proc, port, protocol, log)
        deadline = time.monotonic() + START
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"worker exited with {proc.returncode}; see {log}")
            if worker.answers(timeout=1.0):
                return worker
            time.sleep(0.2)
        worker.stop()
        raise RuntimeError(f"worker did not answer within {START} s; see {log}")

    def connect(self, timeout: float | None = 10.0) -> socket.socket:
        sock = socket.create_connection((HOST, self.port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def answers(self, timeout: float) -> bool:
        """Whether a new client's ping is answered within ``timeout`` seconds."""
        try:
            with self.connect(timeout) as sock:
                sock.sendall(ping(self.protocol, 1))
                body = read_frame(sock)
                return body is not None and not is_exception(self.protocol, body)
        except OSError:
            return False

    def pids(self) -> list[int]:
        return tree_pids(self.proc.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(5)
        with contextlib.suppress(ProcessLookupError):  # children left by a hard exit
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)


# -- measuring ---------------------------------------------------------------------------


@dataclass
class Pinger:
    """Other clients, each pinging one call at a time until stopped."""

    worker: Worker
    samples: list[tuple[float, float]] = field(default_factory=list)  # (start, latency)
    pending: dict[int, float] = field(default_factory=dict)  # client -> start of its ping
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _socks: list[socket.socket] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> None:
        for i in range(OTHERS):
            sock = self.worker.connect(timeout=None)
            self._socks.append(sock)
            thread = threading.Thread(target=self._run, args=(i, sock), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _run(self, i: int, sock: socket.socket) -> None:
        seqid = 0
        while not self._stop.is_set():
            seqid += 1
            started = time.perf_counter()
            with self._lock:
                self.pending[i] = started
            try:
                sock.sendall(ping(self.worker.protocol, seqid))
                body = read_frame(sock)
            except OSError:
                body = None
            if body is None:
                return  # closed: by us at the end, or by the worker
            with self._lock:
                del self.pending[i]
                self.samples.append((started, time.perf_counter() - started))
            time.sleep(0.005)

    def stop(self) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
        """Stop; the answered pings, and those still unanswered after a last second as
        lasting until then."""
        self._stop.set()
        deadline = time.monotonic() + 1.0
        while self.pending and time.monotonic() < deadline:
            time.sleep(0.01)
        now = time.perf_counter()
        with self._lock:
            unanswered = [(s, now - s) for s in self.pending.values()]
        for sock in self._socks:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        for thread in self._threads:
            thread.join(5)
        return self.samples, unanswered


@dataclass
class Sampler:
    """Samples the worker tree's resident memory every 20 ms."""

    worker: Worker
    samples: list[tuple[float, int]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.perf_counter(), rss_bytes(self.worker.pids())))
            time.sleep(0.02)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


# -- the attacks -------------------------------------------------------------------------


def one_frame(frame: Callable[[], bytes]) -> Callable[[Worker], str]:
    """An attack by one hostile frame: send it, then wait for an answer within WINDOW."""

    def attack(worker: Worker) -> str:
        started = time.monotonic()
        with worker.connect(timeout=WINDOW) as sock:
            sock.sendall(frame())
            try:
                body = read_frame(sock)
            except TimeoutError:
                time.sleep(max(0.0, WINDOW - (time.monotonic() - started)))
                return f"no answer within {WINDOW:g} s"
            except OSError as exc:
                return f"connection {type(exc).__name__}"
        took = time.monotonic() - started
        time.sleep(max(0.0, 1.0 - took))  # let the others ping after it
        if body is None:
            return f"closed after {took:.2f} s"
        kind = "error" if is_exception(worker.protocol, body) else "reply"
        return f"{kind} after {took:.2f} s"

    return attack


def partial_frames(worker: Worker) -> str:
    """32 connections each hold all but one byte of a 16 MiB frame for HOLD seconds."""
    size = 16 * 1024 * 1024
    chunk = struct.pack("!I", size) + b"\x00" * (size - 1)
    socks: list[socket.socket] = []
    refused = 0
    try:
        for _ in range(32):
            sock = worker.connect(timeout=10.0)
            socks.append(sock)
            try:
                sock.sendall(chunk)
            except OSError:
                refused += 1
        time.sleep(HOLD)
        closed = 0
        for sock in socks:
            sock.settimeout(0.01)
            try:
                closed += sock.recv(1) == b""
            except TimeoutError:
                pass
            except OSError:
                closed += 1
        return f"{closed} of 32 closed by the worker within {HOLD:g} s"
    finally:
        for sock in socks:
            sock.close()


def pipeline(worker: Worker) -> str:
    """200,000 pings written at once on one connection; their replies read as they come."""
    n = 200_000
    data = b"".join(ping("binary", i, b"hello") for i in range(n))
    got = refused = 0
    with worker.connect(timeout=PIPELINE_BOUND) as sock:
        sender = threading.Thread(target=_send_quietly, args=(sock, data), daemon=True)
        started = time.monotonic()
        sender.start()
        try:
            while got < n and time.monotonic() - started < PIPELINE_BOUND:
                body = read_frame(sock)
                if body is None:
                    break
                got += 1
                refused += is_exception("binary", body)
        except OSError:
            pass
        took = time.monotonic() - started
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        sender.join(5)
    done = f"all {n:,}" if got == n else f"{got:,} of {n:,}"
    return f"{done} replies in {took:.1f} s, {refused:,} of them errors (overloaded)"


def _send_quietly(sock: socket.socket, data: bytes) -> None:
    with contextlib.suppress(OSError):
        sock.sendall(data)


ATTACKS: dict[str, tuple[str, str, Callable[[Worker], str]]] = {
    "1": ("void-list: binary list<VOID> of 2**31-1", "binary", one_frame(void_list)),
    "2": ("stop-list: compact list<STOP> of 2**62", "compact", one_frame(stop_list)),
    "3": ("varint: compact 300 KB varint", "compact", one_frame(long_varint)),
    "4": ("partial: 32 x 16 MiB partial frames", "binary", partial_frames),
    "5": ("pipeline: 200,000 pings on one connection", "binary", pipeline),
}


@dataclass
class Row:
    tree: str
    pool: str
    attack: str
    before: tuple[float, float]
    during: tuple[float, float]
    censored: bool  # some pings during the attack were still unanswered at its end
    rss_mib: float
    attacker: str
    stayed_up: str


def run_attack(cmd: str, tree: str, pool: str, key: str, logs: Path) -> Row:
    title, protocol, attack = ATTACKS[key]
    worker = Worker.start(cmd, pool, protocol, logs, f"{tree}-{pool}-{key}")
    try:
        pinger, sampler = Pinger(worker), Sampler(worker)
        sampler.start()
        pinger.start()
        time.sleep(BASELINE)
        began = time.perf_counter()
        try:
            attacker = attack(worker)
        except OSError as exc:
            attacker = f"failed: {exc}"
        ended = time.perf_counter()
        answered, unanswered = pinger.stop()
        sampler.stop()
        samples = answered + unanswered
        base = [lat for s, lat in samples if s < began]
        during = [lat for s, lat in samples if began <= s < ended]
        rss_before = statistics.median([r for t, r in sampler.samples if t < began] or [0])
        rss_peak = max([r for t, r in sampler.samples if t >= began] or [0])
        stayed = stayed_up(worker)
        return Row(
            tree,
            pool,
            title,
            (percentile(base, 0.5), percentile(base, 0.99)),
            (percentile(during, 0.5), percentile(during, 0.99)),
            any(began <= s < ended for s, _ in unanswered),
            (rss_peak - rss_before) / 2**20,
            attacker,
            stayed,
        )
    finally:
        worker.stop()


def stayed_up(worker: Worker) -> str:
    if worker.proc.poll() is not None:
        return f"no: exited ({worker.proc.returncode})"
    deadline = time.monotonic() + RECOVER
    answered = False
    while time.monotonic() < deadline and not answered:
        answered = worker.answers(timeout=max(0.1, deadline - time.monotonic()))
    pids = worker.pids()
    cpu = cpu_seconds(pids)
    time.sleep(1.0)
    busy = cpu_seconds(pids) - cpu
    if not answered:
        return f"no: a new client was not answered within {RECOVER:g} s"
    if busy > BUSY:
        return f"did not recover: still {busy:.0%} CPU on the attack"
    return "yes"


# -- main --------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--worker-cmd",
        action="append",
        required=True,
        metavar="[LABEL=]CMD",
        help="command that starts the worker under test, flags appended (e.g. "
        "'before=/tmp/x/before/.venv/bin/offloop worker'); repeat to compare",
    )
    parser.add_argument(
        "--pool", action="append", choices=["thread", "process"], help="default: both"
    )
    parser.add_argument(
        "--attack", action="append", choices=sorted(ATTACKS), help="default: all five"
    )
    parser.add_argument("--logs", type=Path, help="directory for the workers' logs")
    return parser.parse_args(argv)


def commands(specs: list[str]) -> Iterator[tuple[str, str]]:
    for i, spec in enumerate(specs):
        label, sep, cmd = spec.partition("=")
        if sep and " " not in label and label:
            yield label, cmd
        else:
            yield f"worker{i + 1}", spec


def ms(pair: tuple[float, float]) -> str:
    return f"{pair[0] * 1000:.1f} / {pair[1] * 1000:.1f}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logs = args.logs or Path(tempfile.mkdtemp(prefix="offloop-attacks-"))
    logs.mkdir(parents=True, exist_ok=True)
    pools = args.pool or ["thread", "process"]
    keys = args.attack or sorted(ATTACKS)
    rows: list[Row] = []
    print(f"worker logs in {logs}", file=sys.stderr)
    for key in keys:
        for pool in pools:
            for label, cmd in commands(args.worker_cmd):
                print(f"attack {key} on {label} ({pool} pool)...", file=sys.stderr, flush=True)
                rows.append(run_attack(cmd, label, pool, key, logs))
    print(
        "| attack | worker | pool | others' ping p50 / p99 before (ms) | during (ms) "
        "| RSS growth (MiB) | attacker got | stayed up |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        during = (">= " if r.censored else "") + ms(r.during)
        print(
            f"| {r.attack} | {r.tree} | {r.pool} | {ms(r.before)} | {during} "
            f"| {r.rss_mib:+.0f} | {r.attacker} | {r.stayed_up} |"
        )
    if any(r.censored for r in rows):
        print("\n>= : some pings were still unanswered when the attack ended; they count as")
        print("lasting until then.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
