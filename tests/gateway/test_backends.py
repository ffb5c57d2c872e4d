"""The gateway and its backends: balancing, a backend killed and restarted while calls flow,
overload, and the retry of idempotent calls; real workers, over real sockets."""

from __future__ import annotations

import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import httpx
import pytest
from gateway_stack import GatewayFactory, Stack
from harness import calls_answered
from waiting import wait_until

from offloop.worker.server import WorkerServer

#: Seconds within which a dead backend is out of rotation, and a restarted one back in it
#: (the balancer probes every second; see offloop.client.balancer).
RECOVERY = 2.0


def calls_served(worker: WorkerServer, method: str = "ping") -> float:
    """Calls of ``method`` a worker answered successfully."""
    return calls_answered(worker, method, "ok")


@dataclass
class Stream:
    """Calls ``ping`` through the gateway, one after another, from a thread of its own."""

    stack: Stack
    timeout: float = 5.0
    outcomes: list[tuple[float, int | str]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Stream:
        self._thread = threading.Thread(target=self._run, name="call-stream", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(self.timeout + 1)
        assert not self._thread.is_alive(), "a call hung"

    def _run(self) -> None:
        with httpx.Client(base_url=self.stack.url, trust_env=False, timeout=self.timeout) as c:
            while not self._stop.is_set():
                started = time.monotonic()
                try:
                    status: int | str = c.post("/rpc/TextLab/ping", json={"msg": "x"}).status_code
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                self.outcomes.append((started, status))
                time.sleep(0.005)

    def since(self, moment: float) -> Counter[int | str]:
        """Statuses of the calls started at ``moment`` or later."""
        return Counter(status for started, status in list(self.outcomes) if started >= moment)

    def statuses(self) -> Counter[int | str]:
        """Statuses of every call (an exception's name for a call that got no answer)."""
        return Counter(status for _, status in list(self.outcomes))


def test_two_backends_both_receive_calls(gateway_factory: GatewayFactory) -> None:
    stack = gateway_factory(backends=2)
    for _ in range(40):
        assert stack.call("ping", {"msg": "x"}).status_code == 200
    served = [calls_served(w) for w in stack.workers]
    assert sum(served) == 40
    assert all(n > 0 for n in served), served
    r = stack.client.get("/readyz")
    assert r.status_code == 200
    assert [b["up"] for b in r.json()["backends"]] == [True, True]


def test_backend_killed_and_restarted_while_calls_flow(gateway_factory: GatewayFactory) -> None:
    stack = gateway_factory("process", backends=2, worker={"workers": 1})
    victim, survivor = stack.workers
    with Stream(stack) as stream:
        wait_until(lambda: calls_served(victim) > 0 and calls_served(survivor) > 0, 5)

        killed = time.monotonic()
        stack.stop_worker(victim)
        # Out of rotation quickly; the gateway stays ready on the other backend.
        wait_until(lambda: stack.backend_up(victim) == 0, RECOVERY)
        assert stack.client.get("/readyz").status_code == 200
        down = time.monotonic()
        before = calls_served(survivor)
        wait_until(lambda: calls_served(survivor) >= before + 20, 5)
        assert stream.since(down) and set(stream.since(down)) == {200}, stream.since(down)
        # Only calls in flight at the kill may have failed, and as the backend's fault.
        failed = {s: n for s, n in stream.since(killed).items() if s != 200}
        assert sum(failed.values()) <= 2 and set(failed) <= {502, 503}, failed

        restarted = stack.restart_worker(victim)
        back = time.monotonic()
        wait_until(lambda: calls_served(restarted) > 0, RECOVERY + 1)
        assert stack.backend_up(restarted) == 1
        wait_until(lambda: stream.since(back).total() >= 10, 5)
    assert set(stream.since(back)) == {200}, stream.since(back)
    # Nothing hung: a call held past the gateway's 2 s deadline would have got a 504, and one
    # that hung the gateway no answer within the stream's 5 s.
    assert set(stream.statuses()) <= {200, 502, 503}, stream.statuses()


def test_overload_gives_503_and_nothing_hangs(gateway_factory: GatewayFactory) -> None:
    # Two workers and no queue behind a gateway that admits four calls: of sixteen slow calls
    # at once, some run, the others are refused at once by the workers or the gateway.
    stack = gateway_factory(worker={"workers": 2, "max_queued": 0}, max_inflight=4)
    start = threading.Barrier(16)

    def slow(_: int) -> tuple[int, float, str | None]:
        with httpx.Client(base_url=stack.url, trust_env=False, timeout=5.0) as client:
            start.wait(5)
            r = client.post("/rpc/TextLab/sleep", json={"millis": 400})
            ended = time.monotonic()
        return r.status_code, ended, r.headers.get("retry-after")

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(slow, range(16)))
    statuses = Counter(status for status, _, _ in results)
    assert set(statuses) <= {200, 503}, statuses
    assert 2 <= statuses[200] <= 4 and statuses[503] >= 12, statuses
    for status, _, retry_after in results:
        if status == 503:
            assert retry_after == "1"
    # Nothing waited for a slot: every refusal was answered before any admitted call ended.
    refused = max(ended for status, ended, _ in results if status == 503)
    served = min(ended for status, ended, _ in results if status == 200)
    assert refused < served, results
    wait_until(lambda: stack.inflight() == 0, 2)
    assert stack.call("ping", {"msg": "x"}).status_code == 200


def _running_on(stack: Stack) -> WorkerServer:
    """The worker whose pool runs a call now."""

    def busy() -> WorkerServer | None:
        for worker in stack.workers:
            if worker.pool.stats().busy:
                return worker
        return None

    return wait_until(busy, 2)


@pytest.mark.parametrize("idempotent", [True, False])
def test_broken_connection_retries_only_idempotent_calls(
    gateway_factory: GatewayFactory, idempotent: bool
) -> None:
    names = frozenset({"TextLab.sleep"}) if idempotent else frozenset()
    stack = gateway_factory(backends=2, idempotent=names)
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(stack.call, "sleep", {"millis": 600})
        worker = _running_on(stack)
        stack.stop_worker(worker)  # its connection breaks with the call in flight
        r = future.result(5)
    if idempotent:
        # Sent again, to the other backend, within the call's 2 s deadline (else 504).
        assert r.status_code == 200, r.text
    else:
        assert r.status_code == 502, r.text  # it may have run: not sent again
    (other,) = stack.workers
    assert calls_served(other, "sleep") == (1 if idempotent else 0)
