"""Fail a test when code on the event loop makes a blocking call.

Built on `blockbuster <https://github.com/cbornet/blockbuster>`_, which swaps the known
blocking functions (``time.sleep``, blocking socket, file and ``os`` calls, ``Lock.acquire``
on a held lock, ``sqlite3``, ``input``...) for wrappers that raise
:class:`blockbuster.BlockingError` when they are called from a thread with a running event
loop. Calls from threads without a loop (executor workers, the watchdog thread, plain sync
tests) pass through untouched. On top of blockbuster's list this module adds common blocking
calls it misses: ``concurrent.futures.Future.result()`` and
``.exception()`` on an unfinished future, ``os.waitpid`` without ``WNOHANG``, and blocking
name resolution (``socket.getaddrinfo`` and friends for anything but an IP literal).

Two ways in, both for users' suites and for ours::

    # conftest.py
    pytest_plugins = ["offloop.testing"]  # provides the ``no_blocking`` fixture

    def test_handler(no_blocking):
        asyncio.run(my_coroutine())  # raises BlockingError if it blocks the loop

    # or anywhere, without pytest
    with no_blocking_calls():
        asyncio.run(my_coroutine())

This module needs the ``test`` extra (pytest and blockbuster).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import ipaddress
import os
import sysconfig
import threading
import traceback
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import pytest
from blockbuster import BlockBuster, BlockBusterFunction, BlockingError

__all__ = [
    "DEFAULT_ALLOWED",
    "BlockingCall",
    "BlockingError",
    "make_blockbuster",
    "no_blocking",
    "no_blocking_calls",
]

# Places where a blocking call on the loop is accepted, as (file name suffix, functions).
# LoopWatchdog.stop joins a thread that was told to end a moment before, and .records may
# wait for its lock for the few microseconds the thread holds it: both far below a stall.
# Logging handlers write to files by design; a loop that logs accepts that cost everywhere.
DEFAULT_ALLOWED: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("offloop/watchdog/_watchdog.py", ("stop", "records")),
    ("logging/__init__.py", ("emit", "flush")),
    ("logging/handlers.py", ("emit", "flush", "doRollover")),
)


_STDLIB = os.path.join(sysconfig.get_paths()["stdlib"], "")


def _is_library(filename: str) -> bool:
    """Whether a frame is blockbuster's or the standard library's, not the caller's."""
    if "blockbuster" in filename or filename.startswith("<"):
        return True
    return filename.startswith(_STDLIB) and "-packages" not in filename


def _future_done(future: concurrent.futures.Future[Any], *_: Any, **__: Any) -> bool:
    return future.done()


def _waitpid_nohang(_pid: int, options: int, *_: Any, **__: Any) -> bool:
    return bool(options & os.WNOHANG)


def _is_ip_literal(host: Any = None, *_: Any, **__: Any) -> bool:
    """A lookup of nothing, or of an IP literal, is answered without the network."""
    if host is None:
        return True
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    try:
        ipaddress.ip_address(str(host).split("%", 1)[0])  # drop an IPv6 zone id
    except ValueError:
        return False
    return True


def _extra_functions(
    scanned_modules: Sequence[str | ModuleType] | None,
    excluded_modules: Sequence[str | ModuleType] | None,
) -> dict[str, BlockBusterFunction]:
    """The blocking calls blockbuster does not know about."""

    def function(name: str, **kwargs: Any) -> BlockBusterFunction:
        return BlockBusterFunction(
            None,
            name,
            scanned_modules=scanned_modules,
            excluded_modules=excluded_modules,
            **kwargs,
        )

    names: dict[str, Callable[..., bool] | None] = {
        "concurrent.futures.Future.result": _future_done,
        "concurrent.futures.Future.exception": _future_done,
        "os.waitpid": _waitpid_nohang,
        "socket.getaddrinfo": _is_ip_literal,
        "socket.gethostbyname": _is_ip_literal,
        "socket.gethostbyname_ex": _is_ip_literal,
        "socket.gethostbyaddr": None,
    }
    return {
        name: function(name, can_block_predicate=predicate)
        if predicate is not None
        else function(name)
        for name, predicate in names.items()
    }


