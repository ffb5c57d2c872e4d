"""Soak: many concurrent calls through the whole stack, a mix of outcomes, faults injected.

Marked ``slow``; ``make test`` runs it in its short form (OFFLOOP_SOAK_CALLS, default 400
calls); a real soak run sets a large count, e.g. ``OFFLOOP_SOAK_CALLS=50000 pytest -m slow``.
Every call must get the answer its kind calls for, nothing may be left in flight, and the
gateway's loop must not stall (the suite's watchdog check).
"""

from __future__ import annotations

import multiprocessing
import os
import random
from concurrent.futures import ProcessPoolExecutor

import pytest
from gateway_stack import GatewayFactory
from soak_client import run_calls
from waiting import wait_until

pytestmark = pytest.mark.slow

CALLS = int(os.environ.get("OFFLOOP_SOAK_CALLS", "400"))
CLIENT_PROCESSES = 4
"""Client processes, each with one keep-alive connection, so that calls overlap."""

# method, body -> the statuses it may get; overloaded (503) is always a fair answer.
KINDS: list[tuple[str, dict[str, object], set[int]]] = [
    ("ping", {"msg": "soak"}, {200}),
    ("burn", {"millis": 2}, {200}),
    ("parse", {"sentence": "the dog saw a man in the park"}, {422}),  # faulty: ParseError
    ("ping", {"msg": "raise"}, {502}),
    ("ping", {"msg": 42}, {400}),
    ("ping", {"msg": "crash"}, {502}),  # kills a pool child; the pool replaces it
]


@pytest.mark.parametrize("server", ["uvicorn"], indirect=True)
def test_soak_mixed_calls_with_faults(gateway_factory: GatewayFactory) -> None:
    stack = gateway_factory("process", worker={"workers": 2, "max_queued": 64})
    rng = random.Random(7)
    plan = [rng.choice(KINDS) for _ in range(CALLS)]
    expected = {(m, json_key(b)): ok | {503} for m, b, ok in KINDS}
    shares = [plan[i::CLIENT_PROCESSES] for i in range(CLIENT_PROCESSES)]
    with ProcessPoolExecutor(
        CLIENT_PROCESSES, mp_context=multiprocessing.get_context("forkserver")
    ) as ex:
        futures = [ex.submit(run_calls, stack.url, [(m, b) for m, b, _ in s]) for s in shares]
        answers = [f.result(timeout=120) for f in futures]
    wrong = []
    for share, got in zip(shares, answers, strict=True):
        for (method, body, _), (_, status) in zip(share, got, strict=True):
            if status not in expected[(method, json_key(body))]:
                wrong.append((method, body, status))
    assert not wrong, f"{len(wrong)} unexpected answers, e.g. {wrong[:5]}"
    ok = sum(1 for got in answers for _, status in got if status == 200)
    assert ok > CALLS // 10, f"only {ok} of {CALLS} calls succeeded"
    wait_until(lambda: stack.inflight() == 0, 10)
    assert stack.client.get("/readyz").status_code == 200


def json_key(body: dict[str, object]) -> str:
    return repr(sorted(body.items()))
