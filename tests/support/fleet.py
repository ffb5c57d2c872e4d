"""Simulated hosts on one machine: a fleet of workers, each in a network namespace of its own,
its CPU capped by a cgroup, found by the gateway through a real DNS server (issue 14).

The layout (``P`` is a /24 of 10.213.0.0/16 no other fleet on the machine holds)::

    root namespace                                  namespace oflt-<pid>-<n>-h0
    ┌──────────────────────────────────────┐        ┌─────────────────────────────────┐
    │ bridge oflr…  P.1/24                 │◀─veth─▶│ eth0 P.10/24                    │
    │   dnsmasq on P.1:53 (hosts file,     │        │ offloop worker :9090, admin     │
    │   TTL 1 s, reloaded on SIGHUP)       │        │ :9100, in cgroup cpu/oflt-…-h0  │
    │ offloop gateway on 127.0.0.1:free    │        │ (cfs quota 0.4 x period)        │
    │   --backend dns://P.1:53/NAME:9090   │        └─────────────────────────────────┘
    │ the load (this process)              │◀─veth─▶ … one namespace per host
    └──────────────────────────────────────┘

- A :class:`Host` is a namespace with a veth pair whose root end is on the bridge, an address
  ``P.(10+i)``, and a cgroup v1 CPU group. Its worker is started as
  ``sh -c 'echo $$ > cgroup.procs; exec ip netns exec NS python -m offloop.cli worker ...'``,
  so the worker and every process it forks (its pool) are in the group from their first
  instruction. The quota is lifted while a worker starts (imports, a pool child) and set to
  ``cpu`` x period once it is ready, so that a start does not take 1/cpu times longer; calls
  only ever run capped. :meth:`Host.cut` and :meth:`Host.mend` take the root end of the link
  down and up (the host is lost: packets vanish, no reset).
- DNS is dnsmasq (as in tests/client/test_discovery_dns.py): one name, one A record per host
  "in DNS"; :meth:`Fleet.publish` rewrites its hosts file and signals it, then waits until it
  answers so. :meth:`Fleet.stop_dns` and :meth:`Fleet.start_dns` take it away and back on the
  same address.
- Everything is named ``oflt-<pid>-<n>-…`` (namespaces, cgroups) or ``ofl[rv]<pid hex>x<n>…``
  (links; 15 characters at most), ``<pid>`` the process that made it. :meth:`Fleet.close`
  removes all of it, whatever happened (processes, namespaces and their veths, the bridge,
  cgroups); :func:`sweep` (run by every :meth:`Fleet.start`) removes what a crashed run whose
  process is gone left behind.

:func:`missing` says why a fleet cannot be made here (not root, no ``ip``, no cgroup v1 CPU
controller, no dnsmasq, or namespaces refused), for tests to skip with.
"""

from __future__ import annotations

import contextlib
import http.client
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dns.exception
import dns.resolver

__all__ = [
    "CPU_ROOT",
    "IDL",
    "Call",
    "Fleet",
    "Host",
    "Load",
    "missing",
    "sweep",
    "wait_for",
]

#: The cgroup v1 CPU controller's mount.
CPU_ROOT = Path("/sys/fs/cgroup/cpu")
#: The demo IDL (textlab: ping, parse, burn).
IDL = str(Path(__file__).resolve().parents[2] / "src/offloop/demo/textlab.thrift")
HANDLER = "offloop.demo.textlab:Handler"
#: The DNS name every host's A record is under.
NAME = "workers.fleet.test"
THRIFT_PORT = 9090
ADMIN_PORT = 9100
#: Seconds a worker or the gateway may take to start (imports, a pool child): bounds a hang.
START_TIMEOUT = 90.0
#: Bounds a wait for DNS to answer as told, or a process to exit: a hang, not a speed.
WAIT = 30.0
IP = shutil.which("ip") or ("/usr/sbin/ip" if os.path.exists("/usr/sbin/ip") else None)
DNSMASQ = shutil.which("dnsmasq") or (
    "/usr/sbin/dnsmasq" if os.path.exists("/usr/sbin/dnsmasq") else None
)
_NS_RE = re.compile(r"^oflt-(\d+)-")
_LINK_RE = re.compile(r"^ofl[rv]([0-9a-f]+)x")
_serial = itertools.count()


