"""Issue 14's scenarios on simulated hosts (tests/support/fleet.py): workers in network
namespaces of 0.4 CPU each, found by the gateway through dnsmasq.

Conditions, never timings: the figures (throughput ratios, time to first call, ...) are the
bench scenario ``fleet``'s. One fleet per module; each test starts from its steady state
(every host running, linked and in DNS, every backend up) and waits for what it checks with a
bound that only catches a hang.

The short form (``make test``) starts 2 hosts (3 once scale-up added one) and runs brief
loads; ``OFFLOOP_FLEET_LONG=1 .venv/bin/pytest -m fleet`` runs the long form (4 hosts, the
DNS server away for 10 s, ten times the calls).
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fleet import Fleet, Gateway, Host, Load, fleet, missing, wait_for
from net import free_port

#: The long form: more hosts, longer loads, a 10 s DNS outage.
LONG = os.environ.get("OFFLOOP_FLEET_LONG", "") not in ("", "0")
#: Hosts at the start.
HOSTS = 4 if LONG else 2
#: Bounds a wait for the gateway to see a change (a hang, not a claim about speed).
SEE = 30.0
#: Every worker: one process-pool worker (the host has 0.4 CPU), a queue deep enough for
#: every caller, and a drain delay longer than DNS's TTL (1 s) and the gateway's re-resolution.
WORKER_ARGS = ["--pool", "process", "--workers", "1", "--max-queued", "64",
               "--drain-delay", "2", "--grace", "10"]  # fmt: skip
#: The gateway: ping may be retried on another host; calls' deadline bounds a lost host's.
GATEWAY_ARGS = ["--idempotent", "TextLab.ping", "--timeout", "10", "--drain-delay", "0"]

#: Why the fleet cannot be made here (the tests skip), or None.
MISSING = missing()

pytestmark = [pytest.mark.fleet, pytest.mark.skipif(MISSING is not None, reason=MISSING or "")]


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Fleet, Gateway]]:
    """The module's fleet: HOSTS hosts in DNS and one spare, running but not in DNS (for
    scale-up; started with the others, as starting is most of what a host costs here)."""
    directory: Path = tmp_path_factory.mktemp("fleet")
    with fleet(directory, HOSTS + 1, worker_args=WORKER_ARGS) as fl:
        fl.publish(core(fl))
        gateway = fl.start_gateway(free_port(), *GATEWAY_ARGS)
        wait_for(lambda: all_up(fl, gateway), SEE)
        yield fl, gateway


def core(fl: Fleet) -> list[Host]:
    """The hosts in DNS in the steady state (all but the spare)."""
    return fl.hosts[:HOSTS]


def all_up(fl: Fleet, gateway: Gateway) -> bool:
    """Whether the gateway has exactly the published hosts, every one up."""
    want = {h.backend: "up" for h in fl.published}
    return gateway.backends() == want


@pytest.fixture
def steady(made: tuple[Fleet, Gateway]) -> tuple[Fleet, Gateway]:
    """The module's fleet, every host running and linked, the core hosts in DNS and up in
    the gateway."""
    fl, gateway = made
    if fl.dns_proc is None:
        fl.start_dns()
    for host in fl.hosts:
        host.mend()
        if host.proc is None or host.proc.poll() is not None:
            host.start()
    fl.publish(core(fl))
    wait_for(lambda: all_up(fl, gateway), SEE)
    return fl, gateway


#: Calls each check lets succeed under load before and after what it does.
CALLS = 400 if LONG else 40
#: Bounds the wait for a lost host to be out: over six health intervals (probe_max 1 s and
#: a connect timeout of 0.5 s), a hang rather than a slow probe.
OUT = 10.0
#: Seconds the DNS server is away.
DNS_OUTAGE = 10.0 if LONG else 2.0


def test_calls_reach_every_host(steady: tuple[Fleet, Gateway]) -> None:
    """Scale-out: burn(50) through one gateway reaches every host (the bench measures how
    much throughput each host adds)."""
    fl, gateway = steady
    hosts = core(fl)
    before = [h.calls("burn") for h in hosts]
    load = Load(gateway.port, ["burn"], callers=3 * len(hosts)).start()
    try:
        wait_for(lambda: all(h.calls("burn") > b for h, b in zip(hosts, before, strict=True)), SEE)
        load.wait_ok(CALLS // 4)
    finally:
        calls = load.stop()
    assert [c for c in calls if c.status != 200] == []


def test_host_added_to_dns_gets_calls(steady: tuple[Fleet, Gateway]) -> None:
    """Scale-up live: a host added to DNS while load runs gets calls (within TTL + 1 s: the
    bench measures it)."""
    fl, gateway = steady
    spare = fl.hosts[HOSTS]
    served = spare.calls()
    load = Load(gateway.port, ["ping", "parse"], callers=6).start()
    try:
        load.wait_ok(CALLS // 4)
        assert spare.calls() == served  # not in DNS: no call reaches it
        fl.publish([*core(fl), spare])
        wait_for(lambda: spare.calls() > served, SEE)
        assert all_up(fl, gateway)
        load.wait_ok(CALLS // 4)
    finally:
        calls = load.stop()
        fl.publish(core(fl))
    assert [c for c in calls if c.status != 200] == []


def test_rolling_restart_fails_no_call(steady: tuple[Fleet, Gateway]) -> None:
    """Rolling restart: each host in turn leaves DNS and gets SIGTERM (as a pod leaves its
    endpoints), exits 0 after draining, starts again and returns to DNS, under steady ping
    and parse: zero failed calls, and the restarted host serves again."""
    fl, gateway = steady
    load = Load(gateway.port, ["ping", "parse"], callers=8).start()
    try:
        load.wait_ok(CALLS // 4)
        for host in core(fl):
            fl.publish(h for h in core(fl) if h is not host)
            assert host.stop() == 0, host.log_path.read_text()
            load.wait_ok(CALLS // 8)  # the others carry the load alone
            host.start()
            fl.publish(core(fl))
            wait_for(lambda host=host: host.calls() > 0, SEE)
        load.wait_ok(CALLS // 4)
    finally:
        calls = load.stop()
    failed = [c for c in calls if c.status != 200]
    assert failed == [], failed[:5]


def test_lost_host_fails_only_calls_in_flight(steady: tuple[Fleet, Gateway]) -> None:
    """Host lost: its link cut mid-load. Only calls that were on their way to it fail (no more
    than the callers, each having one call at a time, none of ping, which is idempotent and
    retried elsewhere, and none started after the gateway marked it down); it is marked down,
    the others carry the load, and once the link returns it is up and gets calls again."""
    fl, gateway = steady
    lost = fl.hosts[0]
    # Deadlines well beyond the time to mark the host down (a probe period and a connect
    # timeout): its calls in flight end when it goes down, not at their deadlines.
    load = Load(gateway.port, ["ping", "parse"], callers=8, timeout=10).start()
    try:
        load.wait_ok(CALLS // 4)
        lost.cut()
        wait_for(lambda: gateway.backends().get(lost.backend) == "down", OUT)
        down_seen = time.monotonic()
        load.wait_ok(CALLS // 4)
        served = lost.calls()  # it answers again once the link is back
        lost.mend()
        wait_for(lambda: gateway.backends().get(lost.backend) == "up", SEE)
        wait_for(lambda: lost.calls() > served, SEE)
    finally:
        calls = load.stop()
        lost.mend()
        # A new worker: the old one's connections, stalled while the link was down, would
        # carry their backoff into the next test (its kernel resets them).
        lost.kill()
    failed = [c for c in calls if c.status != 200]
    assert len(failed) <= load.callers_of("parse"), failed
    assert [c for c in failed if c.method == "ping"] == []
    assert [c for c in failed if c.started > down_seen] == []


def test_dns_outage_fails_no_call(steady: tuple[Fleet, Gateway]) -> None:
    """DNS trouble: the DNS server gone (its port silent: queries time out) while load runs:
    the gateway keeps the hosts it knew, and no call fails."""
    fl, gateway = steady
    load = Load(gateway.port, ["ping", "parse"], callers=6).start()
    try:
        load.wait_ok(CALLS // 4)
        fl.stop_dns()
        queries = _silent_dns(fl, DNS_OUTAGE, at_least=2)
        fl.start_dns()
        assert queries >= 2
        assert all_up(fl, gateway)
        load.wait_ok(CALLS // 4)
    finally:
        calls = load.stop()
    assert [c for c in calls if c.status != 200] == []


def _silent_dns(fl: Fleet, seconds: float, at_least: int) -> int:
    """Hold the DNS port without answering for ``seconds`` and until ``at_least`` queries
    came (the gateway asked, and got no answer); returns how many came."""
    count = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((fl.dns_address, 53))
        sock.settimeout(0.1)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline or (
            count < at_least and time.monotonic() < deadline + SEE
        ):
            try:
                sock.recvfrom(4096)
                count += 1
            except TimeoutError:
                pass
    return count
