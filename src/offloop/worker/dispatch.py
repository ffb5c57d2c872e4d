"""Runs Thrift calls against a handler: bytes of a call in, bytes of its reply out.

This is the job function of the worker pools. It runs in a pool thread or a child process,
so it receives and returns only bytes and small tags (cheap to pickle), never sockets.

Errors, as the issue asks and unlike thriftpy2's own servers, never cost the connection:

- a declared Thrift exception goes back in the result struct, as the IDL says;
- a ``TApplicationException`` raised by the handler goes back as is;
- any other exception goes back as the fault :attr:`~offloop.codec.faults.FaultKind.INTERNAL`
  naming the exception's type and message, and is logged with its traceback;
- arguments that do not decode go back as :attr:`~offloop.codec.faults.FaultKind.BAD_REQUEST`,
  an unknown method as :attr:`~offloop.codec.faults.FaultKind.UNKNOWN_METHOD`.

A string argument that is not valid UTF-8 is a bad request too, though it decodes: thriftpy2
then hands the handler ``bytes`` where the IDL says ``string``, and the handler's failure
(a traceback, ``internal error``) would blame the server for the caller's bytes. After
thriftpy2 has decoded the arguments, only the IDL's string-typed places can hold such
``bytes``, so a plan made once per method (:class:`StringCheck`) looks there and nowhere
else; a method without strings costs nothing. Bad requests are the caller's fault, so they are
logged at DEBUG, and at WARNING at most once per :data:`BAD_REQUEST_LOG_INTERVAL` seconds,
never with a traceback.

**A call's context.** A call that came in a THeader frame reaches the pool as a
:class:`CallJob`: its message, its protocol (a header frame names its own, which may differ
from the worker's ``--protocol``) and its :class:`~offloop.context.CallContext` (request id,
deadline, principal, info headers). A plain framed call is its bare bytes, at no cost. Before
a call starts, its deadline is checked: one that passed while the call was queued is answered
with the fault ``deadline exceeded`` (outcome ``expired``) and the handler never runs. A
handler runs with the context variables of :mod:`offloop.context` set to its call's context
(in a pool thread or a child process alike: the deadline is a ``time.monotonic`` value, which
the processes of one host share), so that it can read :func:`offloop.time_left` or call
:func:`offloop.check_deadline`; a :class:`~offloop.errors.DeadlineExceeded` it raises is
answered as ``deadline exceeded`` (outcome ``timeout``). A batch runs with no call's context
set (it carries several); its calls whose deadline passed leave it before it runs.
"""

from __future__ import annotations

import inspect
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from thriftpy2.thrift import TApplicationException

from offloop.batching import batch_options
from offloop.codec.faults import FaultKind
from offloop.codec.guard import DEFAULT_LIMITS, DecodeLimits
from offloop.codec.message import Header, MessageCodec, ProtocolName
from offloop.context import CallContext
from offloop.errors import DeadlineExceeded, RemoteProtocolError
from offloop.idl import MethodInfo, ServiceInfo, load_idl, service_info
from offloop.inline import loop_methods
from offloop.worker.handler_loading import (
    HandlerError,
    describe_failure,
    import_handler,
    load_handler,
)
from offloop.worker.string_check import StringCheck

__all__ = [
    "OUTCOMES",
    "CallJob",
    "Dispatcher",
    "DispatcherFactory",
    "Reply",
    "Timed",
    "TimedReplies",
]

log = logging.getLogger("offloop.worker")

#: Outcome tags of a call, as counted in metrics. ``expired``: its deadline passed before it
#: started, and it never ran; ``timeout``: it ran past its deadline.
OUTCOMES = (
    "ok",
    "exception",
    "error",
    "bad_request",
    "overloaded",
    "timeout",
    "expired",
    "crashed",
)

#: One call's reply: its outcome tag and the reply message (None for a oneway call).
Reply = tuple[str, bytes | None]

_NO_CONTEXT = CallContext()


@dataclass(frozen=True, slots=True)
class CallJob:
    """One call with its context, as a pool receives it (a framed call is its bare bytes).

    Attributes:
        message: the Thrift message of the call.
        protocol: its protocol.
        context: its request id, deadline, principal and info headers.
    """

    message: bytes
    protocol: ProtocolName
    context: CallContext


