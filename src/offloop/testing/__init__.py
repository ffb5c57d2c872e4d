"""Test helpers for offloop's users and its own suite.

- In memory (:mod:`offloop.testing.memory`): :class:`WorkerFor` runs a worker without
  sockets and gives the :class:`MemoryNetwork` that gateways and clients reach it on.
- Blocking calls on the loop (:mod:`offloop.testing.blocking`, needs the ``test`` extra:
  pytest and blockbuster): :func:`no_blocking_calls`, and the ``no_blocking`` fixture for
  ``pytest_plugins = ["offloop.testing"]``.
"""

from offloop.testing.memory import MemoryNetwork, MemoryTransport, WorkerFor

try:
    from offloop.testing.blocking import (
        DEFAULT_ALLOWED,
        BlockingCall,
        BlockingError,
        make_blockbuster,
        no_blocking,
        no_blocking_calls,
    )
except ImportError as exc:  # pragma: no cover - the test extra is not installed
    if exc.name not in ("pytest", "blockbuster"):
        raise
    _MISSING = exc.name

    def __getattr__(name: str) -> object:
        raise ImportError(f"offloop.testing.{name} needs {_MISSING}: pip install 'offloop[test]'")


__all__ = [
    "DEFAULT_ALLOWED",
    "BlockingCall",
    "BlockingError",
    "MemoryNetwork",
    "MemoryTransport",
    "WorkerFor",
    "make_blockbuster",
    "no_blocking",
    "no_blocking_calls",
]
