"""Discovery against a real DNS server: dnsmasq on 127.0.0.1 (a free port), its records in a
hosts file that it reloads on SIGHUP, with TTLs of 1 s (``--local-ttl``); workers on the
loopback addresses 127.0.0.2 and 127.0.0.3, each a distinct "host".

dnsmasq rather than bind9: a hosts file and a signal is all a record change takes (no zone,
no key, no RFC 2136 update to get right), it starts in milliseconds, and it is how Docker's
and many a cluster's DNS behave at this level (records of a short TTL that come and go).
Skipped, saying why, where dnsmasq is not installed (``.ci/run`` installs it).

Nothing here is timed: each wait is for a state (a backend up, draining, gone; calls
answered by a worker), and its timeout only bounds a hang. How long a new backend took to
get its first call is printed (``-s``), for the record.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import faulty
import pytest
from dnsmasq import DNSMASQ, MISSING, DnsServer
from gates import Gate
from harness import ServerThread, calls_answered, worker_config
from net import free_port
from waiting import wait_until_async

from offloop.client.actors import THREAD_PREFIX, ActorCaller
from offloop.client.balancer import HealthConfig
from offloop.client.caller import AsyncCaller, Caller
from offloop.client.discovery import MIN_TTL, DiscoveryError, DnsResolver
from offloop.client.targets import DnsTarget
from offloop.idl import load_idl, service_info

pytestmark = pytest.mark.skipif(DNSMASQ is None, reason=MISSING)

#: Bounds a wait for a state (a hang), not a claim about speed.
WAIT = 20.0
#: Probes often, so that a backend found is connected and up at once.
FAST_HEALTH = HealthConfig(probe_min=0.01, probe_max=0.2, connect_timeout=1.0)
HOST_A, HOST_B = "127.0.0.2", "127.0.0.3"
#: Actors in all (actor mode), shared by the backends found: with two, each has enough idle
#: actors for the 20 calls sent while 4 of its actors are held.
ACTORS = 64
SERVICE = service_info(load_idl(faulty.IDL), "TextLab")


@pytest.fixture
def dns_server(tmp_path: Path) -> Iterator[DnsServer]:
    server = DnsServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def workers(*hosts: str, port: int | None = None) -> Iterator[list[ServerThread]]:
    """A thread-pool worker of the faulty handler on each host, all on one port."""
    port = port or free_port()
    started: list[ServerThread] = []
    try:
        for host in hosts:
            config = worker_config("thread", host=host, port=port, workers=8, call_timeout=30.0)
            started.append(ServerThread(config).start())
        yield started
    finally:
        for worker in started:
            worker.stop(grace=0.0)


def make_caller(kind: str, target: DnsTarget) -> Caller:
    backends = {"TextLab": (target,)}
    if kind == "actor":
        return ActorCaller(backends, actors=ACTORS, mailbox=8, health=FAST_HEALTH)
    return AsyncCaller(backends, health=FAST_HEALTH)


async def ping(caller: Caller, msg: str = "hi") -> Any:
    method = SERVICE.methods["ping"]
    return await caller.call(
        "TextLab", method, method.args_cls(msg=msg), timeout=WAIT, idempotent=False
    )


def states(caller: Caller) -> dict[str, str]:
    return {s.address: s.state for s in caller.backend_states()}


def actor_threads() -> int:
    return sum(t.name.startswith(THREAD_PREFIX) for t in threading.enumerate())


def answered(worker: ServerThread) -> float:
    return calls_answered(worker.server, "ping")


@pytest.mark.parametrize("kind", ["loop", "actor"])
def test_a_record_added_gets_calls_and_a_record_removed_drains_without_a_failed_call(
    dns_server: DnsServer, tmp_path: Path, kind: str
) -> None:
    with workers(HOST_A, HOST_B) as (a, b):
        port = a.port
        target = DnsTarget("w.test", port, ("127.0.0.1", dns_server.port))
        dns_server.set({"w.test": [HOST_A]})

        async def main() -> None:
            caller = make_caller(kind, target)
            await caller.start()
            try:
                await scenario(caller)
            finally:
                await caller.close()

        async def scenario(caller: Caller) -> None:
            addr_a, addr_b = f"{HOST_A}:{port}", f"{HOST_B}:{port}"
            await wait_until_async(lambda: states(caller) == {addr_a: "up"}, WAIT)
            assert await ping(caller) == "hi"

            # -- a record added: the new backend gets calls (under steady calls) -----------
            added = time.monotonic()
            dns_server.set({"w.test": [HOST_A, HOST_B]})
            failures: list[BaseException] = []
            while not answered(b):
                try:
                    await ping(caller)
                except Exception as exc:  # counted: there must be none
                    failures.append(exc)
                await asyncio.sleep(0)
            print(
                f"\n{kind}: new backend's first call {time.monotonic() - added:.2f} s after "
                "its record was added (TTL 1 s)"
            )
            assert failures == []
            assert states(caller) == {addr_a: "up", addr_b: "up"}

            # -- a record removed: draining, its calls in flight finish ----------------------
            gate = Gate(tmp_path, f"gate-{kind}")
            with gate:
                held = [asyncio.ensure_future(ping(caller, gate.message)) for _ in range(8)]
                await wait_until_async(lambda: b.stats().busy > 0, WAIT)
                dns_server.set({"w.test": [HOST_A]})
                await wait_until_async(lambda: states(caller).get(addr_b) == "draining", WAIT)
                before = answered(b)
                results = await asyncio.gather(*(ping(caller, f"m{i}") for i in range(20)))
                assert results == [f"m{i}" for i in range(20)]
                assert answered(b) == before  # no new call went to the draining backend
                assert not any(f.done() for f in held)  # the held calls still run
                gate.open()
                assert await asyncio.gather(*held) == ["opened"] * 8  # none failed
            await wait_until_async(lambda: addr_b not in states(caller), WAIT)  # closed
            assert states(caller) == {addr_a: "up"}
            if isinstance(caller, ActorCaller):  # B's actors stopped, their threads gone
                # ... and A has all the actors again (item 7: ACTORS is the cap, shared).
                await wait_until_async(
                    lambda: caller.actor_count == ACTORS and actor_threads() == ACTORS, WAIT
                )

        asyncio.run(main())


def test_the_dns_server_stopped_keeps_the_last_good_set_and_fails_no_call(
    dns_server: DnsServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="offloop.discovery")
    with workers(HOST_A, HOST_B) as (a, b):
        target = DnsTarget("w.test", a.port, ("127.0.0.1", dns_server.port))
        dns_server.set({"w.test": [HOST_A, HOST_B]})

        async def main() -> None:
            caller = AsyncCaller(
                {"TextLab": (target,)},
                health=FAST_HEALTH,
                resolver=lambda t: DnsResolver(t, timeout=0.5),  # fails sooner: a shorter test
            )
            await caller.start()
            try:
                await wait_until_async(
                    lambda: sorted(states(caller).values()) == ["up", "up"], WAIT
                )
                dns_server.stop()
                kept = lambda: caplog.text.count("keeping the 2 backends known")  # noqa: E731
                failures: list[BaseException] = []
                calls = 0
                while kept() < 2:  # two failed resolutions in a row
                    try:
                        await ping(caller)
                    except Exception as exc:  # counted: there must be none
                        failures.append(exc)
                    calls += 1
                    await asyncio.sleep(0.01)
                assert failures == []
                assert calls > 0
                assert sorted(states(caller).values()) == ["up", "up"]
                assert answered(a) and answered(b)
            finally:
                await caller.close()

        asyncio.run(main())


def test_srv_records_give_each_backend_its_host_and_port(tmp_path: Path) -> None:
    with workers(HOST_A) as (a,), workers(HOST_B) as (b,):
        server = DnsServer(
            tmp_path,
            srv=[
                ("_thrift._tcp.w.test", "a.w.test", a.port),
                ("_thrift._tcp.w.test", "b.w.test", b.port),
            ],
        )
        server.start()
        try:
            server.set({"a.w.test": [HOST_A], "b.w.test": [HOST_B]})
            target = DnsTarget("_thrift._tcp.w.test", None, ("127.0.0.1", server.port), srv=True)

            async def main() -> None:
                caller = AsyncCaller({"TextLab": (target,)}, health=FAST_HEALTH)
                await caller.start()
                try:
                    expected = {f"{HOST_A}:{a.port}": "up", f"{HOST_B}:{b.port}": "up"}
                    await wait_until_async(lambda: states(caller) == expected, WAIT)
                    assert {s.source for s in caller.backend_states()} == {str(target)}
                    while not (answered(a) and answered(b)):
                        assert await ping(caller) == "hi"
                finally:
                    await caller.close()

            asyncio.run(main())
        finally:
            server.stop()


def test_the_resolver_tells_an_empty_answer_from_a_failure(dns_server: DnsServer) -> None:
    dns_server.set({"w.test": [HOST_A, HOST_B]})

    async def main() -> None:
        found = DnsResolver(DnsTarget("w.test", 9090, ("127.0.0.1", dns_server.port)))
        assert await found.resolve() == ({(HOST_A, 9090), (HOST_B, 9090)}, 1.0)
        gone = DnsResolver(DnsTarget("gone.test", 9090, ("127.0.0.1", dns_server.port)))
        assert await gone.resolve() == (frozenset(), MIN_TTL)  # NXDOMAIN: an answer
        dns_server.stop()
        with pytest.raises(DiscoveryError, match=r"w\.test"):
            await DnsResolver(found.target, timeout=0.5).resolve()

    asyncio.run(main())
