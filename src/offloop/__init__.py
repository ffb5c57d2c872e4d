"""offloop: keep HTTP services responsive while they serve CPU-heavy work.

The public API: everything a user needs to run offloop as a library. Modules not named here
are internal and may change.

- Serve a gateway: :func:`build_gateway` from a :class:`GatewayConfig`, then
  :func:`serve_gateway` (uvicorn or Tornado), or mount ``ASGIApp(gateway)`` in any ASGI
  server.
- Serve a worker: :func:`serve_worker` or :class:`WorkerServer`, with a handler object or an
  import string; :func:`batched` marks a handler method for dynamic batching,
  :func:`inline` one to run on the worker's loop;
  :func:`load_idl` gives a handler the very module of IDL classes the worker uses.
- Call a worker from Python by method name: :class:`Client` (blocking) and
  :class:`AsyncClient`.
- :func:`run` runs either server coroutine on uvloop as a process's main program.
- The loop watchdog: :class:`LoopWatchdog`, :func:`watch_tornado`.
- Who is calling, in a call the gateway let through: :func:`current_caller` (an
  :class:`Identity`).
- In a handler, the call's context as the gateway sent it: :func:`deadline`,
  :func:`time_left`, :func:`check_deadline`, :func:`cancelled`, :func:`current_request_id`,
  :func:`current_principal`.
- The errors, by who is at fault (:class:`Blame`), and the config classes.

Test helpers live in :mod:`offloop.testing` (a worker in memory, blocking-call detection).
"""

from __future__ import annotations

from offloop.app import build_gateway, run, serve_gateway, serve_worker
from offloop.batching import batched
from offloop.client.actors import ActorCrashed
from offloop.client.balancer import HealthConfig
from offloop.client.config import ClientConfig
from offloop.client.service_client import AsyncClient, Client
from offloop.context import (
    cancelled,
    check_deadline,
    current_principal,
    current_request_id,
    deadline,
    time_left,
)
from offloop.errors import (
    BackendCrashed,
    Blame,
    BrokenError,
    ClosedError,
    ConnectError,
    DeadlineExceeded,
    EncodeError,
    LocalProtocolError,
    NoBackendError,
    OffloopError,
    Overloaded,
    PayloadTooLarge,
    PoolTimeout,
    ReadError,
    RemoteApplicationError,
    RemoteBadRequest,
    RemoteProtocolError,
    ShuttingDown,
    TransportError,
    UnknownMethod,
    WriteError,
)
from offloop.gateway.asgi import ASGIApp
from offloop.gateway.config import ActorsConfig, FrontConfig, GatewayConfig
from offloop.gateway.core import Gateway
from offloop.identity import Identity, current_caller
from offloop.idl import load_idl
from offloop.inline import inline
from offloop.listen import ListenConfig
from offloop.runtime.processpool import WorkerStartError
from offloop.watchdog import LoopWatchdog, StallRecord, WatchdogConfig, watch_tornado
from offloop.worker.config import AdminConfig, PoolConfig, WorkerConfig, WorkerLimits
from offloop.worker.server import WorkerServer

__all__ = [
    "ASGIApp",
    "ActorCrashed",
    "ActorsConfig",
    "AdminConfig",
    "AsyncClient",
    "BackendCrashed",
    "Blame",
    "BrokenError",
    "Client",
    "ClientConfig",
    "ClosedError",
    "ConnectError",
    "DeadlineExceeded",
    "EncodeError",
    "FrontConfig",
    "Gateway",
    "GatewayConfig",
    "HealthConfig",
    "Identity",
    "ListenConfig",
    "LocalProtocolError",
    "LoopWatchdog",
    "NoBackendError",
    "OffloopError",
    "Overloaded",
    "PayloadTooLarge",
    "PoolConfig",
    "PoolTimeout",
    "ReadError",
    "RemoteApplicationError",
    "RemoteBadRequest",
    "RemoteProtocolError",
    "ShuttingDown",
    "StallRecord",
    "TransportError",
    "UnknownMethod",
    "WatchdogConfig",
    "WorkerConfig",
    "WorkerLimits",
    "WorkerServer",
    "WorkerStartError",
    "WriteError",
    "__version__",
    "batched",
    "build_gateway",
    "cancelled",
    "check_deadline",
    "current_caller",
    "current_principal",
    "current_request_id",
    "deadline",
    "inline",
    "load_idl",
    "run",
    "serve_gateway",
    "serve_worker",
    "time_left",
    "watch_tornado",
]

__version__ = "0.1.0"
