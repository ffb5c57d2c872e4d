"""What every scenario shares: the machine, processes it starts, statistics, the context.

Processes: :class:`Services` starts each server as a child in its own session (so that the
whole process tree, pool workers included, can be signalled at once), waits for its port or
an HTTP readiness URL, and stops everything in ``finally``: SIGTERM to the process group, then
SIGKILL after a grace period. Every server listens on 127.0.0.1 on a free port. Nothing is
left behind, even when a scenario fails half-way.
"""

from __future__ import annotations

import contextlib
import http.client
import importlib.metadata
import os
import platform
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
"""The repository root: servers are started from here."""

BASELINES = Path(__file__).resolve().parent / "baselines"
"""The small runnable servers that offloop is compared with."""

PY = sys.executable
"""The interpreter of the venv that runs the bench: every child uses it too."""

PACKAGES = (
    "offloop",
    "uvicorn",
    "uvloop",
    "httptools",
    "tornado",
    "thriftpy2",
    "pykka",
    "numpy",
    "nltk",
    "fastapi",
    "starlette",
    "ray",
    "matplotlib",
    "rich",
)
"""Packages whose versions each result records."""

STOP_GRACE = 5.0
"""Seconds a server gets between SIGTERM and SIGKILL: offloop servers are started with a
one-second drain, so five is plenty unless something is stuck."""


# -- the machine ---------------------------------------------------------------------------


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo ("unknown" elsewhere)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def physical_cores() -> int:
    """Distinct (physical id, core id) pairs in /proc/cpuinfo; the logical count if absent."""
    cores: set[tuple[str, str]] = set()
    phys = core = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key, value = key.strip(), value.strip()
            if key == "physical id":
                phys = value
            elif key == "core id":
                core = value
            elif not key and (phys or core):
                cores.add((phys, core))
                phys = core = ""
        if phys or core:
            cores.add((phys, core))
    return len(cores) or (os.cpu_count() or 1)


def usable_cpus() -> list[int]:
    """The CPUs this process may run on."""
    return sorted(os.sched_getaffinity(0))


def package_versions(names: Iterable[str] = PACKAGES) -> dict[str, str | None]:
    """Installed version of each package; None when it is not installed."""
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def _cpu_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs since boot, from /proc/stat."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        return sum(fields) - idle, sum(fields)
    return 0, 0


def cpu_busy(seconds: float = 1.0) -> float:
    """Share of all CPUs busy over the next ``seconds`` (0 to 1): others' work, when called
    while the bench itself is idle. Unlike the load average, it does not lag."""
    busy0, total0 = _cpu_ticks()
    time.sleep(seconds)
    busy1, total1 = _cpu_ticks()
    return (busy1 - busy0) / (total1 - total0) if total1 > total0 else 0.0


def machine_info() -> dict[str, Any]:
    """Everything a reader needs to judge a result: cores, CPU, memory, load, versions.

    ``cpu_busy_before`` is the share of the CPUs that other work used in the second before
    the scenario started.
    """
    mem_kib = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    return {
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(usable_cpus()),
        "physical_cores": physical_cores(),
        "cpu_model": cpu_model(),
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "cpu_busy_before": round(cpu_busy(1.0), 3),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "packages": package_versions(),
        "nofile_limit": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
    }


