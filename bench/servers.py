"""Server specs for what the scenarios measure: offloop workers and gateways, and baselines.

offloop servers run as users run them, ``python -m offloop.cli worker|gateway ...``, with a
one-second drain so that stopping them is quick. Baselines are the scripts of
``bench/baselines/``. The single-figure benches (``bench.cancellation``,
``bench.header_overhead``) start their servers with :func:`running` and :func:`wait_ready`.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
import urllib.request
from collections.abc import Iterator, Sequence

from bench.common import BASELINES, PY, ServerSpec

IDL = "src/offloop/demo/textlab.thrift"
"""The demo IDL, relative to the repository root (servers start there)."""

HANDLER = "offloop.demo.textlab:Handler"

SINGLE_BLAS_THREAD = {
    "OPENBLAS_NUM_THREADS": "1",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}
"""One BLAS thread per call, so that ``crunch`` uses one core per call and the pool size,
not BLAS, decides how many cores work."""


def worker(
    name: str,
    *,
    pool: str = "process",
    workers: int = 2,
    max_queued: int | None = None,
    extra: Sequence[str] = (),
    env: dict[str, str] | None = None,
    cpus: tuple[int, ...] | None = None,
) -> ServerSpec:
    """An ``offloop worker`` serving the TextLab demo handler."""
    cmd = [
        PY, "-m", "offloop.cli", "--log-level", "WARNING", "worker",
        "--idl", IDL, "--service", "TextLab", "--handler", HANDLER,
        "--pool", pool, "--workers", str(workers), "--port", "{port}", "--grace", "1",
    ]  # fmt: skip
    if max_queued is not None:
        cmd += ["--max-queued", str(max_queued)]
    cmd += list(extra)
    return ServerSpec(name, cmd, env={**SINGLE_BLAS_THREAD, **(env or {})}, cpus=cpus)


def gateway(
    name: str,
    backend_port: int,
    *,
    mode: str = "loop",
    server: str = "uvicorn",
    extra: Sequence[str] = (),
    cpus: tuple[int, ...] | None = None,
) -> ServerSpec:
    """An ``offloop gateway`` in front of the worker on ``backend_port``; ready once
    ``/readyz`` says its backend is reachable."""
    cmd = [
        PY, "-m", "offloop.cli", "--log-level", "WARNING", "gateway",
        "--idl", IDL, "--backend", f"127.0.0.1:{backend_port}",
        "--port", "{port}", "--mode", mode, "--server", server, "--grace", "1",
    ]  # fmt: skip
    return ServerSpec(name, [*cmd, *extra], ready_path="/readyz", cpus=cpus, timeout=60.0)


def baseline(
    name: str,
    script: str,
    *args: str,
    cpus: tuple[int, ...] | None = None,
    ready_path: str | None = "/healthz",
) -> ServerSpec:
    """A script of ``bench/baselines/`` (``--port`` is added)."""
    cmd = [PY, str(BASELINES / script), "--port", "{port}", *args]
    return ServerSpec(name, cmd, ready_path=ready_path, cpus=cpus, env=dict(SINGLE_BLAS_THREAD))


def rpc_body(**args: object) -> bytes:
    """The JSON body of a TextLab call."""
    return json.dumps(args, separators=(",", ":")).encode()


PARSE_SENTENCE = "the old man saw a dog in the park with a telescope near the house"
"""A 15-word sentence with prepositional-phrase ambiguity: tens of ms of chart parsing."""


# -- one-off servers of the single-figure benches (bench.cancellation, bench.header_overhead) --


def wait_ready(
    port: int, path: str, timeout: float = 120.0, proc: subprocess.Popen[bytes] | None = None
) -> None:
    """Wait until ``GET path`` on 127.0.0.1:``port`` answers 200.

    Raises:
        RuntimeError: not within ``timeout`` seconds, or ``proc`` (the server) exited.
    """
    end = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the server for port {port} exited with status {proc.returncode}")
        url = f"http://127.0.0.1:{port}{path}"
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as resp:
            if resp.status == 200:
                return
        if time.monotonic() > end:
            raise RuntimeError(f"nothing ready on port {port}{path} after {timeout:g} s")
        time.sleep(0.1)


@contextlib.contextmanager
def running(cmd: Sequence[str], stop_timeout: float = 30.0) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``cmd`` (an ``offloop`` command, say) for the ``with`` block; then SIGTERM it, and
    SIGKILL it if it has not exited within ``stop_timeout`` seconds."""
    proc = subprocess.Popen(list(cmd))
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(stop_timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
