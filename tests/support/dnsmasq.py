"""dnsmasq as a test's DNS server: on 127.0.0.1 (a free port), answering for ``*.test`` from a
hosts file it reloads on SIGHUP, with TTLs of 1 s; started and stopped by the test.

dnsmasq rather than bind9: a hosts file and a signal is all a record change takes (no zone,
no key, no RFC 2136 update to get right), it starts in milliseconds, and it behaves as
Docker's and a cluster's DNS do at this level (records of a short TTL that come and go).
Tests that need it skip with :data:`MISSING` where it is not installed (``.ci/run`` installs
it).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

import dns.exception
import dns.resolver
from net import free_port
from waiting import wait_until

__all__ = ["DNSMASQ", "MISSING", "DnsServer"]

#: The dnsmasq binary (sbin may not be on a user's PATH), or None.
DNSMASQ = shutil.which("dnsmasq") or (
    "/usr/sbin/dnsmasq" if os.path.exists("/usr/sbin/dnsmasq") else None
)
#: Why DNS tests skip without it.
MISSING = "dnsmasq is not installed (apt-get install -y dnsmasq; .ci/run does)"
#: Bounds a wait for the server to answer as told (a hang), not a claim about speed.
WAIT = 20.0


class DnsServer:
    """dnsmasq on 127.0.0.1:``port`` answering for ``*.test`` from a hosts file."""

    def __init__(self, directory: Path, srv: list[tuple[str, str, int]] | None = None) -> None:
        self.port = free_port()
        self.hosts = directory / "hosts"
        self.hosts.write_text("")
        self.srv = srv or []
        self.served: set[str] = set()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        assert DNSMASQ is not None
        args = [
            DNSMASQ,
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--no-poll",
            "--listen-address=127.0.0.1",
            "--bind-interfaces",
            f"--port={self.port}",
            f"--addn-hosts={self.hosts}",
            "--local-ttl=1",
            "--local=/test/",
            "--pid-file=",
            "--log-facility=-",
        ]
        if os.geteuid() == 0:
            args += ["--user=root", "--group=root"]
        args += [f"--srv-host={name},{host},{port}" for name, host, port in self.srv]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        proc = self.proc
        wait_until(lambda: proc.poll() is not None or self.lookup("nothing.test") is not None, WAIT)
        assert proc.poll() is None, f"dnsmasq exited at start ({proc.returncode})"

    def set(self, records: dict[str, list[str]]) -> None:
        """Serve ``records`` (name -> addresses) from now on; returns once it answers so."""
        lines = [f"{ip} {name}" for name, ips in records.items() for ip in ips]
        self.hosts.write_text("\n".join(lines) + "\n")
        assert self.proc is not None
        self.proc.send_signal(signal.SIGHUP)
        for name, ips in records.items():
            wait_until(lambda name=name, ips=ips: self.lookup(name) == sorted(ips), WAIT)
        for name in self.served - set(records):
            wait_until(lambda name=name: self.lookup(name) == [], WAIT)
        self.served = set(records)

    def lookup(self, name: str) -> list[str] | None:
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = ["127.0.0.1"]
        resolver.port = self.port
        resolver.lifetime = 1.0
        try:
            answer = resolver.resolve(name, "A", raise_on_no_answer=False)
        except dns.resolver.NXDOMAIN:
            return []
        except dns.exception.DNSException:
            return None
        return sorted(r.to_text() for r in answer.rrset or ())

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None
