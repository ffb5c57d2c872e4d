"""``offloop up``: the embedded demo. A process-pool textlab worker and a gateway in front.

The worker runs as a child process (``offloop worker``), as it would on its own host; the
gateway runs here. On Ctrl-C the gateway drains, then the worker gets SIGTERM and finishes its
calls, and is waited for (killed if it overstays its grace period).
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import logging
import signal
import socket
import subprocess
import sys
import time

__all__ = ["run_demo"]

log = logging.getLogger("offloop.demo")

#: prctl option: the signal a process gets when its parent dies (linux/prctl.h).
_PR_SET_PDEATHSIG = 1

#: Seconds the worker may take to start its pool (imports NLTK and numpy in each child).
WORKER_START_TIMEOUT = 60.0


def _wait_for_port(host: str, port: int, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the worker exited with status {proc.returncode} at start")
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"the worker did not listen on {host}:{port} within {timeout:.0f} s")


def _die_with_parent() -> None:
    """In the worker, before exec: get SIGTERM when ``offloop up`` dies, however it dies
    (a second Ctrl-C exits it at once, skipping its clean-up)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: the clean-up path still stops the worker
        pass


def run_demo(ns: argparse.Namespace) -> int:
    """Start the worker, then serve the gateway until Ctrl-C; returns the exit status."""
    from offloop.cli import _install_uvloop, build_gateway, gateway_config, serve_gateway
    from offloop.demo.textlab import IDL_PATH

    ns.idl = str(IDL_PATH)
    ns.service = []
    worker_cmd = [
        sys.executable, "-m", "offloop.cli", "--log-level", ns.log_level, "worker",
        "--idl", str(IDL_PATH), "--service", "TextLab",
        "--handler", "offloop.demo.textlab:Handler", "--pool", "process",
        "--workers", str(ns.workers), "--host", "127.0.0.1", "--port", str(ns.worker_port),
        "--grace", str(ns.grace),
    ]  # fmt: skip
    # Its own session: a terminal's Ctrl-C reaches only us, and we stop the worker once.
    worker = subprocess.Popen(worker_cmd, start_new_session=True, preexec_fn=_die_with_parent)
    try:
        _wait_for_port("127.0.0.1", ns.worker_port, worker, WORKER_START_TIMEOUT)
        gateway = build_gateway(gateway_config(ns, [f"127.0.0.1:{ns.worker_port}"]))
        url = f"http://{ns.host}:{ns.port}"
        print(
            f"\noffloop demo is up: textlab worker on 127.0.0.1:{ns.worker_port}, "
            f"gateway on {url}\n"
            f"  docs:     {url}/docs\n"
            f"  openapi:  {url}/openapi.json\n"
            f"  metrics:  {url}/metrics\n"
            f"  try:      curl -X POST {url}/rpc/TextLab/parse "
            f"-H 'content-type: application/json' "
            f'-d \'{{"sentence": "the dog saw a man in the park"}}\'\n'
            f"Ctrl-C stops everything.\n",
            flush=True,
        )
        _install_uvloop()
        asyncio.run(serve_gateway(gateway))
    finally:
        if worker.poll() is None:
            worker.terminate()
            try:
                worker.wait(ns.grace + 5)
            except (subprocess.TimeoutExpired, KeyboardInterrupt):  # overstayed, or Ctrl-C again
                worker.kill()
                worker.wait()
    return 0
