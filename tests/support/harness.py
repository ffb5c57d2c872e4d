"""Test harness for the worker tier: a real WorkerServer on a loop thread, and raw clients.

- :class:`ServerThread` runs a :class:`~offloop.worker.server.WorkerServer` on an event loop of
  its own in a background thread, so that synchronous clients (thriftpy2, Apache Thrift, raw
  sockets) can call it from the test thread; :meth:`ServerThread.stop` always shuts the server,
  its pool, the loop and its executor down.
- :class:`RawClient` speaks framed Thrift over a bare socket: it can keep many calls in flight on
  one connection, send bad bytes, and tell a closed connection from a slow one.
- :func:`children_of` and :func:`forkserver_children` list live processes by parent, from
  ``/proc`` (no psutil), to check that nothing is left behind.

Child processes of a process pool import the handler as ``faulty:Handler``: this directory is
on ``sys.path`` through pytest's ``pythonpath`` setting (pyproject.toml), which multiprocessing
hands on to the children.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import os
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import faulty
from configs import override
from prometheus_client.parser import text_string_to_metric_families
from thriftpy2.rpc import make_client
from thriftpy2.transport import TFramedTransportFactory
from waiting import wait_until  # re-exported (tests/worker/test_cli.py imports it from here)

from offloop.codec.framing import FrameDecoder, encode_frame
from offloop.codec.message import EXCEPTION, Header, MessageCodec, ProtocolName
from offloop.idl import ServiceInfo, load_idl, service_info
from offloop.runtime.base import PoolStats
from offloop.worker.config import WorkerConfig
from offloop.worker.server import WorkerServer

__all__ = [
    "IDL",
    "POOLS",
    "SERVICE",
    "SUPPORT_DIR",
    "RawClient",
    "Reply",
    "ServerThread",
    "calls_answered",
    "children_of",
    "forkserver_children",
    "metric",
    "nice_of",
    "no_leftovers",
    "pid_alive",
    "running_worker",
    "textlab",
    "thrift_client",
    "wait_until",
    "worker_config",
]

T = TypeVar("T")

#: The pools every worker test runs over.
POOLS = ("thread", "process")
#: This directory: child processes and subprocesses need it on their import path.
SUPPORT_DIR = Path(__file__).resolve().parent
#: The demo IDL, by the very path the faulty handler loads it from, so that both sides share
#: one module of classes (thriftpy2 caches a parsed IDL by its path).
IDL: str = faulty.IDL
#: The loaded demo IDL module.
textlab = load_idl(IDL)
SERVICE: ServiceInfo = service_info(textlab, "TextLab")


def worker_config(pool: str, **overrides: Any) -> WorkerConfig:
    """A small, fast configuration of the faulty handler on a free port: two workers, a 2 s
    deadline, a 2 s grace, an admin port; ``overrides`` replace any field."""
    base = override(
        WorkerConfig(idl=IDL, service="TextLab", handler="faulty:Handler"),
        pool=pool,
        workers=2,
        port=0,
        call_timeout=2.0,
        grace=2.0,
        admin_port=0,
    )
    return override(base, **overrides)


class ServerThread:
    """A WorkerServer served by an event loop in a background thread.

    Args:
        config: the server's configuration (``port=0`` picks a free port).
    """

    def __init__(self, config: WorkerConfig, *, uvloop: bool = False) -> None:
        self.config = config
        if uvloop:
            import uvloop as uv

            self.loop: asyncio.AbstractEventLoop = uv.new_event_loop()
        else:
            self.loop = asyncio.new_event_loop()
        self.server = WorkerServer(config)
        self._thread = threading.Thread(target=self._main, name="test-worker-loop", daemon=True)
        self._stopped = False
        self._shutdown: concurrent.futures.Future[None] | None = None

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def admin_port(self) -> int:
        assert self.server.admin_port is not None
        return self.server.admin_port

    def start(self) -> ServerThread:
        """Start the loop thread and the server; on failure everything is stopped again."""
        self._thread.start()
        try:
            self.call(self.server.start(), timeout=60)
        except BaseException:
            self.stop()
            raise
        return self

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        """Run a coroutine on the server's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def on_loop(self, fn: Callable[[], T]) -> T:
        """Call ``fn`` on the loop thread (to read state the loop owns) and return its result."""

        async def run() -> T:
            return fn()

        return self.call(run())

    def stats(self) -> PoolStats:
        """The pool's statistics, read on the loop."""
        return self.on_loop(self.server.pool.stats)

    def begin_shutdown(self, grace: float | None = None) -> concurrent.futures.Future[None]:
        """Start a graceful shutdown and return at once; the future is done when it is."""
        assert self._shutdown is None, "shutdown already started"
        self._shutdown = asyncio.run_coroutine_threadsafe(self.server.shutdown(grace), self.loop)
        return self._shutdown

    def admin_get(self, path: str) -> tuple[int, str]:
        """GET ``path`` on the admin port: (status, body)."""
        url = f"http://127.0.0.1:{self.admin_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=10) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as err:
            with err:
                return err.code, err.read().decode()

    def metrics(self) -> str:
        """The Prometheus text of the admin port's ``/metrics``."""
        status, body = self.admin_get("/metrics")
        assert status == 200
        return body

    def stop(self, grace: float | None = None) -> None:
        """Shut the server down (drain within ``grace``), then the loop and its executor."""
        if self._stopped:
            return
        self._stopped = True
        try:
            if self._thread.is_alive():
                if self._shutdown is None:
                    self.begin_shutdown(grace)
                assert self._shutdown is not None
                self._shutdown.result(60)
                self.call(self.loop.shutdown_default_executor(), timeout=30)
        finally:
            if self._thread.is_alive():
                self.loop.call_soon_threadsafe(self.loop.stop)
                self._thread.join(30)
            if not self._thread.is_alive():
                self.loop.close()