def raise_nofile_limit() -> int:
    """Raise this process's open-file limit to its hard limit; children inherit it.

    The io-concurrency scenario holds 5,000 client connections and as many server-side ones.

    Returns:
        The soft limit now in force.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# -- statistics ----------------------------------------------------------------------------


def percentile(values: Sequence[float], pct: float) -> float:
    """The ``pct`` percentile (0 to 100, linear interpolation); NaN for no values."""
    if not len(values):
        return float("nan")
    return float(np.percentile(np.asarray(values, dtype=float), pct))


def latency_summary(values: Sequence[float]) -> dict[str, float]:
    """p50, p90, p99, p99.9 and max of latencies, in milliseconds (input in seconds)."""
    arr = np.asarray(values, dtype=float) * 1000.0
    if not arr.size:
        nan = float("nan")
        return {"n": 0, "p50": nan, "p90": nan, "p99": nan, "p999": nan, "max": nan}
    p50, p90, p99, p999 = np.percentile(arr, [50, 90, 99, 99.9])
    return {
        "n": int(arr.size),
        "p50": float(p50),
        "p90": float(p90),
        "p99": float(p99),
        "p999": float(p999),
        "max": float(arr.max()),
    }


@dataclass(frozen=True)
class Spread:
    """One figure over repeated runs: median, min and max."""

    median: float
    min: float
    max: float
    n: int

    @classmethod
    def of(cls, values: Iterable[float]) -> Spread:
        vals = [v for v in values if v == v]  # drop NaN
        if not vals:
            nan = float("nan")
            return cls(nan, nan, nan, 0)
        return cls(float(np.median(vals)), min(vals), max(vals), len(vals))

    def fmt(self, digits: int = 1, unit: str = "") -> str:
        """``median (min-max)``, or just the median for one run."""
        if self.n == 0:
            return "-"
        med = f"{self.median:,.{digits}f}{unit}"
        if self.n == 1 or self.min == self.max:
            return med
        return f"{med} ({self.min:,.{digits}f}-{self.max:,.{digits}f})"


def ratio(a: float, b: float) -> float:
    """``a / b``; NaN when either is missing or ``b`` is zero."""
    if not (a == a and b == b) or b == 0:
        return float("nan")
    return a / b


def fmt_ratio(value: float) -> str:
    """A ratio as ``1.23x`` (``-`` when unknown)."""
    if value != value:
        return "-"
    if value >= 100:
        return f"{value:,.0f}x"
    return f"{value:.2f}x"


def fmt_num(value: float, digits: int = 1) -> str:
    """A number with thousands separators (``-`` when unknown)."""
    if value != value:
        return "-"
    return f"{value:,.{digits}f}"


# -- processes -----------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rss_kib(pid: int) -> int:
    """Resident memory of ``pid`` in KiB (VmRSS of /proc/<pid>/status); 0 if unreadable."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def threads_of(pid: int) -> int:
    """Threads of ``pid`` (0 if unreadable)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Threads:"):
                return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its waited-for children (/proc/<pid>/stat)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        text = Path(f"/proc/{pid}/stat").read_text()
        fields = text.rsplit(")", 1)[1].split()
        ticks = sum(int(x) for x in fields[11:15])
        return ticks / os.sysconf("SC_CLK_TCK")
    return 0.0


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of ``pid`` and every live descendant (pool processes included)."""
    total = 0.0
    for p in _descendants(pid) | {pid}:
        total += cpu_seconds(p)
    return total


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            text = (entry / "stat").read_text()
            ppid = int(text.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    out: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in out:
                out.add(child)
                todo.append(child)
    return out


def session_members(sid: int) -> list[int]:
    """Live processes (not zombies) of session ``sid``."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[3]) == sid and fields[0] != "Z":
                out.append(int(entry.name))
    return out


class StartError(RuntimeError):
    """A server exited or did not become ready in time."""


@dataclass
class Service:
    """One started server.

    Attributes:
        name: what the tables call it.
        port: its TCP port on 127.0.0.1.
        proc: the child process (the leader of its own process group).
        log_path: where its stdout and stderr go.
    """

    name: str
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path
    ready_path: str | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def rss_kib(self) -> int:
        """Resident memory of the server's main process, KiB."""
        return rss_kib(self.proc.pid)

    def log_tail(self, lines: int = 5) -> str:
        """The last lines of its log, for error messages."""
        with contextlib.suppress(OSError):
            text = self.log_path.read_text(errors="replace").strip().splitlines()
            return " | ".join(text[-lines:])
        return ""

    def stop(self) -> None:
        """SIGTERM the process group, wait up to ``STOP_GRACE`` seconds, then SIGKILL it."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(STOP_GRACE)
        # The group may hold pool workers even after the leader has gone, and some servers
        # (Ray) put their workers in process groups of their own, but all stay in the session
        # that was made for this server.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        for pid in session_members(self.proc.pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(STOP_GRACE)


@dataclass(frozen=True)
class ServerSpec:
    """How to start one server.

    Attributes:
        name: the contender's name.
        cmd: the command; ``{port}`` in any argument is replaced by the chosen port.
        port: the port, or 0 for a free one.
        ready_path: an HTTP path that must answer 200 before the server counts as ready;
            None to wait for the TCP port only.
        env: extra environment variables.
        cpus: CPUs to pin the server (and the processes it starts) to; None for no pinning.
        timeout: seconds to wait for readiness.
    """

    name: str
    cmd: Sequence[str]
    port: int = 0
    ready_path: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    cpus: tuple[int, ...] | None = None
    timeout: float = 120.0


def http_get(port: int, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
    """A blocking GET to 127.0.0.1:``port``; returns (status, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def _is_ready(svc: Service) -> bool:
    try:
        if svc.ready_path is None:
            with socket.create_connection(("127.0.0.1", svc.port), timeout=0.5):
                return True
        status, _ = http_get(svc.port, svc.ready_path, timeout=2.0)
        return status == 200
    except OSError:
        return False


class Services:
    """The servers of one scenario; a context manager that stops them all on exit.

    Args:
        log_dir: where each server's output goes (``<name>.log``).
    """

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        log_dir.mkdir(parents=True, exist_ok=True)
        self.running: dict[str, Service] = {}

    def __enter__(self) -> Services:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()

    def stop_all(self) -> None:
        """Stop every server, newest first (gateways before their workers)."""
        for name in list(reversed(self.running)):
            self.stop(name)

    def stop(self, name: str) -> None:
        svc = self.running.pop(name, None)
        if svc is not None:
            svc.stop()

    def start(
        self,
        specs: Sequence[ServerSpec],
        *,
        optional: bool = False,
        on_wait: Callable[[], None] | None = None,
    ) -> dict[str, StartError]:
        """Start ``specs`` at once and wait until each is ready.

        Args:
            specs: the servers; their start-ups overlap (worker pools import NLTK).
            optional: a server that fails to start is reported in the returned mapping,
                not raised; others go on.
            on_wait: called every poll while waiting (to refresh a progress display).

        Returns:
            The servers that failed, by name (only with ``optional``).

        Raises:
            StartError: a server failed and ``optional`` is false (all started ones of this
                call are stopped first).
        """
        pending: dict[str, tuple[Service, float]] = {}
        for spec in specs:
            port = spec.port or free_port()
            cmd = [arg.replace("{port}", str(port)) for arg in spec.cmd]
            log_path = self.log_dir / f"{spec.name}.log"
            log = open(log_path, "wb")  # noqa: SIM115  # the child owns it after Popen
            env = {**os.environ, "PYTHONUNBUFFERED": "1", **spec.env}
            try:
                proc = subprocess.Popen(
                    cmd,
                    cwd=ROOT,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env=env,
                    start_new_session=True,
                )
            finally:
                log.close()
            if spec.cpus is not None:
                # The interpreter takes tens of ms to start: every process it creates later
                # (pool workers) inherits this affinity.
                with contextlib.suppress(OSError):
                    os.sched_setaffinity(proc.pid, spec.cpus)
            svc = Service(spec.name, port, proc, log_path, spec.ready_path)
            self.running[spec.name] = svc
            pending[spec.name] = (svc, time.monotonic() + spec.timeout)
        failed: dict[str, StartError] = {}
        while pending:
            for name, (svc, deadline) in list(pending.items()):
                if svc.proc.poll() is not None:
                    failed[name] = StartError(
                        f"{name} exited with status {svc.proc.returncode} at start: "
                        f"{svc.log_tail()}"
                    )
                elif _is_ready(svc):
                    pass
                elif time.monotonic() > deadline:
                    failed[name] = StartError(f"{name} was not ready in time: {svc.log_tail()}")
                else:
                    continue
                del pending[name]
            if pending:
                if on_wait is not None:
                    on_wait()
                time.sleep(0.1)
        for name in failed:
            self.stop(name)
        if failed and not optional:
            for spec in specs:
                self.stop(spec.name)
            raise next(iter(failed.values()))
        return failed

    def __getitem__(self, name: str) -> Service:
        return self.running[name]

    def __contains__(self, name: object) -> bool:
        return name in self.running


@contextlib.contextmanager
def rss_sampler(pids: dict[str, int], period: float = 0.2) -> Iterator[dict[str, int]]:
    """Sample VmRSS of ``pids`` in a thread while the block runs; yields name -> peak KiB."""
    import threading

    peaks = {name: rss_kib(pid) for name, pid in pids.items()}
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(period):
            for name, pid in pids.items():
                peaks[name] = max(peaks[name], rss_kib(pid))

    thread = threading.Thread(target=sample, name="rss-sampler", daemon=True)
    thread.start()
    try:
        yield peaks
    finally:
        stop.set()
        thread.join()
        for name, pid in pids.items():
            peaks[name] = max(peaks[name], rss_kib(pid))
