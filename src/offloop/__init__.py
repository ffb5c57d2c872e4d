"""offloop: keep HTTP services responsive while they serve CPU-heavy work.

The public names most users need; each module documents the rest.
"""

from __future__ import annotations

from offloop.batching import batched
from offloop.errors import (
    DeadlineExceeded,
    LocalProtocolError,
    OffloopError,
    Overloaded,
    RemoteApplicationError,
    RemoteProtocolError,
    TransportError,
)
from offloop.watchdog import LoopWatchdog, StallRecord, WatchdogConfig, watch_tornado

__all__ = [
    "DeadlineExceeded",
    "LocalProtocolError",
    "LoopWatchdog",
    "OffloopError",
    "Overloaded",
    "RemoteApplicationError",
    "RemoteProtocolError",
    "StallRecord",
    "TransportError",
    "WatchdogConfig",
    "__version__",
    "batched",
    "watch_tornado",
]

__version__ = "0.1.0"
