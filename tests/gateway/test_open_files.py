"""Idle clients cannot take the descriptors the gateway needs (issue 11, item 8): an
``offloop gateway`` subprocess under a small open-files limit, more idle connections than
that limit, and the gateway still answers, calls its backend and keeps probing it.

Before, with the limit at 1,024, 1,100 idle connections made 300 of 303 health probes fail and
the gateway marked its healthy backend down: its own probes could not open a socket."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from gateway_stack import IDL
from harness import running_worker, worker_config
from net import free_port
from waiting import wait_until

#: The gateway's open-files limit (soft and hard), and the descriptors it keeps for itself.
OPEN_FILES = 256
RESERVE = 64
#: Idle connections opened against it: more than it may have open at all.
IDLE = 2 * OPEN_FILES
START_TIMEOUT = 30.0

# Sets its own open-files limit, then becomes ``offloop gateway`` with the arguments given.
_LIMITED = (
    "import os, resource, sys\n"
    "resource.setrlimit(resource.RLIMIT_NOFILE, ({n}, {n}))\n"
    "os.execv(sys.executable, [sys.executable, '-m', 'offloop.cli', *sys.argv[1:]])\n"
)


@contextlib.contextmanager
def gateway_process(log: Path, server: str, backend: int, *extra: str) -> Iterator[httpx.Client]:
    """``offloop gateway`` in front of ``backend``, limited to OPEN_FILES descriptors; a client
    of it. Killed at the end."""
    port = free_port()
    cmd = [
        sys.executable,
        "-c",
        _LIMITED.format(n=OPEN_FILES),
        "gateway",
        "--idl",
        IDL,
        "--backend",
        f"127.0.0.1:{backend}",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--server",
        server,
        "--health-probe-max",
        "0.1",
        *extra,
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    # A new connection per request, as health checkers make: a kept-alive one is idle between
    # requests, and idle connections are what the gateway closes first at its cap.
    fresh = httpx.Limits(max_keepalive_connections=0)
    try:
        with httpx.Client(
            base_url=f"http://127.0.0.1:{port}", trust_env=False, limits=fresh
        ) as client:

            def ready() -> bool:
                if proc.poll() is not None:
                    pytest.fail(f"gateway exited with {proc.returncode}:\n{log.read_text()}")
                try:
                    return client.get("/readyz").status_code == 200
                except httpx.TransportError:
                    return False

            wait_until(ready, timeout=START_TIMEOUT, interval=0.05)
            yield client
    finally:
        proc.kill()
        proc.wait(10)


@pytest.mark.parametrize("server", ["uvicorn", "tornado"])
def test_idle_clients_do_not_starve_the_backends(server: str, tmp_path: Path) -> None:
    log = tmp_path / "gateway.log"
    with (
        running_worker(worker_config("thread")) as worker,
        gateway_process(log, server, worker.port, "--fd-reserve", str(RESERVE)) as client,
        contextlib.ExitStack() as sockets,
    ):
        address = ("127.0.0.1", client.base_url.port or 0)
        for _ in range(IDLE):
            sockets.enter_context(socket.create_connection(address, timeout=10))
        # With all of them open, the gateway answers, calls its backend, and still finds it
        # up; each new connection makes room by closing an idle one. The pauses only let the
        # gateway probe its backend a few times (every 0.1 s) meanwhile.
        for _ in range(10):
            assert client.get("/healthz").status_code == 200
            r = client.post("/rpc/TextLab/ping", json={"msg": "still here"})
            assert r.status_code == 200, r.text
            ready = client.get("/readyz")
            assert ready.status_code == 200, ready.text
            time.sleep(0.1)
    text = log.read_text()
    assert f"at most {OPEN_FILES - RESERVE} client connections" in text, text
    assert "Too many open files" not in text, text