def missing() -> str | None:
    """Why a fleet cannot be made on this machine, or None when it can."""
    if os.geteuid() != 0:
        return "the fleet harness needs root (network namespaces, cgroups)"
    if IP is None:
        return "`ip` (iproute2) is not installed (apt-get install -y iproute2; .ci/run does)"
    if not (CPU_ROOT / "cpu.cfs_quota_us").exists():
        return f"no cgroup v1 CPU controller at {CPU_ROOT} (cpu.cfs_quota_us)"
    if DNSMASQ is None:
        return "dnsmasq is not installed (apt-get install -y dnsmasq; .ci/run does)"
    probe = f"oflt-{os.getpid()}-probe"
    made = subprocess.run([IP, "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"cannot make a network namespace: {made.stderr.strip()}"
    subprocess.run([IP, "netns", "del", probe], capture_output=True)
    return None


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    assert IP is not None
    done = subprocess.run([IP, *args], capture_output=True, text=True)
    if check and done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill_group(cgroup: Path) -> None:
    """SIGKILL every process of ``cgroup``, wait until it is empty, and remove it."""
    procs = cgroup / "cgroup.procs"
    deadline = time.monotonic() + WAIT
    while procs.exists():
        pids = [int(p) for p in procs.read_text().split()]
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if time.monotonic() > deadline:
            raise RuntimeError(f"processes {pids} of {cgroup} do not die")
        time.sleep(0.02)
    with contextlib.suppress(FileNotFoundError):
        cgroup.rmdir()


def _delete_namespace(name: str) -> None:
    for pid in _ip("netns", "pids", name, check=False).stdout.split():
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid), signal.SIGKILL)
    _ip("netns", "del", name, check=False)


def sweep() -> list[str]:
    """Remove what fleets of processes that are gone left behind; returns what it removed."""
    removed: list[str] = []
    if CPU_ROOT.exists():
        for group in CPU_ROOT.iterdir():
            m = _NS_RE.match(group.name)
            if m and group.is_dir() and not _alive(int(m.group(1))):
                _kill_group(group)
                removed.append(str(group))
    for line in _ip("netns", "list", check=False).stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        m = _NS_RE.match(name)
        if m and not _alive(int(m.group(1))):
            _delete_namespace(name)
            removed.append(f"netns {name}")
    for line in _ip("-o", "link", "show", check=False).stdout.splitlines():
        parts = line.split(":")
        if len(parts) < 2:
            continue
        name = parts[1].strip().split("@")[0]
        m = _LINK_RE.match(name)
        if m and not _alive(int(m.group(1), 16)):
            _ip("link", "del", name, check=False)
            removed.append(f"link {name}")
    return removed


def _free_subnet() -> str:
    """A 10.213.X prefix no address of the root namespace is in."""
    used = set(re.findall(r"inet 10\.213\.(\d+)\.", _ip("-o", "-4", "addr", "show").stdout))
    for third in itertools.chain(range(os.getpid() % 256, 256), range(0, os.getpid() % 256)):
        if str(third) not in used:
            return f"10.213.{third}"
    raise RuntimeError("every 10.213.X.0/24 is in use")


def _get(url: str, timeout: float = 2.0) -> tuple[int, str]:
    """GET ``url``: (status, body); (0, reason) when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        with err:
            return err.code, err.read().decode()
    except OSError as exc:
        return 0, str(exc)


def wait_for(predicate: Callable[[], Any], timeout: float, interval: float = 0.02) -> float:
    """Poll ``predicate`` until it is true; returns the seconds it took. Raises
    AssertionError after ``timeout`` (a hang, not a claim about speed)."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)
    return time.monotonic() - start


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OFFLOOP_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


