"""A backend that answers "shutting down" drains: no new call goes to it, its calls in flight
finish, then it is down until its next incarnation accepts. Real workers on 127.0.0.1, in
both modes; calls are held in flight with a gate, nothing is timed."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import faulty
import pytest
from gates import Gate
from harness import ServerThread, calls_answered, worker_config
from waiting import wait_until_async

from offloop.client.actors import ActorCaller
from offloop.client.balancer import HealthConfig
from offloop.client.caller import AsyncCaller, Caller
from offloop.idl import load_idl, service_info

#: Bounds a wait for a state (a hang), not a claim about speed.
WAIT = 20.0
FAST_HEALTH = HealthConfig(probe_min=0.01, probe_max=0.2, connect_timeout=1.0)
SERVICE = service_info(load_idl(faulty.IDL), "TextLab")


async def ping(caller: Caller, msg: str) -> Any:
    method = SERVICE.methods["ping"]
    return await caller.call(
        "TextLab", method, method.args_cls(msg=msg), timeout=WAIT, idempotent=False
    )


def states(caller: Caller) -> dict[str, str]:
    return {s.address: s.state for s in caller.backend_states()}


@pytest.mark.parametrize("kind", ["loop", "actor"])
def test_a_backend_shutting_down_drains_without_a_failed_call_and_comes_back(
    tmp_path: Path, kind: str
) -> None:
    config = worker_config("thread", workers=8, call_timeout=30.0, grace=30.0)
    a = ServerThread(config).start()
    b = ServerThread(config).start()
    a_again: ServerThread | None = None
    try:
        addr_a, addr_b = f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"
        backends = {"TextLab": (("127.0.0.1", a.port), ("127.0.0.1", b.port))}
        caller: Caller = (
            ActorCaller(backends, actors=32, mailbox=8, health=FAST_HEALTH)
            if kind == "actor"
            else AsyncCaller(backends, health=FAST_HEALTH)
        )

        async def main() -> None:
            nonlocal a_again
            await caller.start()
            try:
                gate = Gate(tmp_path)
                with gate:
                    held = [asyncio.ensure_future(ping(caller, gate.message)) for _ in range(8)]
                    await wait_until_async(lambda: a.stats().busy > 0, WAIT)
                    shutdown = a.begin_shutdown(grace=30.0)
                    # Calls keep coming: those that reach A are refused unrun and retried on B.
                    n = 0
                    while states(caller)[addr_a] == "up":
                        assert await ping(caller, f"m{n}") == f"m{n}"
                        n += 1
                        assert n < 10_000
                    # Loop mode's open connections carry the "shutting down" answer: draining.
                    # An actor whose connection is not open yet is refused its connect by a
                    # worker that stopped accepting, and takes A down: also out of rotation.
                    assert states(caller)[addr_a] in (
                        ("draining",) if kind == "loop" else ("draining", "down")
                    )
                    before = calls_answered(a.server, "ping")
                    assert [await ping(caller, f"x{i}") for i in range(20)] == [
                        f"x{i}" for i in range(20)
                    ]
                    assert calls_answered(a.server, "ping") == before  # none went to A
                    assert not any(f.done() for f in held)
                    gate.open()
                    assert await asyncio.gather(*held) == ["opened"] * 8  # none failed
                await asyncio.wrap_future(shutdown)
                await wait_until_async(lambda: states(caller)[addr_a] == "down", WAIT)
                assert states(caller)[addr_b] == "up"
                # Its next incarnation, on the same port, is up again.
                a_again = ServerThread(
                    worker_config("thread", workers=2, port=a.port, call_timeout=30.0)
                ).start()
                await wait_until_async(lambda: states(caller)[addr_a] == "up", WAIT)
                while not calls_answered(a_again.server, "ping"):
                    assert await ping(caller, "back") == "back"
            finally:
                await caller.close()

        asyncio.run(main())
    finally:
        for worker in (a, b, a_again):
            if worker is not None:
                worker.stop(grace=0.0)
