"""Several services on one worker: which service and method a call's name means.

Apache Thrift serves several services on one port with ``TMultiplexedProtocol``: a client
names its call ``Service:method``, and the server's ``TMultiplexedProcessor`` finds the
service by that prefix. A worker with a :class:`ServiceTable` accepts both forms:

- ``Service:method`` for any method of a service it serves;
- a plain ``method`` when exactly one of its services has that method (so existing clients
  of a one-service worker keep working when a second service is added); a name that several
  services share is refused with an ``unknown method`` fault that names the candidates
  (``Calc:ping`` or ``Echo:ping``).

Replies carry the plain method name, as Apache's ``TMultiplexedProcessor`` writes them (its
generated clients of other languages check the reply's name against the plain one).

Each method has a *key*: its name when the worker serves one service (as before), else
``Service:method``. Metrics label calls by it, and batching groups calls by it: a plain and a
multiplexed call of one method go in one batch.

In the pool, a :class:`ServiceRouter` stands in for the one-service
:class:`~offloop.worker.dispatch.Dispatcher`: it reads a call's name, hands the call to its
service's dispatcher and, for a ``Service:method`` call, renames it to the plain ``method``
first (:func:`rename`, a splice of the message header's bytes, sans-I/O), so that the
dispatchers know nothing of multiplexing.
"""

from __future__ import annotations

import dataclasses
import struct
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from offloop.codec.call import SERVICE_SEPARATOR
from offloop.codec.faults import FaultKind
from offloop.codec.guard import DEFAULT_LIMITS, DecodeLimits
from offloop.codec.message import MessageCodec, ProtocolName
from offloop.errors import RemoteProtocolError
from offloop.idl import ServiceInfo, load_idl, service_info
from offloop.worker.dispatch import (
    Dispatcher,
    DispatcherFactory,
    Job,
    Reply,
    Timed,
    TimedReplies,
)

__all__ = ["Route", "ServiceRouter", "ServiceTable", "ServicesFactory", "rename"]


@dataclass(frozen=True, slots=True)
class Route:
    """What a call's name means.

    Attributes:
        service: the service.
        method: the plain method name (the one replies carry).
        key: the method's key: ``method`` on a one-service worker, else ``Service:method``.
    """

    service: str
    method: str
    key: str


class ServiceTable:
    """The services of a worker and what every name a call may use means.

    Args:
        services: the services served, in order.
    """

    def __init__(self, services: Sequence[ServiceInfo]) -> None:
        if not services:
            raise ValueError("a worker serves at least one service")
        self.services: dict[str, ServiceInfo] = {s.name: s for s in services}
        #: Whether the worker serves several services (keys are then ``Service:method``).
        self.several = len(self.services) > 1
        self._routes: dict[str, Route] = {}
        # Plain names that several services have -> those services.
        self._shared: dict[str, list[str]] = {}
        owners: dict[str, list[Route]] = {}
        for service in self.services.values():
            for method in service.methods:
                full = f"{service.name}{SERVICE_SEPARATOR}{method}"
                route = Route(service.name, method, full if self.several else method)
                self._routes[full] = route
                owners.setdefault(method, []).append(route)
        for method, routes in owners.items():
            if len(routes) == 1:
                self._routes[method] = routes[0]
            else:
                self._shared[method] = [r.service for r in routes]

    def resolve(self, name: str) -> Route | None:
        """The route of the name ``name`` a call used; None for a name that means no method
        (or several: see :meth:`unknown`)."""
        return self._routes.get(name)

    def routes(self) -> Iterator[Route]:
        """Every method of every service, once each."""
        seen: set[str] = set()
        for route in self._routes.values():
            if route.key not in seen:
                seen.add(route.key)
                yield route

    def methods_of(self, service: str) -> dict[str, str]:
        """The methods of ``service``: plain name -> key."""
        return {
            name: (f"{service}{SERVICE_SEPARATOR}{name}" if self.several else name)
            for name in self.services[service].methods
        }

    def unknown(self, name: str) -> str:
        """Why ``name`` is not a method this worker can call, in one line for the fault."""
        shared = self._shared.get(name)
        if shared is not None:
            forms = " or ".join(f"{s}{SERVICE_SEPARATOR}{name}" for s in shared)
            return f"{name!r} is a method of several services ({', '.join(shared)}): call {forms}"
        service, sep, method = name.partition(SERVICE_SEPARATOR)
        if sep and service not in self.services:
            return (
                f"{name!r}: this worker serves no service {service!r} "
                f"(services: {', '.join(self.services)})"
            )
        if sep:
            return f"{method!r} is not a method of service {service}"
        if not self.several:
            return f"{name!r} is not a method of service {next(iter(self.services))}"
        return f"{name!r} is not a method of services {', '.join(self.services)}"


# -- renaming a message: Service:method -> method ------------------------------------------

_VERSION_MASK = 0xFFFF0000
_BINARY_VERSION_1 = 0x80010000
_COMPACT_PROTOCOL_ID = 0x82


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    """(value, position after it) of the varint at ``pos``; at most 5 bytes (32 bits)."""
    value = 0
    for i in range(5):
        if pos + i >= len(data):
            break
        byte = data[pos + i]
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            return value, pos + i + 1
    raise RemoteProtocolError("bad varint in a compact message header")