@dataclass(eq=False)
class Host:
    """One simulated host: a namespace, its link to the bridge, its cgroup, its worker."""

    fleet: Fleet
    index: int
    namespace: str
    veth: str
    cgroup: Path
    address: str
    worker_args: list[str]
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def backend(self) -> str:
        """The address the gateway names this host's worker by."""
        return f"{self.address}:{THRIFT_PORT}"

    @property
    def log_path(self) -> Path:
        return self.fleet.directory / f"{self.namespace}.{self.starts}.log"

    def start(self) -> None:
        """Start the worker (uncapped until it is ready, then capped); returns once
        ``/readyz`` answers 200."""
        assert IP is not None and (self.proc is None or self.proc.poll() is not None)
        self._quota(None)
        self.starts += 1
        cmd = [
            sys.executable,
            "-m",
            "offloop.cli",
            "worker",
            "--idl",
            IDL,
            "--service",
            "TextLab",
            "--handler",
            HANDLER,
            "--app-dir",
            "",
            "--host",
            self.address,
            "--port",
            str(THRIFT_PORT),
            "--admin-host",
            self.address,
            "--admin-port",
            str(ADMIN_PORT),
            *self.worker_args,
        ]
        script = f'echo $$ > "{self.cgroup}/cgroup.procs" && exec "$@"'
        with open(self.log_path, "wb") as out:
            self.proc = subprocess.Popen(
                ["sh", "-c", script, "sh", IP, "netns", "exec", self.namespace, *cmd],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=_env(),
            )
        proc = self.proc

        def ready() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"worker of {self.namespace} exited with {proc.returncode} at start:\n"
                    + self.log_path.read_text(errors="replace")
                )
            return self.ready()

        wait_for(ready, START_TIMEOUT, 0.05)
        self._quota(self.fleet.cpu)

    def ready(self) -> bool:
        return _get(f"http://{self.address}:{ADMIN_PORT}/readyz")[0] == 200

    def stop(self, timeout: float = WAIT) -> int:
        """SIGTERM the worker and wait for it to exit (it drains first); its exit status."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        """SIGKILL the worker and its pool (the host is still there, its worker gone)."""
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(WAIT)
        wait_for(lambda: not self.pids(), WAIT)

    def calls(self, method: str | None = None) -> float:
        """Calls (of ``method``, or all) this host's worker has answered; 0 when it does not
        answer (not started, or cut off)."""
        status, text = _get(f"http://{self.address}:{ADMIN_PORT}/metrics", timeout=1.0)
        if status != 200:
            return 0.0
        total = 0.0
        for line in text.splitlines():
            if line.startswith("offloop_worker_calls_total{") and (
                method is None or f'method="{method}"' in line
            ):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def cpu_seconds(self) -> float:
        """CPU time (user and system) the host's live processes have used."""
        tick = os.sysconf("SC_CLK_TCK")
        total = 0.0
        for pid in self.pids():
            with contextlib.suppress(OSError):
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / tick
        return total

    def cut(self) -> None:
        """Take the host's link down: its packets vanish (no reset, as with a lost host)."""
        _ip("link", "set", self.veth, "down")

    def mend(self) -> None:
        """Bring the link back up."""
        _ip("link", "set", self.veth, "up")

    def pids(self) -> list[int]:
        return [int(p) for p in (self.cgroup / "cgroup.procs").read_text().split()]

    def _quota(self, cpu: float | None) -> None:
        period = int((self.cgroup / "cpu.cfs_period_us").read_text())
        quota = -1 if cpu is None else int(cpu * period)
        (self.cgroup / "cpu.cfs_quota_us").write_text(str(quota))

    def close(self) -> None:
        _kill_group(self.cgroup)
        if self.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(WAIT)
        _delete_namespace(self.namespace)


@dataclass
class Gateway:
    """``offloop gateway`` in the root namespace, in a cgroup of its own (uncapped)."""

    log_path: Path
    port: int
    proc: subprocess.Popen[bytes]

    def get(self, path: str) -> tuple[int, str]:
        return _get(f"http://127.0.0.1:{self.port}{path}")

    def backends(self) -> dict[str, str]:
        """Backend address -> state (up, down, draining), from ``/readyz``."""
        status, body = self.get("/readyz")
        if status not in (200, 503) or not body.startswith("{"):
            return {}
        return {b["address"]: b["state"] for b in json.loads(body)["backends"]}

    @property
    def output(self) -> str:
        return self.log_path.read_text(errors="replace")


