"""A supervised process pool, for pure-Python CPU work that threads cannot run in parallel.

``concurrent.futures.ProcessPoolExecutor`` marks the whole pool broken when one child dies,
failing every queued job; this pool supervises each child on its own:

- Each child is started from a fork server (``multiprocessing`` ``forkserver`` context, with
  the handler module preloaded), builds its job function once, reports ``ready``, then serves
  one job at a time over its own socket pair: 4-byte length + pickle, both ways.
- The parent reads every child's socket on the event loop. End of stream means the child
  died: only the job it was running fails (:class:`WorkerCrashed`), and a new child replaces
  it, with a growing pause between attempts while its start keeps failing. The fork server
  saves an interpreter start-up; the job function is still built in each new child (with
  textlab's handler, over a second).
- A child that dies before it is ready, during :meth:`ProcessPool.start` too, is retried the
  same way; start-up fails only when the job function itself fails to build (the handler does
  not import, or raises), with one line saying why, or when children keep dying before they
  are ready (``start_attempts`` in a row).
- A job past ``call_timeout`` (the worker's own limit) is failed with
  :class:`DeadlineExceeded` and its child is killed (``SIGKILL``) and replaced, so a runaway
  handler cannot hold a worker for ever. A job given up *earlier* by its caller (a shorter
  deadline of the caller's, or a cancellation: issue 13) fails at once too, and its child is
  killed and replaced only while the *early-kill budget* lasts (``early_kills_per_minute``,
  a burst of ``workers``): a restart costs the handler's start-up (seconds for a model), so a
  caller must not be able to buy one per request. Past the budget the job runs on, its result
  unread, and is killed when it reaches ``call_timeout``. A queued job just leaves the queue.
- Jobs wait in a FIFO when every child is busy. A :class:`~offloop.runtime.limiter.Limiter`
  of ``workers + max_queued`` slots bounds the jobs admitted; when it is full, a job is
  refused at once. A job gives its slot back exactly once: when its child replies or dies, or
  when it leaves the queue unrun (its caller gave up, or the pool closed).
- A job function that raises fails its job with :class:`JobFailed`, carrying the exception's
  type name, message and formatted traceback as text (not every exception pickles); the
  child lives on.

Children log as the parent does: same format (text or JSON), the child's name added, and an
exception that escapes a child logged rather than printed bare (:func:`offloop.logs.run_child`).
Children ignore ``SIGINT`` (a terminal's Ctrl-C reaches the whole process group; shutdown is
the parent's decision), run at a lower CPU priority (``nice``), and exit when their socket
closes or, if they are running a call then, as soon as the parent process is gone, so they
never outlive the parent.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import multiprocessing
import multiprocessing.context
import os
import pickle
import select
import signal
import socket
import struct
import threading
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from offloop.errors import ClosedError, DeadlineExceeded, OffloopError, Overloaded
from offloop.logs import LogConfig, installed_config, run_child
from offloop.runtime.base import (
    JobFactory,
    JobFailed,
    PoolStats,
    WorkerCrashed,
    check_pool_bounds,
    run_idle,
)
from offloop.runtime.limiter import Limiter

__all__ = ["ProcessPool", "WorkerStartError"]

log = logging.getLogger("offloop.runtime")

_LEN = struct.Struct("!I")
#: Job id of the start-up message a child sends once its job function is built.
_READY_ID = 0
#: Longest pause between restarts of a child whose start keeps failing.
_MAX_RESTART_BACKOFF = 5.0
_FIRST_RESTART_BACKOFF = 0.1
#: Times in a row a child may die before it is ready during start(): a child killed once
#: (the OOM killer, an operator) is replaced; one that dies on every start (a handler that
#: exits or crashes while it loads) fails start-up after 0.1 + 0.2 + 0.4 + 0.8 s of pauses.
START_ATTEMPTS = 5
#: Seconds between checks that the pool's process lives, where pidfds are not available.
_OWNER_POLL = 0.5


class WorkerStartError(OffloopError):
    """A child could not build its job function (the handler failed to import or start), or
    children kept dying before they were ready. ``str(exc)`` is one line."""


class _DiedStarting(WorkerStartError):
    """A child died, or its socket broke, before it was ready: retried like any death."""


# -- the child side (runs in the worker process) ------------------------------------------


def _recv_exact(sock: socket.socket, n: int) -> bytes | None:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:])
        if k == 0:
            return None
        got += k
    return bytes(buf)


def _send_msg(sock: socket.socket, obj: Any) -> None:
    body = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    sock.sendall(_LEN.pack(len(body)) + body)


def _exit_with(owner: int) -> None:
    """Exit this child at once when process ``owner`` (the pool's) is gone.

    An idle child sees its socket close; one running a call would otherwise outlive an owner
    that exited at once (a second signal, ``kill -9``) until the call returned, or for ever,
    and keep the fork server alive with it (each of its children holds the server's
    liveness pipe). Its parent is the fork server, so the parent-death signal cannot tell.
    """
    try:
        pidfd = os.pidfd_open(owner)
    except ProcessLookupError:
        os._exit(1)
    except (AttributeError, OSError):  # no pidfd (not Linux, or older than 5.3): poll
        pidfd = -1

    def watch() -> None:
        if pidfd >= 0:
            select.select([pidfd], [], [])  # readable once the owner has exited
        else:
            while True:
                time.sleep(_OWNER_POLL)
                try:
                    os.kill(owner, 0)
                except ProcessLookupError:
                    break
                except PermissionError:
                    pass
        os._exit(1)

    threading.Thread(target=watch, name="offloop-owner-watch", daemon=True).start()


def _child_main(
    sock: socket.socket, factory: JobFactory, priority: tuple[int, bool], owner: int
) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _exit_with(owner)
    nice, idle = priority
    if nice and not idle:
        with contextlib.suppress(OSError):
            os.nice(nice)
    try:
        fn = factory()
    except BaseException as exc:
        _send_msg(sock, (_READY_ID, False, _start_failure(exc)))
        return
    # SCHED_IDLE once the handler is built: its start-up (imports, a model) is not starved
    # on a busy host; nice where the policy cannot be set.
    if idle and not run_idle() and nice:
        with contextlib.suppress(OSError):
            os.nice(nice)
    _send_msg(sock, (_READY_ID, True, os.getpid()))
    while True:
        head = _recv_exact(sock, 4)
        if head is None:
            return  # the parent closed our socket: shut down
        body = _recv_exact(sock, _LEN.unpack(head)[0])
        if body is None:
            return
        job_id, payload = pickle.loads(body)
        try:
            reply = (job_id, True, fn(payload))
        except BaseException as exc:  # the job function should catch; report what escaped
            failed = JobFailed.from_exception(exc)
            reply = (job_id, False, (failed.type_name, failed.message, failed.traceback_text))
        _send_msg(sock, reply)


def _start_failure(exc: BaseException) -> tuple[str, str, BaseException | None]:
    """What a child that cannot build its job function tells the parent: the traceback, one
    line saying why (an :class:`OffloopError`'s own message, else the exception's last line),
    and the exception itself when it survives pickling (the parent raises from it)."""
    text = traceback.format_exc()
    if isinstance(exc, OffloopError):
        summary = " ".join(str(exc).split())
    else:
        summary = " ".join(traceback.format_exception_only(exc)[-1].split())
    try:
        pickle.loads(pickle.dumps(exc, protocol=pickle.HIGHEST_PROTOCOL))
    except Exception:  # not every exception pickles; the text says it all anyway
        return text, summary, None
    return text, summary, exc


def _child_target(
    config: LogConfig | None,
    sock: socket.socket,
    factory: JobFactory,
    priority: tuple[int, bool],
    owner: int,
) -> None:
    """A child's process target: its logging set up as the parent's (same format, the
    child's name added, uncaught exceptions through the log) when the parent has an offloop
    log config, then :func:`_child_main`."""
    if config is None:
        _child_main(sock, factory, priority, owner)
    else:
        run_child(config, None, _child_main, sock, factory, priority, owner)


# -- the parent side ------------------------------------------------------------------------


def _exit_status(proc: multiprocessing.process.BaseProcess) -> str:
    code = proc.exitcode
    return f"killed by signal {-code}" if code is not None and code < 0 else f"exit {code}"


@dataclass(eq=False)
class _Job:
    payload: Any
    future: asyncio.Future[Any]
    id: int
    child: _Child | None = None
    holds_slot: bool = True  # until ProcessPool._finish gives the admission slot back


@dataclass(eq=False)
class _Child:
    proc: multiprocessing.process.BaseProcess
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    pid: int
    job: _Job | None = None
    killed_for: str | None = None
    task: asyncio.Task[None] | None = field(default=None, repr=False)


class ProcessPool:
    """Runs jobs in ``workers`` supervised child processes.

    Args:
        factory: a picklable callable that builds the job function in each child.
        workers: child processes.
        max_queued: jobs that may wait for a child (default four per worker).
        nice: niceness added to each child, so that a front on the same host keeps its
            latency while the pool saturates the cores.
        sched_idle: run the children under Linux's ``SCHED_IDLE`` policy instead
            (:func:`~offloop.runtime.base.run_idle`; ``nice`` where it cannot be set).
        start_method: ``multiprocessing`` start method; ``forkserver`` (default) forks each
            child from a clean server process with ``preload`` imported.
        preload: modules the fork server imports once, so children start in milliseconds.
        start_timeout: seconds a child may take to build its job function.
        start_attempts: times in a row a child may die before it is ready during
            :meth:`start` before start-up fails.
        log_config: how children log (:func:`offloop.logs.child_logging`); default: the
            config :func:`offloop.logs.configure_logging` installed in this process when a
            child starts, if any (else children log as ``logging`` does by default).
        call_timeout: the worker's own limit on a call (seconds): a job that reaches it is
            always killed. A job given up before it (a shorter timeout, a cancellation) is
            killed only within the early-kill budget. None: every timeout is the limit.
        early_kills_per_minute: the budget's refill rate (its burst is ``workers``); 0 never
            kills a child for a caller that gave up early.
    """

    def __init__(
        self,
        factory: JobFactory,
        *,
        workers: int,
        max_queued: int | None = None,
        nice: int = 10,
        sched_idle: bool = False,
        start_method: str = "forkserver",
        preload: Sequence[str] = (),
        start_timeout: float = 60.0,
        start_attempts: int = START_ATTEMPTS,
        log_config: LogConfig | None = None,
        call_timeout: float | None = None,
        early_kills_per_minute: float = 6.0,
    ) -> None:
        if early_kills_per_minute < 0:
            raise ValueError("early_kills_per_minute must be >= 0")
        self._log_config = log_config
        # The early-kill budget: a token bucket of `workers` kills, refilled at the rate.
        self._call_timeout = call_timeout
        self._kill_rate = early_kills_per_minute / 60.0
        self._kill_tokens = float(workers)
        self._kill_stamp = time.monotonic()
        self._early_kills = 0
        self._spared = 0
        self._max_queued = check_pool_bounds(workers, max_queued)
        if start_attempts < 1:
            raise ValueError("start_attempts must be at least 1")
        self._start_attempts = start_attempts
        self._factory = factory
        self._workers = workers
        self._priority = (nice, sched_idle)
        self._ctx = multiprocessing.get_context(start_method)
        if start_method == "forkserver" and preload:
            self._ctx.set_forkserver_preload(list(preload))
        self._start_timeout = start_timeout
        self._admission = Limiter(workers + self._max_queued, name="process pool jobs")
        self._children: set[_Child] = set()
        self._idle: collections.deque[_Child] = collections.deque()
        self._queue: collections.deque[_Job] = collections.deque()
        self._next_id = _READY_ID
        self._restarts = 0
        self._completed = 0  # jobs that ran to an end (PoolStats.completed)
        self._closed = False
        self._spawning: set[asyncio.Task[None]] = set()

    @property
    def workers(self) -> int:
        return self._workers

    # -- life cycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Start every child and wait until each is ready; a child that dies before it is
        ready is replaced, with a growing pause, up to ``start_attempts`` times in a row.

        Raises:
            WorkerStartError: a child failed to build its job function, or children kept
                dying before they were ready.
        """
        results = await asyncio.gather(
            *(self._start_child() for _ in range(self._workers)), return_exceptions=True
        )
        errors = [r for r in results if isinstance(r, BaseException)]
        for child in results:
            if isinstance(child, _Child):
                self._adopt(child)
        if errors:
            await self.close()
            raise errors[0]

    async def _start_child(self) -> _Child:
        delay = _FIRST_RESTART_BACKOFF
        attempt = 1
        while True:
            try:
                return await self._spawn()
            except (_DiedStarting, OSError) as exc:
                if attempt >= self._start_attempts or self._closed:
                    raise WorkerStartError(
                        f"worker processes died {attempt} times in a row while starting; "
                        f"last: {exc}"
                    ) from exc
                log.error("worker process did not start (retrying in %.1f s): %s", delay, exc)
            self._restarts += 1
            await asyncio.sleep(delay)
            delay = min(delay * 2, _MAX_RESTART_BACKOFF)
            attempt += 1

    async def _spawn(self) -> _Child:
        loop = asyncio.get_running_loop()
        parent_sock, child_sock = socket.socketpair()
        proc = self._ctx.Process(  # type: ignore[attr-defined]
            target=_child_target,
            args=(
                self._log_config or installed_config(),
                child_sock,
                self._factory,
                self._priority,
                os.getpid(),
            ),
            daemon=True,
            name="offloop-worker",
        )
        try:
            await loop.run_in_executor(None, proc.start)
        finally:
            child_sock.close()
        reader, writer = await asyncio.open_connection(sock=parent_sock)
        try:
            head = await asyncio.wait_for(reader.readexactly(4), self._start_timeout)
            body = await reader.readexactly(_LEN.unpack(head)[0])
            _, ok, info = pickle.loads(body)
        except TimeoutError as exc:
            writer.close()
            proc.kill()
            await self._reap(proc)
            raise WorkerStartError(
                f"worker process {proc.pid} did not build its job function within "
                f"{self._start_timeout:g} s"
            ) from exc
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            writer.close()
            await self._reap(proc)
            raise _DiedStarting(
                f"worker process {proc.pid} exited before it was ready ({_exit_status(proc)})"
            ) from exc
        if not ok:
            writer.close()
            await self._reap(proc)
            text, summary, cause = info
            log.debug("worker process %s failed to start its handler:\n%s", proc.pid, text)
            raise WorkerStartError(
                f"worker process failed to start its handler: {summary} "
                f"(the traceback is logged at DEBUG level)"
            ) from cause
        return _Child(proc=proc, reader=reader, writer=writer, pid=int(info))

    def _adopt(self, child: _Child) -> None:
        if self._closed:
            child.writer.close()
            return
        self._children.add(child)
        child.task = asyncio.get_running_loop().create_task(
            self._read_replies(child), name=f"offloop-child-{child.pid}"
        )
        self._make_idle(child)

    async def _reap(self, proc: multiprocessing.process.BaseProcess) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, proc.join, 2.0)
        if proc.is_alive():
            proc.kill()
            await loop.run_in_executor(None, proc.join, 2.0)

    async def _read_replies(self, child: _Child) -> None:
        try:
            while True:
                head = await child.reader.readexactly(4)
                body = await child.reader.readexactly(_LEN.unpack(head)[0])
                job_id, ok, result = pickle.loads(body)
                self._on_reply(child, job_id, ok, result)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        await self._on_child_exit(child)

    def _on_reply(self, child: _Child, job_id: int, ok: bool, result: Any) -> None:
        job = child.job
        child.job = None
        if job is not None:
            self._completed += 1
            self._finish(job)
            if job.id == job_id and not job.future.done():
                if ok:
                    job.future.set_result(result)
                else:
                    job.future.set_exception(JobFailed(*result))
        self._make_idle(child)

    async def _on_child_exit(self, child: _Child) -> None:
        self._children.discard(child)
        with contextlib.suppress(ValueError):
            self._idle.remove(child)
        child.writer.close()
        await self._reap(child.proc)
        how = _exit_status(child.proc)
        job = child.job
        child.job = None
        if job is not None:
            self._completed += 1  # ended by the child's death (a kill past its deadline)
            self._finish(job)
        if child.killed_for:
            log.warning("worker process %d killed: %s", child.pid, child.killed_for)
        elif not self._closed:
            log.error(
                "worker process %d died (%s)%s",
                child.pid,
                how,
                " while running a call" if job else "",
            )
        if job is not None and not job.future.done():
            job.future.set_exception(
                WorkerCrashed(f"worker process {child.pid} died ({how}) while running this call")
            )
        if not self._closed:
            self._restarts += 1
            task = asyncio.get_running_loop().create_task(self._replace())
            self._spawning.add(task)
            task.add_done_callback(self._spawning.discard)

    async def _replace(self) -> None:
        delay = _FIRST_RESTART_BACKOFF
        while not self._closed:
            try:
                child = await self._spawn()
            except (WorkerStartError, OSError) as exc:
                log.error("cannot replace worker process (retrying in %.1f s): %s", delay, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, _MAX_RESTART_BACKOFF)
                continue
            self._adopt(child)
            return

    # -- scheduling ------------------------------------------------------------------------

    def _finish(self, job: _Job) -> None:
        """Give ``job``'s admission slot back: it ran, or left the queue unrun."""
        if job.holds_slot:
            job.holds_slot = False
            self._admission.release()

    def _make_idle(self, child: _Child) -> None:
        if child.killed_for or child not in self._children:
            return
        while self._queue:
            job = self._queue.popleft()
            if not job.future.done():
                self._assign(child, job)
                return
            self._finish(job)  # not expected: a given-up job leaves the queue at once
        self._idle.append(child)

    def _assign(self, child: _Child, job: _Job) -> None:
        child.job = job
        job.child = child
        body = pickle.dumps((job.id, job.payload), protocol=pickle.HIGHEST_PROTOCOL)
        child.writer.write(_LEN.pack(len(body)) + body)

    def _kill(self, child: _Child, reason: str) -> None:
        child.killed_for = reason
        with contextlib.suppress(ProcessLookupError):
            os.kill(child.pid, signal.SIGKILL)

    async def run(self, payload: Any, *, timeout: float) -> Any:
        if self._closed:
            raise ClosedError("process pool is closed")
        if not self._admission.try_acquire():
            raise Overloaded(
                f"{self._workers} worker processes busy and {self._max_queued} calls queued"
            )
        loop = asyncio.get_running_loop()
        self._next_id += 1
        job = _Job(payload=payload, future=loop.create_future(), id=self._next_id)
        if self._idle:
            self._assign(self._idle.popleft(), job)
        else:
            self._queue.append(job)
        started = loop.time()
        try:
            return await asyncio.wait_for(asyncio.shield(job.future), timeout)
        except TimeoutError:
            self._give_up(job)
            if job.child is not None and job.child.job is job:
                limit = self._call_timeout
                if limit is None or timeout >= limit:
                    self._kill(job.child, f"call exceeded its deadline of {timeout:.3g} s")
                else:
                    self._kill_early(job, f"its caller's deadline of {timeout:.3g} s passed",
                                     loop.time() - started)  # fmt: skip
            raise DeadlineExceeded(f"call did not finish within {timeout:.3g} s") from None
        except asyncio.CancelledError:
            self._give_up(job)  # a queued job leaves the queue
            if job.child is not None and job.child.job is job:
                # Issue 13: nobody waits for it any more; its child is replaced rather than
                # burn a core on work no one will read, while the early-kill budget lasts.
                self._kill_early(job, "its caller cancelled the call", loop.time() - started)
            raise

    def _kill_early(self, job: _Job, reason: str, ran: float) -> None:
        """Kill the child of ``job``, given up by its caller before ``call_timeout``, if the
        early-kill budget allows; else let it run (its result unread) and kill it only if it
        reaches ``call_timeout`` (``ran``: seconds since it was submitted)."""
        child = job.child
        assert child is not None
        now = time.monotonic()
        self._kill_tokens = min(
            float(self._workers), self._kill_tokens + (now - self._kill_stamp) * self._kill_rate
        )
        self._kill_stamp = now
        if self._kill_tokens >= 1.0:
            self._kill_tokens -= 1.0
            self._early_kills += 1
            self._kill(child, reason)
            return
        self._spared += 1
        if self._spared == 1 or self._spared % 100 == 0:
            log.warning(
                "worker process %d: %s, but the early-kill budget (%g a minute) is spent: the "
                "call runs on, unread (%d spared so far)",
                child.pid,
                reason,
                self._kill_rate * 60,
                self._spared,
            )
        limit = self._call_timeout
        if limit is not None:
            asyncio.get_running_loop().call_later(
                max(0.0, limit - ran), self._kill_if_running, child, job, limit
            )

    def _kill_if_running(self, child: _Child, job: _Job, limit: float) -> None:
        if child.job is job:
            self._kill(child, f"call exceeded the worker's call timeout of {limit:.3g} s")

    def _give_up(self, job: _Job) -> None:
        """The caller stopped waiting: drop ``job`` if it is still queued."""
        job.future.cancel()
        if job.child is None:
            with contextlib.suppress(ValueError):  # close() may have taken it already
                self._queue.remove(job)  # short: the limiter bounds it
                self._finish(job)

    def stats(self) -> PoolStats:
        busy = sum(1 for c in self._children if c.job is not None)
        return PoolStats(
            workers=self._workers,
            alive=len(self._children),
            busy=busy,
            queued=len(self._queue),
            restarts=self._restarts,
            admission=self._admission.stats(),
            completed=self._completed,
        )

    async def close(self, grace: float = 0.0) -> None:
        """Stop every child. Queued jobs fail with ClosedError; running jobs get ``grace``
        seconds to finish, then their children are killed."""
        if self._closed:
            return
        self._closed = True
        while self._queue:
            job = self._queue.popleft()
            self._finish(job)
            if not job.future.done():
                job.future.set_exception(ClosedError("process pool closed before the call ran"))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while any(c.job for c in self._children) and loop.time() < deadline:
            await asyncio.sleep(0.01)
        for task in list(self._spawning):
            task.cancel()
        for child in list(self._children):
            if child.job is not None:
                self._kill(child, "pool closed while the call was running")
            child.writer.close()  # the child sees end of stream and exits
        tasks = [c.task for c in self._children if c.task is not None]
        tasks += list(self._spawning)
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