def rename(message: bytes, protocol: ProtocolName, name: str) -> bytes:
    """``message`` with its method name replaced by ``name``: the header's name (and its
    length) spliced, the rest of the bytes as they are.

    Raises:
        RemoteProtocolError: the header is not one of ``protocol``.
    """
    new = name.encode()
    if protocol == "compact":
        if len(message) < 3 or message[0] != _COMPACT_PROTOCOL_ID:
            raise RemoteProtocolError("not a compact message")
        _, pos = _read_varint(message, 2)  # the seqid
        start = pos
        length, pos = _read_varint(message, pos)
        end = pos + length
        if end > len(message):
            raise RemoteProtocolError("truncated compact message header")
        return message[:start] + _varint(len(new)) + new + message[end:]
    if len(message) < 8:
        raise RemoteProtocolError("truncated binary message header")
    (first,) = struct.unpack_from("!I", message)
    if first & 0x80000000:  # strict: version and type, then the name
        if first & _VERSION_MASK != _BINARY_VERSION_1:
            raise RemoteProtocolError("bad binary message version")
        (length,) = struct.unpack_from("!i", message, 4)
        start, end = 4, 8 + length
    else:  # old style: the name first
        length, start, end = first, 0, 4 + first
    if length < 0 or end > len(message):
        raise RemoteProtocolError("truncated binary message header")
    return message[:start] + struct.pack("!i", len(new)) + new + message[end:]


# -- in the pool ---------------------------------------------------------------------------


class ServiceRouter:
    """The pool's dispatcher of a worker with several services (or one called with
    ``Service:method`` names): routes each call to its service's
    :class:`~offloop.worker.dispatch.Dispatcher`, renamed to the plain method name.

    Args:
        table: the worker's services.
        dispatchers: service name -> its dispatcher.
        protocol: the protocol of framed calls (a :class:`CallJob` names its own).
        limits: what one call may cost to decode.
    """

    def __init__(
        self,
        table: ServiceTable,
        dispatchers: Mapping[str, Dispatcher],
        protocol: ProtocolName,
        limits: DecodeLimits = DEFAULT_LIMITS,
    ) -> None:
        self._table = table
        self._dispatchers = dict(dispatchers)
        self._protocol = protocol
        self._codecs: dict[str, MessageCodec] = {
            "binary": MessageCodec("binary", limits),
            "compact": MessageCodec("compact", limits),
        }

    def route(self, job: Job) -> tuple[Dispatcher, Job] | Reply:
        """The dispatcher of ``job``'s service and the job it runs (renamed to the plain
        method name), or the reply refusing it."""
        if isinstance(job, bytes):
            message, protocol = job, self._protocol
        else:
            message, protocol = job.message, job.protocol
        codec = self._codecs[protocol]
        try:
            header = codec.read_header(message)
        except RemoteProtocolError as exc:
            return "bad_request", codec.fault("", 0, FaultKind.BAD_REQUEST, str(exc))
        route = self._table.resolve(header.name)
        if route is None:
            return "bad_request", codec.fault(
                header.name,
                header.seqid,
                FaultKind.UNKNOWN_METHOD,
                self._table.unknown(header.name),
            )
        if header.name != route.method:
            renamed = rename(message, protocol, route.method)
            job = renamed if isinstance(job, bytes) else dataclasses.replace(job, message=renamed)
        return self._dispatchers[route.service], job

    def __call__(self, frames: Sequence[Job]) -> list[Reply]:
        """Run each call of ``frames`` (one call, or a batch of one batched method), each
        by its service's dispatcher; for :class:`Timed` jobs, their :class:`TimedReplies`."""
        if type(frames) is Timed:
            started = time.time_ns()
            replies = TimedReplies(self._run(list(frames)))
            replies.started = started
            replies.ended = time.time_ns()
            return replies
        return self._run(frames)

    def _run(self, frames: Sequence[Job]) -> list[Reply]:
        replies: list[Reply | None] = [None] * len(frames)
        groups: dict[int, tuple[Dispatcher, list[int], list[Job]]] = {}
        for i, job in enumerate(frames):
            routed = self.route(job)
            if isinstance(routed[0], str):
                replies[i] = routed
                continue
            dispatcher, renamed = routed
            group = groups.setdefault(id(dispatcher), (dispatcher, [], []))
            group[1].append(i)
            group[2].append(renamed)
        for dispatcher, where, jobs in groups.values():
            for i, reply in zip(where, dispatcher(jobs), strict=True):
                replies[i] = reply
        return [r for r in replies if r is not None]

    def call_one(self, job: Job) -> Reply:
        """:meth:`Dispatcher.call_one <offloop.worker.dispatch.Dispatcher.call_one>` of the
        call's service."""
        routed = self.route(job)
        if isinstance(routed[0], str):
            return routed
        dispatcher, renamed = routed
        return dispatcher.call_one(renamed)

    async def call_on_loop(self, job: Job) -> Reply:
        """:meth:`Dispatcher.call_on_loop <offloop.worker.dispatch.Dispatcher.call_on_loop>`
        of the call's service."""
        routed = self.route(job)
        if isinstance(routed[0], str):
            return routed
        dispatcher, renamed = routed
        return await dispatcher.call_on_loop(renamed)


@dataclass(frozen=True)
class ServicesFactory:
    """Builds a :class:`ServiceRouter` inside a worker: one dispatcher per service, each from
    its :class:`~offloop.worker.dispatch.DispatcherFactory`. Picklable, like them.

    Attributes:
        factories: one per service, in order.
    """

    factories: tuple[DispatcherFactory, ...]

    @property
    def handler(self) -> tuple[str | Any, ...]:
        """The handlers of the services (what :func:`~offloop.worker.server.build_pool`
        preloads: the modules of those named)."""
        return tuple(f.handler for f in self.factories)

    def __call__(self) -> ServiceRouter:
        first = self.factories[0]
        module = load_idl(first.idl_path)
        table = ServiceTable([service_info(module, f.service) for f in self.factories])
        dispatchers = {f.service: f() for f in self.factories}
        return ServiceRouter(table, dispatchers, first.protocol, first.limits)