@dataclass
class Fleet:
    """N simulated hosts, a DNS server on the bridge, and a gateway that follows it.

    Args:
        directory: where logs and the DNS hosts file go.
        cpu: each host's CPU cap, in cores.
        worker_args: extra flags of every worker (pool, queue, drain delay...).
    """

    directory: Path
    cpu: float = 0.4
    worker_args: list[str] = field(default_factory=list)
    hosts: list[Host] = field(default_factory=list)
    published: list[Host] = field(default_factory=list)
    gateway: Gateway | None = None
    dns_proc: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        pid, serial = os.getpid(), next(_serial)
        self.tag = f"oflt-{pid}-{serial}"
        self.link_tag = f"{pid:x}x{serial}"
        self.bridge = f"oflr{self.link_tag}"
        self.subnet = ""
        self._groups: list[Path] = []

    @property
    def dns_address(self) -> str:
        return f"{self.subnet}.1"

    @property
    def target(self) -> str:
        """The gateway's backend target: this fleet's name, asked of its DNS server."""
        return f"dns://{self.dns_address}:53/{NAME}:{THRIFT_PORT}"

    # -- life cycle ------------------------------------------------------------------------

    def start(self, hosts: int) -> None:
        """Sweep leftovers, make the bridge, start DNS and ``hosts`` hosts (their workers
        started at once, all in DNS)."""
        sweep()
        self.subnet = _free_subnet()
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{self.dns_address}/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        self.start_dns()
        for _ in range(hosts):
            self.add_host(start=False)
        self._start_all(self.hosts)
        self.publish(self.hosts)

    def _start_all(self, hosts: list[Host]) -> None:
        errors: list[BaseException] = []

        def one(host: Host) -> None:
            try:
                host.start()
            except BaseException as exc:  # reported below, in the caller's thread
                errors.append(exc)

        threads = [threading.Thread(target=one, args=(h,)) for h in hosts]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]

    def add_host(self, start: bool = True) -> Host:
        """Make one more host (not in DNS yet); start its worker unless told not to."""
        i = len(self.hosts)
        host = Host(
            fleet=self,
            index=i,
            namespace=f"{self.tag}-h{i}",
            veth=f"oflv{self.link_tag}h{i}",
            cgroup=CPU_ROOT / f"{self.tag}-h{i}",
            address=f"{self.subnet}.{10 + i}",
            worker_args=self.worker_args,
        )
        self.hosts.append(host)
        host.cgroup.mkdir()
        _ip("netns", "add", host.namespace)
        _ip("link", "add", host.veth, "type", "veth", "peer", "name", "eth0", "netns",
            host.namespace)  # fmt: skip
        _ip("link", "set", host.veth, "master", self.bridge, "up")
        _ip("-n", host.namespace, "addr", "add", f"{host.address}/24", "dev", "eth0")
        _ip("-n", host.namespace, "link", "set", "eth0", "up")
        _ip("-n", host.namespace, "link", "set", "lo", "up")
        if start:
            host.start()
        return host

    def _group(self, name: str) -> Path:
        group = CPU_ROOT / f"{self.tag}-{name}"
        group.mkdir(exist_ok=True)
        if group not in self._groups:
            self._groups.append(group)
        return group

    def start_gateway(self, port: int, *args: str) -> Gateway:
        """Start ``offloop gateway`` on 127.0.0.1:``port`` following this fleet's DNS name;
        returns once its ``/readyz`` answers 200 (a backend is up)."""
        group = self._group("gw")
        log_path = self.directory / f"{self.tag}-gateway.log"
        cmd = [sys.executable, "-m", "offloop.cli", "gateway", "--idl", IDL,
               "--backend", self.target, "--host", "127.0.0.1", "--port", str(port),
               *args]  # fmt: skip
        script = f'echo $$ > "{group}/cgroup.procs" && exec "$@"'
        with open(log_path, "wb") as out:
            proc = subprocess.Popen(
                ["sh", "-c", script, "sh", *cmd], stdout=out, stderr=subprocess.STDOUT,
                env=_env(),
            )  # fmt: skip
        gateway = Gateway(log_path, port, proc)
        self.gateway = gateway

        def ready() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"gateway exited at start:\n{gateway.output}")
            return gateway.get("/readyz")[0] == 200

        wait_for(ready, START_TIMEOUT, 0.05)
        return gateway

    def close(self) -> None:
        """Remove everything this fleet made, in any state."""
        for group in reversed(self._groups):
            _kill_group(group)
        for host in self.hosts:
            host.close()
        if self.dns_proc is not None:
            self.dns_proc.kill()
            self.dns_proc.wait(WAIT)
        _ip("link", "del", self.bridge, check=False)

    # -- DNS -------------------------------------------------------------------------------

    @property
    def hosts_file(self) -> Path:
        return self.directory / f"{self.tag}.hosts"

    def start_dns(self) -> None:
        """Start dnsmasq on the bridge address, port 53, serving the current records."""
        assert DNSMASQ is not None
        if not self.hosts_file.exists():
            self.hosts_file.write_text("")
        group = self._group("dns")
        args = [DNSMASQ, "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv",
                "--no-hosts", "--no-poll", f"--listen-address={self.dns_address}",
                "--bind-interfaces", "--port=53", f"--addn-hosts={self.hosts_file}",
                "--local-ttl=1", "--local=/test/", "--pid-file=", "--user=root",
                "--group=root"]  # fmt: skip
        script = f'echo $$ > "{group}/cgroup.procs" && exec "$@"'
        self.dns_proc = subprocess.Popen(
            ["sh", "-c", script, "sh", *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        proc = self.dns_proc
        wait_for(lambda: proc.poll() is not None or self.lookup() is not None, WAIT)
        if proc.poll() is not None:
            raise RuntimeError(f"dnsmasq exited at start ({proc.returncode})")

    def stop_dns(self) -> None:
        """Stop the DNS server: lookups time out (nothing listens on port 53)."""
        assert self.dns_proc is not None
        self.dns_proc.terminate()
        self.dns_proc.wait(WAIT)
        self.dns_proc = None

    def publish(self, hosts: Iterable[Host]) -> None:
        """Serve one A record per host of ``hosts`` from now on; returns once DNS does."""
        self.published = sorted(set(hosts), key=lambda h: h.index)
        want = sorted(h.address for h in self.published)
        lines = [f"{h.address} {NAME}" for h in self.published]
        self.hosts_file.write_text("\n".join(lines) + "\n")
        assert self.dns_proc is not None
        self.dns_proc.send_signal(signal.SIGHUP)
        wait_for(lambda: self.lookup() == want, WAIT)

    def lookup(self) -> list[str] | None:
        """The addresses DNS answers for the fleet's name; None when it does not answer."""
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = [self.dns_address]
        resolver.lifetime = 1.0
        try:
            answer = resolver.resolve(NAME, "A", raise_on_no_answer=False)
        except dns.resolver.NXDOMAIN:
            return []
        except dns.exception.DNSException:
            return None
        return sorted(r.to_text() for r in answer.rrset or ())


@contextlib.contextmanager
def fleet(directory: Path, hosts: int, **kwargs: Any) -> Iterator[Fleet]:
    """A started :class:`Fleet`, closed at the end whatever happened."""
    made = Fleet(directory, **kwargs)
    try:
        made.start(hosts)
        yield made
    finally:
        made.close()


# -- load ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    """One call of the load: which method, when (monotonic), and its HTTP status (0: no
    answer, the connection failed)."""

    method: str
    started: float
    ended: float
    status: int
    body: bytes = b""


#: Arguments of the methods the load calls.
ARGS: dict[str, dict[str, Any]] = {
    "ping": {"msg": "hello"},
    "parse": {"sentence": "the dog saw a man in the park"},
    "burn": {"millis": 50},
}


class Load:
    """Closed-loop callers through the gateway, each on a keep-alive connection of its own;
    caller ``i`` calls ``methods[i % len(methods)]``. Every call's outcome is kept.

    Args:
        port: the gateway's port on 127.0.0.1.
        methods: the methods the callers call (keys of :data:`ARGS`).
        callers: callers in all.
        timeout: each call's deadline (X-Request-Timeout), seconds.
    """

    def __init__(self, port: int, methods: list[str], callers: int, timeout: float = 10) -> None:
        self.port = port
        self.methods = methods
        self.callers = callers
        self.timeout = timeout
        self.calls: list[Call] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._caller, args=(methods[i % len(methods)],), daemon=True)
            for i in range(callers)
        ]

    def callers_of(self, method: str) -> int:
        return sum(1 for i in range(self.callers) if self.methods[i % len(self.methods)] == method)

    def _caller(self, method: str) -> None:
        body = json.dumps(ARGS[method]).encode()
        headers = {"content-type": "application/json", "x-request-timeout": str(self.timeout)}
        conn: http.client.HTTPConnection | None = None
        while not self._stop.is_set():
            started = time.monotonic()
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout + 5)
            try:
                conn.request("POST", f"/rpc/TextLab/{method}", body, headers)
                resp = conn.getresponse()
                reply = resp.read()
                status = resp.status
                if resp.will_close:
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException) as exc:
                reply, status = str(exc).encode(), 0
                if conn is not None:
                    conn.close()
                conn = None
            with self._lock:
                self.calls.append(Call(method, started, time.monotonic(), status, reply))
        if conn is not None:
            conn.close()

    def start(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> list[Call]:
        self._stop.set()
        for t in self._threads:
            t.join(self.timeout + 10)
        return self.snapshot()

    def snapshot(self) -> list[Call]:
        with self._lock:
            return list(self.calls)

    def ok(self) -> int:
        return sum(1 for c in self.snapshot() if c.status == 200)

    def failed(self) -> list[Call]:
        return [c for c in self.snapshot() if c.status != 200]

    def wait_ok(self, more: int, timeout: float = WAIT) -> None:
        """Wait until ``more`` calls more than now have succeeded."""
        target = self.ok() + more
        wait_for(lambda: self.ok() >= target, timeout)
