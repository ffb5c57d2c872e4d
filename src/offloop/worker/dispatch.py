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
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from thriftpy2.thrift import TApplicationException

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
            log.warning("bad arguments for %s: %s", header.name, exc)
            return "bad_request", self._codec.fault(
                header.name, header.seqid, FaultKind.BAD_REQUEST, str(exc)
            )
        return header, method, args

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