#: A call as the pool receives it.
Job = bytes | CallJob


class Timed(list[Job]):
    """Jobs whose run the pool's worker times (issue 13, tracing on: the worker's span of a
    call shows its time queued and running apart). The dispatcher answers them with
    :class:`TimedReplies`."""


class TimedReplies(list[Reply]):
    """The replies to :class:`Timed` jobs, with when they started and ended running (ns
    since the epoch, :func:`time.time_ns`: one clock for the processes of a host)."""

    started: int = 0
    ended: int = 0


#: Seconds between two WARNING lines about bad requests; the others go to DEBUG. A client
#: sending garbage (a fuzzer: hundreds a second) must not flood the log with its faults.
BAD_REQUEST_LOG_INTERVAL = 10.0


class _RateLimitedWarning:
    """Logs a WARNING at most once per ``interval`` seconds, the others at DEBUG, and says
    how many it held back. Thread-safe: a thread pool's threads share one dispatcher."""

    def __init__(self, interval: float) -> None:
        self._interval = interval
        self._next = 0.0
        self._held_back = 0
        self._lock = threading.Lock()

    def __call__(self, message: str) -> None:
        now = time.monotonic()
        with self._lock:
            loud = now >= self._next
            if loud:
                self._next = now + self._interval
                held_back, self._held_back = self._held_back, 0
            else:
                self._held_back += 1
        if not loud:
            log.debug("%s", message)
        elif held_back:
            log.warning(
                "%s (and %d more bad requests since the last such line)", message, held_back
            )
        else:
            log.warning("%s", message)


