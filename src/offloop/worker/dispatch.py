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
``bytes``, so a plan made once per method (:class:`_StringCheck`) looks there and nowhere
else; a method without strings costs nothing. Bad requests are the caller's fault, so they are
logged at DEBUG, and at WARNING at most once per :data:`BAD_REQUEST_LOG_INTERVAL` seconds,
never with a traceback.
"""

from __future__ import annotations

import importlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from thriftpy2.thrift import TApplicationException, TType

from offloop.batching import batch_options
from offloop.codec.faults import FaultKind
from offloop.codec.guard import DEFAULT_LIMITS, DecodeLimits
from offloop.codec.message import Header, MessageCodec, ProtocolName
from offloop.errors import RemoteProtocolError
from offloop.idl import MethodInfo, ServiceInfo, load_idl, service_info

__all__ = ["OUTCOMES", "Dispatcher", "DispatcherFactory", "Reply", "load_handler"]

log = logging.getLogger("offloop.worker")

#: Outcome tags of a call, as counted in metrics.
OUTCOMES = ("ok", "exception", "error", "bad_request", "overloaded", "timeout", "crashed")

#: One call's reply: its outcome tag and the reply message (None for a oneway call).
Reply = tuple[str, bytes | None]

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


# -- strings that are not UTF-8 --------------------------------------------------------------

# Where strings can be in a value of one IDL type: ("s",) a string; ("list", elem) and
# ("set", elem); ("map", key, value), either None if it holds no string; ("struct", cls).
_Plan = tuple[Any, ...]
_STRING_PLAN: _Plan = ("s",)


class _StringCheck:
    """Finds a value of a string-typed place that thriftpy2 left as ``bytes`` (it does so
    when the bytes are not UTF-8) in a decoded struct, and names its path.

    Plans are made once per struct class from its ``thrift_spec`` and cover only the places
    that can hold strings (``binary`` is ``bytes`` by design and is never looked at). They are
    all made before serving (:meth:`prepare`), so that pool threads only read them.
    """

    def __init__(self) -> None:
        self._structs: dict[type, tuple[tuple[str, _Plan], ...]] = {}
        self._making: set[type] = set()  # struct classes whose plan is being made

    def prepare(self, cls: type) -> None:
        """Make the plans of struct class ``cls`` and of every struct it holds."""
        self._fields(cls)

    def find(self, struct: Any) -> str | None:
        """The path of the first string that is not UTF-8 in ``struct`` (``texts[2]``,
        ``doc.title``), or None."""
        found = self._find(struct, ("struct", type(struct)))
        return None if found is None else "".join(reversed(found)).lstrip(".")

    def _fields(self, cls: type) -> tuple[tuple[str, _Plan], ...]:
        fields = self._structs.get(cls)
        if fields is None:
            self._making.add(cls)
            try:
                plans = []
                for spec in getattr(cls, "thrift_spec", {}).values():
                    info = spec[2] if len(spec) > 3 else None
                    plan = self._plan(spec[0], info)
                    if plan is not None:
                        plans.append((str(spec[1]), plan))
            finally:
                self._making.discard(cls)
            fields = self._structs[cls] = tuple(plans)
        return fields

    def _plan(self, ttype: int, info: Any) -> _Plan | None:
        if ttype == TType.STRING:
            return _STRING_PLAN
        if ttype in (TType.LIST, TType.SET):
            elem = self._plan(*_type_of(info))
            return None if elem is None else ("list" if ttype == TType.LIST else "set", elem)
        if ttype == TType.MAP:
            key, value = self._plan(*_type_of(info[0])), self._plan(*_type_of(info[1]))
            return None if key is None and value is None else ("map", key, value)
        if ttype == TType.STRUCT:
            # A struct within itself (a tree) is kept: its own fields say if it holds strings.
            return ("struct", info) if info in self._making or self._fields(info) else None
        return None

    def _find(self, value: Any, plan: _Plan) -> list[str] | None:
        """The path to the first bad string in ``value``, innermost part first; the path is
        made only for what is found, and runs of strings are scanned at C speed."""
        if value is None:
            return None
        kind = plan[0]
        if kind == "s":
            return [] if isinstance(value, bytes) else None
        if kind == "list" or kind == "set":
            elem = plan[1]
            if elem is _STRING_PLAN and bytes not in map(type, value):
                return None
            for i, item in enumerate(value):
                found = self._find(item, elem)
                if found is not None:
                    found.append(f"[{i}]" if kind == "list" else "{}")
                    return found
            return None
        if kind == "map":
            key_plan, value_plan = plan[1], plan[2]
            if key_plan is not None and (key_plan is not _STRING_PLAN or bytes in map(type, value)):
                for key in value:
                    found = self._find(key, key_plan)
                    if found is not None:
                        found.append(" (a key)")
                        return found
            if value_plan is not None and (
                value_plan is not _STRING_PLAN or bytes in map(type, value.values())
            ):
                for key, item in value.items():
                    found = self._find(item, value_plan)
                    if found is not None:
                        found.append(f"[{key!r:.40}]")
                        return found
            return None
        for name, field_plan in self._fields(type(value)):
            found = self._find(getattr(value, name, None), field_plan)
            if found is not None:
                found.append(f".{name}")
                return found
        return None


def _type_of(info: Any) -> tuple[int, Any]:
    """A container's element spec as (type, info): thriftpy2 writes a bare type code for a
    scalar and (type, info) otherwise."""
    return (info, None) if isinstance(info, int) else (info[0], info[1])


def load_handler(spec: str) -> Any:
    """Import ``module:attr`` and return the object; a class is instantiated with no arguments.

    Raises:
        ImportError: the module or attribute does not exist.
    """
    obj = _import_handler(spec)
    return obj() if isinstance(obj, type) else obj


def _import_handler(spec: str) -> Any:
    """The object ``module:attr`` names, not instantiated.

    Raises:
        ImportError: the spec is malformed, or the module or attribute does not exist.
    """
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ImportError(f"handler must look like 'package.module:Name', got {spec!r}")
    module = importlib.import_module(module_name)
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ImportError(f"module {module_name!r} has no attribute {attr!r}") from None


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
    ) -> None:
        self._service = service
        self._handler = handler
        self._codec = MessageCodec(protocol, limits)
        self._strings = _StringCheck()
        for method in service.methods.values():
            self._strings.prepare(method.args_cls)
        self._bad_request = _RateLimitedWarning(BAD_REQUEST_LOG_INTERVAL)
        # A batched method takes a list of calls, so it is called that way even alone.
        self._batched = frozenset(batch_options(handler))
        missing = [m for m in service.methods if not callable(getattr(handler, m, None))]
        if missing:
            raise TypeError(
                f"handler {type(handler).__name__} lacks methods of service "
                f"{service.name}: {', '.join(missing)}"
            )

    def __call__(self, frames: Sequence[bytes]) -> list[Reply]:
        """Run each call of ``frames`` (one frame, or a batch of one batched method)."""
        if len(frames) == 1:
            return [self.call_one(frames[0])]
        return self.call_batch(frames)

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

    def call_one(self, frame: bytes) -> Reply:
        """Run one call."""
        decoded = self._decode(frame)
        if not isinstance(decoded[0], Header):
            return decoded
        header, method, args = decoded
        if method.name in self._batched:
            return self.call_batch([frame])[0]
        fn: Callable[..., Any] = getattr(self._handler, method.name)
        try:
            value = fn(*(getattr(args, name) for name in method.arg_names))
        except Exception as exc:
            return self._error_reply(header, method, exc)
        return self._success_reply(header, method, value)

    def call_batch(self, frames: Sequence[bytes]) -> list[Reply]:
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
            if isinstance(exc, exc_cls):
                if method.oneway:
                    return "exception", None
                result = method.result_cls()
                setattr(result, field_name, exc)
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


@dataclass(frozen=True)
class DispatcherFactory:
    """Builds a :class:`Dispatcher` inside a worker: loads the IDL and the handler there.

    Picklable, so that each child process of a process pool imports the handler once.

    Attributes:
        idl_path: the ``.thrift`` file.
        service: the service the handler implements.
        handler: ``package.module:Name`` (imported, and a class instantiated, in the
            worker), or the handler object itself (pickled to each child of a process pool).
    """

    idl_path: str
    service: str
    handler: str | Any
    protocol: ProtocolName = "binary"
    pool: str = "thread"
    workers: int = 1
    limits: DecodeLimits = DEFAULT_LIMITS

    def __call__(self) -> Dispatcher:
        info = service_info(load_idl(self.idl_path), self.service)
        handler = load_handler(self.handler) if isinstance(self.handler, str) else self.handler
        # Optional hook: a handler that sizes its own thread use (torch, BLAS) by the pool.
        setup = getattr(handler, "setup_pool", None)
        if callable(setup):
            setup(self.pool, self.workers)
        return Dispatcher(info, handler, self.protocol, self.limits)

    def batch_methods(self) -> dict[str, tuple[int, float]]:
        """Batched methods of the handler class: name -> (max_batch, max_wait seconds)."""
        if not isinstance(self.handler, str):
            return batch_options(self.handler)
        return batch_options(_import_handler(self.handler))