def make_blockbuster(
    scanned_modules: Sequence[str | ModuleType] | None = None,
    *,
    excluded_modules: Sequence[str | ModuleType] | None = None,
    allow: Iterable[tuple[str, Iterable[str]]] = (),
) -> BlockBuster:
    """Build an inactive :class:`blockbuster.BlockBuster` with offloop's additions.

    Args:
        scanned_modules: only blocking calls made (directly or not) from these modules count;
            all code when ``None``.
        excluded_modules: sub-modules of ``scanned_modules`` that do not count as scanned
            (a pytest plugin inside your package, say).
        allow: more ``(file name suffix, function names)`` pairs in whose calls blocking is
            accepted, on top of :data:`DEFAULT_ALLOWED`.

    Returns:
        The BlockBuster; call ``activate()`` and ``deactivate()``, or use
        :func:`no_blocking_calls`.
    """
    blockbuster = BlockBuster(scanned_modules, excluded_modules=excluded_modules)
    blockbuster.functions.update(_extra_functions(scanned_modules, excluded_modules))
    allowed = [*DEFAULT_ALLOWED, *allow]
    for wrapped in blockbuster.functions.values():
        for filename, functions in allowed:
            wrapped.can_block_in(filename, set(functions))
    return blockbuster


@dataclass(frozen=True)
class BlockingCall:
    """A blocking call that was refused on the loop.

    Attributes:
        error: the error raised from the call (it may have been caught by the code under test).
        where: the call site, ``file:line in function``, innermost frame outside blockbuster.
        thread: the name of the thread whose loop it would have blocked.
    """

    error: BlockingError
    where: str
    thread: str

    def __str__(self) -> str:
        return f"{self.error} at {self.where} (thread {self.thread})"


@contextmanager
def _recording(seen: list[BlockingCall]) -> Iterator[None]:
    """Append every BlockingError created meanwhile to ``seen``, caught later or not.

    blockbuster has no hook for this, so its error's ``__init__`` is wrapped for the duration
    (the class itself stays the same, so ``except BlockingError`` still works).
    """
    original = BlockingError.__init__

    def init(self: BlockingError, func: str) -> None:
        original(self, func)
        frames = traceback.extract_stack()[:-1]
        site = next((f for f in reversed(frames) if not _is_library(f.filename)), frames[-1])
        call = BlockingCall(
            self, f"{site.filename}:{site.lineno} in {site.name}", threading.current_thread().name
        )
        seen.append(call)  # atomic; a lock here could itself count as blocking

    BlockingError.__init__ = init  # type: ignore[method-assign]
    try:
        yield
    finally:
        BlockingError.__init__ = original  # type: ignore[method-assign]


@contextmanager
def no_blocking_calls(
    scanned_modules: Sequence[str | ModuleType] | None = None,
    *,
    excluded_modules: Sequence[str | ModuleType] | None = None,
    allow: Iterable[tuple[str, Iterable[str]]] = (),
    seen: list[BlockingCall] | None = None,
) -> Iterator[BlockBuster]:
    """Within the block, a blocking call on a running event loop raises ``BlockingError``.

    The check covers every thread while the block lasts, so a server running on a loop in a
    background thread is checked too. Threads with no running loop are never affected.

    Args:
        scanned_modules: see :func:`make_blockbuster`.
        excluded_modules: see :func:`make_blockbuster`.
        allow: see :func:`make_blockbuster`.
        seen: when given, every refused call is appended to it, including those whose error
            the code under test caught (a framework that turns it into a 500, a callback
            whose exception asyncio only logs).

    Yields:
        The active BlockBuster (its ``functions`` can be tuned in place).

    Raises:
        blockbuster.BlockingError: from the blocking call itself, inside the block.
    """
    blockbuster = make_blockbuster(scanned_modules, excluded_modules=excluded_modules, allow=allow)
    with contextlib.ExitStack() as stack:
        if seen is not None:
            stack.enter_context(_recording(seen))
        blockbuster.activate()
        stack.callback(blockbuster.deactivate)
        yield blockbuster


@pytest.fixture
def no_blocking() -> Iterator[BlockBuster]:
    """A pytest fixture: the test fails if code on an event loop makes a blocking call.

    The blocking call raises ``BlockingError`` where it is made; should the code under test
    catch it, the test still fails, at teardown, with the list of refused calls. Load it with
    ``pytest_plugins = ["offloop.testing"]`` in the root ``conftest.py``, or import it there
    (``from offloop.testing import no_blocking``). Tests that run no loop are unaffected.
    """
    seen: list[BlockingCall] = []
    with no_blocking_calls(seen=seen) as blockbuster:
        yield blockbuster
    if seen:
        calls = "\n  ".join(str(call) for call in seen)
        pytest.fail(f"blocking calls on the event loop during the test:\n  {calls}", pytrace=False)