class Dispatcher:
    """Decodes calls, runs them on ``handler`` and encodes the replies.

    Args:
        service: the service the handler implements.
        handler: an object with one method per IDL method.
        protocol: the Thrift protocol of the frames.
        limits: what one call may cost to decode beyond its length.
    """

    def __init__(
        self,
        service: ServiceInfo,
        handler: Any,
        protocol: ProtocolName,
        limits: DecodeLimits = DEFAULT_LIMITS,
        *,
        _main: Dispatcher | None = None,
    ) -> None:
        self._service = service
        self._handler = handler
        self._protocol = protocol
        self._codec = MessageCodec(protocol, limits)
        if _main is None:
            self._strings = StringCheck()
            for method in service.methods.values():
                self._strings.prepare(method.args_cls)
            self._bad_request = _RateLimitedWarning(BAD_REQUEST_LOG_INTERVAL)
            other: ProtocolName = "compact" if protocol == "binary" else "binary"
            # Header frames name their protocol: the other one is served by a sibling that
            # shares everything but the codec.
            self._by_protocol: dict[str, Dispatcher] = {protocol: self}
            self._by_protocol[other] = Dispatcher(service, handler, other, limits, _main=self)
        else:
            self._strings = _main._strings
            self._bad_request = _main._bad_request
            self._by_protocol = _main._by_protocol
        # A batched method takes a list of calls, so it is called that way even alone.
        self._batched = frozenset(batch_options(handler))
        missing = [m for m in service.methods if not callable(getattr(handler, m, None))]
        if missing:
            raise TypeError(
                f"handler {type(handler).__name__} lacks methods of service "
                f"{service.name}: {', '.join(missing)}"
            )

    def __call__(self, frames: Sequence[Job]) -> list[Reply]:
        """Run each call of ``frames`` (one call, or a batch of one batched method); for
        :class:`Timed` jobs, their :class:`TimedReplies`."""
        if type(frames) is Timed:
            return self._timed(frames)
        if len(frames) == 1:
            return [self.call_one(frames[0])]
        return self.call_batch(frames)

    def _timed(self, frames: Timed) -> TimedReplies:
        started = time.time_ns()
        replies = TimedReplies(self(list(frames)))
        replies.started = started
        replies.ended = time.time_ns()
        return replies

    def _unpack(self, job: Job) -> tuple[Dispatcher, bytes, CallContext]:
        if isinstance(job, bytes):
            return self, job, _NO_CONTEXT
        return self._by_protocol[job.protocol], job.message, job.context

    def _expired(self, frame: bytes) -> Reply:
        """The answer to a call whose deadline passed before it started."""
        try:
            header = self._codec.read_header(frame)
        except RemoteProtocolError as exc:
            return self._refuse(Header("", 1, 0), str(exc))
        return "expired", self._codec.fault(
            header.name,
            header.seqid,
            FaultKind.DEADLINE_EXCEEDED,
            "the call's deadline passed while it was queued; it did not run",
        )

    def _decode(self, frame: bytes) -> tuple[Header, MethodInfo, Any] | Reply:
        header = self._codec.read_header(frame)
        method = self._service.methods.get(header.name)
        if method is None:
            return "bad_request", self._codec.fault(
                header.name,
                header.seqid,
                FaultKind.UNKNOWN_METHOD,
                f"{header.name!r} is not a method of service {self._service.name}",
            )
        try:
            _, args = self._codec.decode_args(frame, method)
        except RemoteProtocolError as exc:
            return self._refuse(header, str(exc))
        path = self._strings.find(args)
        if path is not None:
            return self._refuse(
                header, f"argument {path} of {method.name} is a string that is not valid UTF-8"
            )
        return header, method, args

    def _refuse(self, header: Header, detail: str) -> Reply:
        """Answer a call whose arguments are the caller's fault with ``BAD_REQUEST``."""
        self._bad_request(f"bad arguments for {header.name}: {detail}")
        return "bad_request", self._codec.fault(
            header.name, header.seqid, FaultKind.BAD_REQUEST, detail
        )

    def call_one(self, job: Job) -> Reply:
        """Run one call, unless its deadline has passed."""
        dispatcher, frame, context = self._unpack(job)
        if dispatcher is not self:
            return dispatcher.call_one(job)
        if context is _NO_CONTEXT:
            return self._call_one(job, frame)
        if context.expired(time.monotonic()):
            return self._expired(frame)
        with context.applied():
            return self._call_one(job, frame)

    def _call_one(self, job: Job, frame: bytes) -> Reply:
        decoded = self._decode(frame)
        if not isinstance(decoded[0], Header):
            return decoded
        header, method, args = decoded
        if method.name in self._batched:
            return self.call_batch([job])[0]
        fn: Callable[..., Any] = getattr(self._handler, method.name)
        try:
            value = fn(*(getattr(args, name) for name in method.arg_names))
        except DeadlineExceeded as exc:  # from check_deadline(): not the handler's fault
            return "timeout", self._codec.fault(
                header.name, header.seqid, FaultKind.DEADLINE_EXCEEDED, str(exc)
            )
        except Exception as exc:
            return self._error_reply(header, method, exc)
        return self._success_reply(header, method, value)

    # -- calls on the worker's loop (issue 16: async def and @inline methods) ----------------

    async def call_on_loop(self, job: Job) -> Reply:
        """Run one call of an ``async def`` or ``@inline`` method on the running loop, with
        the same replies as :meth:`call_one` gives in a pool (results, declared exceptions,
        faults, an expired deadline)."""
        dispatcher, frame, context = self._unpack(job)
        if dispatcher is not self:
            return await dispatcher.call_on_loop(job)
        if context is not _NO_CONTEXT and context.expired(time.monotonic()):
            return self._expired(frame)
        decoded = self._decode(frame)
        if not isinstance(decoded[0], Header):
            return decoded
        header, method, args = decoded
        fn: Callable[..., Any] = getattr(self._handler, method.name)
        with context.applied():
            try:
                value = fn(*(getattr(args, name) for name in method.arg_names))
                if inspect.isawaitable(value):
                    value = await value
            except DeadlineExceeded as exc:
                return "timeout", self._codec.fault(
                    header.name, header.seqid, FaultKind.DEADLINE_EXCEEDED, str(exc)
                )
            except Exception as exc:
                return self._error_reply(header, method, exc)
        return self._success_reply(header, method, value)

    # -- end of calls on the worker's loop ---------------------------------------------------

    def call_batch(self, jobs: Sequence[Job]) -> list[Reply]:
        """Run calls of one batched method in a single handler call per protocol; calls
        whose deadline has passed are answered ``deadline exceeded`` and leave the batch.

        See :meth:`_call_batch`.
        """
        now = time.monotonic()
        replies: list[Reply | None] = [None] * len(jobs)
        groups: dict[int, tuple[Dispatcher, list[int], list[bytes]]] = {}
        for i, job in enumerate(jobs):
            dispatcher, frame, context = self._unpack(job)
            if context.deadline is not None and context.expired(now):
                replies[i] = dispatcher._expired(frame)
                continue
            group = groups.setdefault(id(dispatcher), (dispatcher, [], []))
            group[1].append(i)
            group[2].append(frame)
        for dispatcher, where, frames in groups.values():
            for i, reply in zip(where, dispatcher._call_batch(frames), strict=True):
                replies[i] = reply
        return [r for r in replies if r is not None]

    def _call_batch(self, frames: Sequence[bytes]) -> list[Reply]:
        """Run calls of one batched method in a single handler call.

        The handler receives a list with one entry per call (the argument itself for a
        one-argument method, else a tuple) and returns a list of results of the same length;
        an entry that is an exception fails only its own call. If the handler raises, every
        call of this batch fails with that error, and no call of another batch.
        """
        replies: list[Reply | None] = [None] * len(frames)
        calls: list[tuple[int, Header, MethodInfo, Any]] = []
        for i, frame in enumerate(frames):
            decoded = self._decode(frame)
            if isinstance(decoded[0], Header):
                header, method, args = decoded
                entry = tuple(getattr(args, n) for n in method.arg_names)
                calls.append((i, header, method, entry[0] if len(entry) == 1 else entry))
            else:
                replies[i] = decoded
        if calls:
            method = calls[0][2]
            fn: Callable[..., Any] = getattr(self._handler, method.name)
            try:
                results = list(fn([c[3] for c in calls]))
                if len(results) != len(calls):
                    raise TypeError(
                        f"batched {method.name} returned {len(results)} results "
                        f"for {len(calls)} calls"
                    )
            except Exception as exc:
                for i, header, m, _ in calls:
                    replies[i] = self._error_reply(header, m, exc)
            else:
                for (i, header, m, _), value in zip(calls, results, strict=True):
                    if isinstance(value, Exception):
                        replies[i] = self._error_reply(header, m, value)
                    else:
                        replies[i] = self._success_reply(header, m, value)
        return [r for r in replies if r is not None]

    def _success_reply(self, header: Header, method: MethodInfo, value: Any) -> Reply:
        if method.oneway:
            return "ok", None
        result = method.result_cls()
        if not method.returns_void:
            result.success = value
        try:
            return "ok", self._codec.encode_reply(method.name, header.seqid, result)
        except Exception as exc:
            log.error("%s returned a value that does not match the IDL: %r", method.name, exc)
            return "error", self._codec.fault(
                method.name,
                header.seqid,
                FaultKind.INTERNAL,
                f"handler returned a value that does not match the IDL for {method.name}: "
                f"{type(exc).__name__}: {exc}",
            )

    def _error_reply(self, header: Header, method: MethodInfo, exc: Exception) -> Reply:
        if isinstance(exc, TApplicationException):
            return "error", self._codec.encode_exception(method.name, header.seqid, exc)
        for field_name, exc_cls in method.exceptions:
            declared = _as_declared(exc, exc_cls)
            if declared is not None:
                if method.oneway:
                    return "exception", None
                result = method.result_cls()
                setattr(result, field_name, declared)
                try:
                    return "exception", self._codec.encode_reply(method.name, header.seqid, result)
                except Exception as encode_exc:
                    log.error(
                        "%s raised a %s that does not match the IDL: %r",
                        method.name,
                        type(exc).__name__,
                        encode_exc,
                    )
                    return "error", self._codec.fault(
                        method.name,
                        header.seqid,
                        FaultKind.INTERNAL,
                        f"handler raised a {type(exc).__name__} that does not match the IDL "
                        f"for {method.name}: {type(encode_exc).__name__}: {encode_exc}",
                    )
        log.error("%s raised %s: %s", method.name, type(exc).__name__, exc, exc_info=exc)
        if method.oneway:
            return "error", None
        return "error", self._codec.fault(
            method.name, header.seqid, FaultKind.INTERNAL, f"{type(exc).__name__}: {exc}"
        )