@contextlib.contextmanager
def running_worker(config: WorkerConfig) -> Iterator[ServerThread]:
    """A started :class:`ServerThread`, always stopped at the end."""
    server = ServerThread(config).start()
    try:
        yield server
    finally:
        server.stop()


def thrift_client(port: int, timeout_ms: int = 10_000) -> Any:
    """thriftpy2's plain synchronous client over framed binary (one call at a time)."""
    return make_client(
        textlab.TextLab,
        "127.0.0.1",
        port,
        trans_factory=TFramedTransportFactory(),
        timeout=timeout_ms,
    )


@dataclasses.dataclass
class Reply:
    """A reply read off a raw connection: its header and decoded body."""

    header: Header
    body: Any

    @property
    def seqid(self) -> int:
        return self.header.seqid

    @property
    def is_exception(self) -> bool:
        """Whether the reply is a TApplicationException."""
        return self.header.type == EXCEPTION

    def value(self) -> Any:
        """The call's result; raises the declared exception or TApplicationException."""
        if self.is_exception:
            raise self.body
        body = self.body
        for _, spec in sorted(body.thrift_spec.items()):
            name = spec[1]
            if name != "success" and getattr(body, name, None) is not None:
                raise getattr(body, name)
        return body.success


class RawClient:
    """Framed Thrift over a bare socket, with no rule of one call at a time.

    Args:
        port: the worker's port on 127.0.0.1.
        protocol: the Thrift protocol to speak.
        timeout: socket timeout in seconds for every read.
    """

    def __init__(self, port: int, protocol: ProtocolName = "binary", timeout: float = 10) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.codec = MessageCodec(protocol)
        self._decoder = FrameDecoder()
        self._frames: list[bytes] = []

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def call_bytes(self, method: str, seqid: int, *args: Any) -> bytes:
        """The framed bytes of a call of ``method``."""
        info = SERVICE.methods[method]
        struct = info.args_cls(**dict(zip(info.arg_names, args, strict=True)))
        return encode_frame(self.codec.encode_call(info, seqid, struct))

    def send(self, method: str, seqid: int, *args: Any) -> None:
        """Send one call without waiting for its reply."""
        self.sock.sendall(self.call_bytes(method, seqid, *args))

    def recv_frame(self) -> bytes | None:
        """The next frame from the server, or None when it closed the connection."""
        while not self._frames:
            try:
                data = self.sock.recv(65536)
            except ConnectionResetError:
                return None
            if not data:
                return None
            self._decoder.feed(data)
            self._frames.extend(self._decoder.frames())
        return self._frames.pop(0)

    def recv(self) -> Reply:
        """The next reply; fails the test if the server closed the connection instead."""
        frame = self.recv_frame()
        assert frame is not None, "the server closed the connection instead of replying"
        header = self.codec.read_header(frame)
        info = SERVICE.methods.get(header.name, SERVICE.methods["ping"])
        _, body = self.codec.decode_reply(frame, info)
        return Reply(header, body)

    def recv_many(self, n: int) -> list[Reply]:
        """The next ``n`` replies, in the order they arrive."""
        return [self.recv() for _ in range(n)]

    def call(self, method: str, *args: Any, seqid: int = 1) -> Any:
        """One call, one reply: its value, or the exception it carries."""
        self.send(method, seqid, *args)
        reply = self.recv()
        assert reply.seqid == seqid
        return reply.value()

    def closed_by_server(self, timeout: float = 5.0) -> bool:
        """Whether the server closes the connection within ``timeout`` (no data may arrive)."""
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False
        return data == b""


