"""Attacks of issue 11 (items 7 and 8) against the gateway's HTTP front.

Starts a worker (``--worker-cmd``, textlab's demo handler) and, for each gateway under test
(``--gateway-cmd LABEL=COMMAND``, e.g. an older tree's ``offloop gateway``), each HTTP server
(``--server``) and each attack, a fresh gateway in front of it, on 127.0.0.1. While a prober
sends ``GET /healthz`` on a new connection every 20 ms (and ``GET /readyz`` every 100 ms, which
is 200 only while the gateway finds its backend up), it runs one attack:

- ``header`` (item 7): one client sends a request whose one header never ends (up to
  ``--header-mib`` MiB, as fast as the gateway reads); cut off, it starts again, until the
  window ends.
- ``idle`` (item 8): the gateway's open-files limit is set to ``--nofile`` (1,024) by a small
  wrapper that then execs it; ``--idle`` clients (1,100) connect and send nothing, and
  ``--slowloris`` more send a header byte a second (with ``--reconnect``, each one the
  gateway closes connects again at once).
- ``chunks`` (item 12, not run by default): one client sends a 1 MiB body in 1-byte chunks;
  the gateway's CPU time until it answers.

For each it prints the probes' success rate and p99 latency (of those answered) before and
during the attack, the share of ``/readyz`` probes that found the backend up, the growth of the
gateway's resident memory, and what the attacker got. Every wait is bounded (``--window``
seconds of attack); everything started is stopped (SIGTERM, then SIGKILL to its process
group) whatever happened. The script raises its own open-files limit when it needs more
descriptors than it has; it lowers one only in the gateway's wrapper.

Standalone: the standard library only, so it drives any version::

    python bench/attacks/gateway_front.py \\
        --gateway-cmd "before=/tmp/x/before/.venv/bin/offloop gateway" \\
        --gateway-cmd "after=.venv/bin/offloop gateway"
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import os
import resource
import selectors
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
IDL = ROOT / "src/offloop/demo/textlab.thrift"
HANDLER = "offloop.demo.textlab:Handler"
HOST = "127.0.0.1"

#: Seconds between two /healthz probes, and their timeout.
PROBE_EVERY = 0.02
PROBE_TIMEOUT = 1.0
#: Every how many probes one is a /readyz.
READY_EVERY = 5
#: Seconds of probes before the attack, for the baseline.
BASELINE = 2.0
#: Seconds a process gets to start, and to stop after SIGTERM.
START = 90.0
STOP = 10.0
#: Seconds the header attacker waits before sending its header again, once cut off.
RETRY_PAUSE = 0.1
#: The slowloris clients send one header byte this often (seconds).
SLOWLORIS_EVERY = 1.0
#: The gateway's open-files limit is set by this, then it becomes the gateway.
_WRAPPER = (
    "import os, resource, sys\n"
    "n = int(sys.argv[1])\n"
    "resource.setrlimit(resource.RLIMIT_NOFILE, (n, n))\n"
    "os.execvp(sys.argv[2], sys.argv[2:])\n"
)


# -- processes ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def rss_bytes(pid: int) -> int:
    """Resident memory of ``pid`` (0 once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


@dataclass
class Process:
    """A child in its own session (so that its whole tree can be signalled), logging to a
    file."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    @classmethod
    def start(cls, name: str, argv: list[str], logs: Path) -> Process:
        log = logs / f"{name}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        return cls(name, proc, log)

    def wait_http(self, port: int, path: str) -> None:
        """Wait until ``GET path`` on ``port`` answers 200."""
        deadline = time.monotonic() + START
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited:\n{self.log.read_text()[-3000:]}")
            if get(port, path)[0] == 200:
                return
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} not ready within {START} s")

    def wait_port(self, port: int) -> None:
        deadline = time.monotonic() + START
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited:\n{self.log.read_text()[-3000:]}")
            with contextlib.suppress(OSError), socket.create_connection((HOST, port), 1):
                return
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} did not listen within {START} s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(STOP)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # whatever of its tree is left
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(STOP)


@contextlib.contextmanager
def running(name: str, argv: list[str], logs: Path) -> Iterator[Process]:
    process = Process.start(name, argv, logs)
    try:
        yield process
    finally:
        process.stop()


def get(port: int, path: str, timeout: float = PROBE_TIMEOUT) -> tuple[int, float]:
    """``GET path`` on a new connection: (status, seconds); status 0 when it failed."""
    started = time.perf_counter()
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        return response.status, time.perf_counter() - started
    except (OSError, http.client.HTTPException):
        return 0, time.perf_counter() - started
    finally:
        conn.close()


# -- measuring -----------------------------------------------------------------------------


@dataclass
class Probe:
    at: float
    path: str
    status: int
    seconds: float


class Prober:
    """Probes the gateway from a thread, and samples its resident memory, until stopped."""

    def __init__(self, port: int, pid: int) -> None:
        self.port = port
        self.pid = pid
        self.probes: list[Probe] = []
        self.rss: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="prober", daemon=True)

    def start(self) -> Prober:
        self._thread.start()
        return self

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            path = "/readyz" if n % READY_EVERY == READY_EVERY - 1 else "/healthz"
            at = time.perf_counter()
            status, seconds = get(self.port, path)
            self.probes.append(Probe(at, path, status, seconds))
            self.rss.append((time.perf_counter(), rss_bytes(self.pid)))
            n += 1
            self._stop.wait(max(0.0, PROBE_EVERY - seconds))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(PROBE_TIMEOUT + 5)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass
class Window:
    """The probes of one window (before, or during the attack)."""

    health: list[Probe] = field(default_factory=list)
    ready: list[Probe] = field(default_factory=list)

    def ok(self) -> str:
        return _share(self.health)

    def p99_ms(self) -> str:
        answered = [p.seconds for p in self.health if p.status == 200]
        return f"{1000 * percentile(answered, 0.99):.1f}" if answered else "-"

    def ready_ok(self) -> str:
        return _share(self.ready)


def _share(probes: list[Probe]) -> str:
    good = sum(p.status == 200 for p in probes)
    return f"{good}/{len(probes)} ({100 * good / max(1, len(probes)):.1f}%)"


def window(probes: list[Probe], start: float, end: float) -> Window:
    w = Window()
    for p in probes:
        if start <= p.at < end:
            (w.ready if p.path == "/readyz" else w.health).append(p)
    return w


# -- attacks -------------------------------------------------------------------------------


def header_attack(port: int, until: float, mib: int) -> str:
    """One client sends a header that never ends, again once cut off; what it got."""
    piece = b"x" * 65536
    total = mib * 2**20
    sent_total = 0
    answers: dict[str, int] = {}
    rounds = 0
    while time.monotonic() < until:
        rounds += 1
        sent = 0
        sock = socket.create_connection((HOST, port), timeout=2.0)
        try:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: gw\r\nX-Big: ")
            while sent < total and time.monotonic() < until:
                sock.sendall(piece)
                sent += len(piece)
            answer = "none (window ended)" if sent < total else "none (all sent)"
        except TimeoutError:
            answer = "none (the gateway stopped reading)"
        except OSError:
            answer = _read_status(sock)
        finally:
            sock.close()
            sent_total += sent
        answers[answer] = answers.get(answer, 0) + 1
        if "none" in answer and "all sent" not in answer:
            break  # a gateway that keeps the connection open: one round is all there is
        time.sleep(RETRY_PAUSE)  # cut off: the one client tries again, not a flood
    what = ", ".join(f"{k} x{v}" for k, v in answers.items())
    return f"{rounds} rounds, {sent_total / 2**20:.0f} MiB sent; answer: {what}"


def _read_status(sock: socket.socket, wait: float = 0.5) -> str:
    """What the gateway answered before closing, if anything could be read."""
    try:
        sock.settimeout(wait)
        data = sock.recv(200)
    except OSError:
        return "connection reset"
    if data.startswith(b"HTTP/1.1 "):
        return data[9:12].decode("latin-1")
    return "closed"


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of ``pid`` so far (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def chunks_attack(port: int, until: float, pid: int, kib: int) -> str:
    """One client sends a ``ping`` body of ``kib`` KiB in 1-byte chunks, as fast as the
    gateway reads; the gateway's CPU time until it answered (or the window ended)."""
    body = b'{"msg": "' + b"x" * (kib * 1024 - 11) + b'"}'
    head = (
        b"POST /rpc/TextLab/ping HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    wire = head + b"".join(b"1\r\n%c\r\n" % c for c in body) + b"0\r\n\r\n"
    cpu = cpu_seconds(pid)
    sock = socket.create_connection((HOST, port), timeout=max(1.0, until - time.monotonic()))
    answer = "none (window ended)"
    try:
        for i in range(0, len(wire), 65536):
            sock.sendall(wire[i : i + 65536])
        answer = _read_status(sock, wait=max(1.0, until - time.monotonic()))
    except TimeoutError:
        pass
    except OSError:
        answer = _read_status(sock)
    finally:
        sock.close()
    used = cpu_seconds(pid) - cpu
    return (
        f"{kib} KiB in 1-byte chunks ({len(wire) / 2**20:.1f} MiB sent): {answer}, {used:.2f} s CPU"
    )


def idle_attack(port: int, until: float, idle: int, slowloris: int, reconnect: bool) -> str:
    """``idle`` silent connections and ``slowloris`` slow heads until ``until``; with
    ``reconnect``, each one the gateway closes is opened again at once."""
    sel = selectors.DefaultSelector()
    socks: dict[socket.socket, str] = {}
    stats = {"connects": 0, "failed": 0, "closed_by_gateway": 0, "408": 0}

    def connect(kind: str) -> None:
        try:
            sock = socket.create_connection((HOST, port), timeout=1.0)
        except OSError:
            stats["failed"] += 1
            return
        sock.setblocking(False)
        stats["connects"] += 1
        socks[sock] = kind
        sel.register(sock, selectors.EVENT_READ)
        if kind == "slow":
            with contextlib.suppress(OSError):
                sock.send(b"GET /healthz HTTP/1.1\r\nHost: gw\r\n")

    for _ in range(idle):
        connect("idle")
    for _ in range(slowloris):
        connect("slow")
    last_byte = time.monotonic()
    try:
        while time.monotonic() < until:
            for key, _ in sel.select(timeout=0.2):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                try:
                    data = sock.recv(4096)
                except OSError:
                    data = b""
                if data.startswith(b"HTTP/1.1 408"):
                    stats["408"] += 1
                if not data or data.startswith(b"HTTP/"):
                    kind = socks.pop(sock)
                    sel.unregister(sock)
                    sock.close()
                    stats["closed_by_gateway"] += 1
                    if reconnect and time.monotonic() < until:
                        connect(kind)
            if time.monotonic() - last_byte >= SLOWLORIS_EVERY:
                last_byte = time.monotonic()
                for sock, kind in list(socks.items()):
                    if kind == "slow":
                        with contextlib.suppress(OSError):
                            sock.send(b"X")
    finally:
        held = len(socks)
        for sock in socks:
            sock.close()
        sel.close()
    return (
        f"{stats['connects']} connects ({stats['failed']} failed), "
        f"{stats['closed_by_gateway']} closed by the gateway ({stats['408']} with 408), "
        f"{held} open at the end"
    )


# -- one run -------------------------------------------------------------------------------


@dataclass
class Row:
    tree: str
    server: str
    attack: str
    before: Window
    during: Window
    rss_mib: float
    attacker: str


def run(
    args: argparse.Namespace, label: str, gateway_cmd: str, server: str, attack: str, logs: Path
) -> Row:
    worker_port, port = free_port(), free_port()
    worker_argv = [
        *shlex.split(args.worker_cmd),
        *("--idl", str(IDL), "--service", "TextLab", "--handler", HANDLER),
        *("--pool", "thread", "--workers", "2", "--host", HOST, "--port", str(worker_port)),
    ]
    gateway_argv = [
        *shlex.split(gateway_cmd),
        *("--idl", str(IDL), "--backend", f"{HOST}:{worker_port}"),
        *("--host", HOST, "--port", str(port), "--server", server),
    ]
    if attack == "idle":
        gateway_argv = [sys.executable, "-c", _WRAPPER, str(args.nofile), *gateway_argv]
    name = f"{label}-{server}-{attack}"
    with (
        running(f"{name}-worker", worker_argv, logs) as worker,
        running(f"{name}-gateway", gateway_argv, logs) as gateway,
    ):
        worker.wait_port(worker_port)
        gateway.wait_http(port, "/readyz")
        prober = Prober(port, gateway.proc.pid).start()
        try:
            time.sleep(BASELINE)
            began = time.perf_counter()
            until = time.monotonic() + args.window
            if attack == "header":
                attacker = header_attack(port, until, args.header_mib)
            elif attack == "chunks":
                attacker = chunks_attack(port, until, gateway.proc.pid, args.chunked_kib)
            else:
                attacker = idle_attack(port, until, args.idle, args.slowloris, args.reconnect)
            ended = time.perf_counter()
        finally:
            prober.stop()
    base_rss = [r for t, r in prober.rss if t < began and r]
    peak_rss = max([r for t, r in prober.rss if t >= began] or [0])
    growth = (peak_rss - sorted(base_rss)[len(base_rss) // 2]) / 2**20 if base_rss else 0.0
    return Row(
        label,
        server,
        attack,
        window(prober.probes, 0.0, began),
        window(prober.probes, began, ended),
        growth,
        attacker,
    )


# -- the command line ----------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument(
        "--gateway-cmd",
        action="append",
        required=True,
        metavar="LABEL=COMMAND",
        help="a gateway under test: its label and the command that runs `offloop gateway` "
        "(repeat to compare)",
    )
    parser.add_argument(
        "--worker-cmd",
        default=f"{shlex.quote(sys.executable)} -m offloop.cli worker",
        help="the command that runs `offloop worker` (default: this interpreter's offloop)",
    )
    parser.add_argument(
        "--server", action="append", choices=["uvicorn", "tornado"], help="default: both"
    )
    parser.add_argument(
        "--attack",
        action="append",
        choices=["header", "idle", "chunks"],
        help="default: header and idle",
    )
    parser.add_argument("--window", type=float, default=15.0, help="seconds of attack")
    parser.add_argument("--header-mib", type=int, default=128, help="size of the header")
    parser.add_argument(
        "--chunked-kib", type=int, default=1024, help="chunks attack: the body's size, KiB"
    )
    parser.add_argument("--idle", type=int, default=1100, help="idle connections")
    parser.add_argument("--slowloris", type=int, default=100, help="slow-head connections")
    parser.add_argument(
        "--reconnect",
        action="store_true",
        help="idle attack: open again at once each connection the gateway closes",
    )
    parser.add_argument("--nofile", type=int, default=1024, help="the gateway's open-files limit")
    parser.add_argument("--logs", type=Path, help="directory for the processes' logs")
    return parser.parse_args(argv)


def raise_own_open_files(need: int) -> None:
    """Raise this process's soft open-files limit toward ``need`` (never lower it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < need:
        target = need if hard == resource.RLIM_INFINITY else min(need, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        if target < need:
            print(f"warning: only {target} descriptors for {need} connections", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    raise_own_open_files(args.idle + args.slowloris + 256)
    gateways = [spec.partition("=")[::2] for spec in args.gateway_cmd]
    servers = args.server or ["uvicorn", "tornado"]
    attacks = args.attack or ["header", "idle"]
    with contextlib.ExitStack() as stack:
        logs = args.logs or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        logs.mkdir(parents=True, exist_ok=True)
        rows: list[Row] = []
        for attack in attacks:
            for server in servers:
                for label, cmd in gateways:
                    print(f"running {attack} on {label} ({server})...", file=sys.stderr)
                    rows.append(run(args, label, cmd, server, attack, logs))
        print(
            "| attack | tree | server | /healthz ok before | p99 ms before | /healthz ok "
            "during | p99 ms during | /readyz ok during | RSS growth MiB | attacker got |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            print(
                f"| {r.attack} | {r.tree} | {r.server} | {r.before.ok()} | {r.before.p99_ms()} "
                f"| {r.during.ok()} | {r.during.p99_ms()} | {r.during.ready_ok()} "
                f"| {r.rss_mib:+.0f} | {r.attacker} |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