def _as_declared(exc: Exception, declared: Any) -> Any:
    """``exc`` as an instance of the declared exception class ``declared``, or None.

    An instance of the class itself is returned as it is. So is, converted, an instance of the
    same IDL type from another copy of the IDL (a handler that called ``thriftpy2.load``
    itself, under another module name or path): same type name, same fields (ids, types,
    names). Its field values are copied into a new instance of ``declared``; nested structs
    are kept, as thriftpy2 encodes a struct by its fields, not its class.
    """
    if isinstance(exc, declared):
        return exc
    kind = type(exc)
    if kind.__name__ != declared.__name__ or _layout(kind) != _layout(declared):
        return None
    names = [spec[1] for spec in declared.thrift_spec.values()]
    return declared(**{name: getattr(exc, name, None) for name in names})


def _layout(cls: Any) -> tuple[Any, ...] | None:
    """A struct class's fields as comparable data: (id, type, name, element types with
    struct classes by name, required) in id order; None for a class without a spec."""
    spec = getattr(cls, "thrift_spec", None)
    if not isinstance(spec, dict):
        return None
    return tuple(
        (fid, *(_type_key(part) for part in fields)) for fid, fields in sorted(spec.items())
    )


def _type_key(part: Any) -> Any:
    if isinstance(part, type):
        return ("struct", part.__name__)
    if isinstance(part, tuple | list):
        return tuple(_type_key(p) for p in part)
    return part