def _proc_stat(pid: int) -> tuple[str, int] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    state, ppid = raw[raw.rindex(")") + 2 :].split()[:2]
    return state, int(ppid)


def children_of(pid: int) -> list[int]:
    """Live (not zombie) processes whose parent is ``pid``."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _proc_stat(int(entry))
            if stat is not None and stat[1] == pid and stat[0] != "Z":
                found.append(int(entry))
    return found


def forkserver_children() -> list[int]:
    """Live children of this process's multiprocessing fork server (the pool's workers)."""
    from multiprocessing import forkserver

    pid = getattr(forkserver._forkserver, "_forkserver_pid", None)
    return children_of(pid) if pid else []


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` is a live (not zombie) process."""
    stat = _proc_stat(pid)
    return stat is not None and stat[0] != "Z"


def nice_of(pid_or_tid: int) -> int:
    """The niceness of a process or (on Linux) a thread id."""
    return os.getpriority(os.PRIO_PROCESS, pid_or_tid)


def metric(text: str, name: str, **labels: str) -> float | None:
    """The value of sample ``name`` whose labels include ``labels`` in a Prometheus text
    exposition, or None if there is none."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return None


def calls_answered(server: WorkerServer, method: str, outcome: str | None = None) -> float:
    """Calls of ``method`` a worker server has answered, with ``outcome`` or with any (read
    from its metrics, which count a call before its reply is sent)."""
    total = 0.0
    for family in server.metrics.registry.collect():
        for sample in family.samples:
            if (
                sample.name == "offloop_worker_calls_total"
                and sample.labels.get("method") == method
                and outcome in (None, sample.labels.get("outcome"))
            ):
                total += sample.value
    return total


@contextlib.contextmanager
def no_leftovers(wait: float = 5.0) -> Iterator[None]:
    """Fail if threads started inside the block, or pool worker processes, are still alive
    ``wait`` seconds after it ends (a thread-pool call past its deadline runs on until it
    returns)."""
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + wait
    while True:
        threads = [t for t in threading.enumerate() if t not in before and t.is_alive()]
        children = forkserver_children()
        if not threads and not children:
            return
        if time.monotonic() > deadline:
            names = [t.name for t in threads]
            raise AssertionError(f"left behind: threads {names}, worker processes {children}")
        time.sleep(0.05)
