"""``offloop worker`` and ``offloop gateway`` as real subprocesses, to signal them and watch
them drain (tests/app: the ``spawn`` fixture).

Each process gets ``tests/support`` on its ``PYTHONPATH`` (the worker's pool imports
``faulty:Handler``), free ports on 127.0.0.1, its output in a file of the test's
``tmp_path``, and is killed at the end of its test, whatever happened.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from harness import SUPPORT_DIR
from waiting import wait_until

#: Seconds a subprocess may take to start serving (imports, a pool's children).
START_TIMEOUT = 60.0


class OffloopProcess:
    """One ``offloop`` command as a subprocess.

    Args:
        log_path: where its stdout and stderr go.
        args: the command and its flags (``["worker", "--idl", ...]``).
        probe_port: the HTTP port whose ``/readyz`` says it has started.
    """

    def __init__(self, log_path: Path, args: list[str], probe_port: int) -> None:
        self.log_path = log_path
        self.probe_port = probe_port
        env = {k: v for k, v in os.environ.items() if not k.startswith("OFFLOOP_")}
        env["PYTHONPATH"] = os.pathsep.join(
            [str(SUPPORT_DIR), *filter(None, [env.get("PYTHONPATH")])]
        )
        env["PYTHONUNBUFFERED"] = "1"
        cmd = [sys.executable, "-m", "offloop.cli", "--log-level", "INFO", *args]
        with open(log_path, "wb") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)

    @property
    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def get(self, path: str) -> tuple[int, str]:
        """GET ``path`` on the probe port: (status, body); (0, reason) when nothing answers."""
        url = f"http://127.0.0.1:{self.probe_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=10) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as err:
            with err:
                return err.code, err.read().decode()
        except OSError as exc:
            return 0, str(exc)

    def wait_ready(self) -> None:
        """Wait until ``/readyz`` answers 200; fail with its output if it exits first."""

        def ready() -> bool:
            if self.proc.poll() is not None:
                pytest.fail(f"exited with {self.proc.returncode} at start:\n{self.output}")
            return self.get("/readyz")[0] == 200

        wait_until(ready, timeout=START_TIMEOUT, interval=0.05)

    def wait_for_log(self, text: str, timeout: float = 30) -> None:
        wait_until(lambda: text in self.output, timeout=timeout)

    def signal(self, signum: signal.Signals) -> None:
        self.proc.send_signal(signum)

    def wait_exit(self, timeout: float = 60) -> int:
        return self.proc.wait(timeout)

    @staticmethod
    def refuses(port: int) -> bool:
        """Whether nothing accepts connections on 127.0.0.1:``port`` now."""
        try:
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
        except ConnectionRefusedError:
            return True
        return False

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


Spawn = Callable[[list[str], int], OffloopProcess]