@dataclass(frozen=True)
class DispatcherFactory:
    """Builds a :class:`Dispatcher` inside a worker: loads the IDL and the handler there.

    Picklable, so that each child process of a process pool imports the handler once.

    Attributes:
        idl_path: the ``.thrift`` file.
        service: the service the handler implements.
        handler: ``package.module:Name`` (imported, and a class instantiated, in the
            worker), or the handler object itself (pickled to each child of a process pool).
        app_dir: the directory ``handler`` is imported from, put first on ``sys.path`` in
            every process that imports it (made absolute here, in the parent, so that a child
            started elsewhere finds the same one); empty: ``sys.path`` as it is.
    """

    idl_path: str
    service: str
    handler: str | Any
    protocol: ProtocolName = "binary"
    pool: str = "thread"
    workers: int = 1
    limits: DecodeLimits = DEFAULT_LIMITS
    app_dir: str = ""

    def __post_init__(self) -> None:
        if self.app_dir:
            object.__setattr__(self, "app_dir", os.path.abspath(self.app_dir))

    def __call__(self) -> Dispatcher:
        info = service_info(load_idl(self.idl_path), self.service)
        if not isinstance(self.handler, str):
            return self._build(info, self.handler)
        handler = load_handler(self.handler, self.app_dir)
        try:
            return self._build(info, handler)
        except Exception as exc:
            raise HandlerError(describe_failure(self.handler, exc)) from exc

    def _build(self, info: ServiceInfo, handler: Any) -> Dispatcher:
        # Optional hook: a handler that sizes its own thread use (torch, BLAS) by the pool.
        setup = getattr(handler, "setup_pool", None)
        if callable(setup):
            setup(self.pool, self.workers)
        return Dispatcher(info, handler, self.protocol, self.limits)

    def batch_methods(self) -> dict[str, tuple[int, float]]:
        """Batched methods of the handler class: name -> (max_batch, max_wait seconds).

        Raises:
            HandlerError: the handler named does not import.
        """
        if not isinstance(self.handler, str):
            return batch_options(self.handler)
        return batch_options(import_handler(self.handler, self.app_dir))

    def loop_methods(self, names: Sequence[str]) -> dict[str, str]:
        """Of the method ``names``, those the handler runs on the worker's loop, found
        without building it: name -> ``"async"`` or ``"inline"`` (see :mod:`offloop.inline`).

        Raises:
            HandlerError: the handler named does not import.
        """
        handler = self.handler
        if isinstance(handler, str):
            handler = import_handler(handler, self.app_dir)
        return loop_methods(handler, names)
