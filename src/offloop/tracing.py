"""Traces across the tiers (issue 13): OpenTelemetry spans for what offloop does with a call.

With tracing on, one HTTP request gives one trace:

- the gateway's **server span** per HTTP request (:func:`http_span`, HTTP semantic
  conventions), continuing the caller's trace when the request carries ``traceparent``;
- under it, a **client span per attempt** to a backend (:func:`traced_attempt`, RPC semantic
  conventions): a retried call shows each attempt. The attempt's context travels to the
  worker as the ``traceparent``/``tracestate`` info headers (:data:`offloop.context.
  TRACE_HEADERS`);
- under that, the worker's **server span** for the call (:func:`call_span`), in the worker's
  main process (a process-pool child needs no OpenTelemetry), with the time the call spent
  queued and running as two child spans (``queued``, ``run``);
- a batch of a batched method gets a span of its own (:func:`batch_span`), the root of a
  trace of its own, with a link to each call it carries: no call's trace holds another's.

**This is the only module that imports** ``opentelemetry``, and only once tracing is on.
Every hook is guarded by the caller with ``if tracing.ENABLED:`` (one attribute read), so
with tracing off, or without the ``otel`` extra, offloop neither imports OpenTelemetry nor
spends more than that per call.

**When tracing is on.** :func:`setup` (called by ``offloop gateway`` and ``offloop worker``,
and by :func:`offloop.serve_gateway` and :func:`offloop.serve_worker`) turns it on when

1. ``OTEL_SDK_DISABLED`` is not ``true``, and
2. ``OTEL_TRACES_EXPORTER`` names an exporter (``otlp``, ``console``; not ``none``): offloop
   then builds the SDK's tracer provider with those exporters (OTLP over HTTP/protobuf,
   reading ``OTEL_EXPORTER_OTLP_ENDPOINT`` and its kin), the service name
   ``OTEL_SERVICE_NAME`` (default ``offloop-gateway`` or ``offloop-worker``) and the sampler
   ``OTEL_TRACES_SAMPLER``/``OTEL_TRACES_SAMPLER_ARG`` (the SDK's default: parent-based,
   always on), and installs it as the global provider; the extra must be installed (if it is
   not, a warning says so and tracing stays off);
3. or, when ``OTEL_TRACES_EXPORTER`` is not set, the embedding application has already
   installed a tracer provider of its own (OpenTelemetry imported, the global provider set):
   offloop's spans then go wherever the application's go.

An application (or a test) may also call :func:`enable` with a provider, and :func:`disable`.
The OpenTelemetry specification's default exporter is ``otlp``; offloop asks for the variable
to be set, so that installing the extra alone neither costs anything nor sends spans to a
collector nobody runs.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import os
import sys
import time
from collections.abc import Awaitable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, NamedTuple, TypeVar

from offloop.context import TRACE_HEADERS, TRACEPARENT_HEADER

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.trace import Span, SpanContext, TracerProvider

__all__ = [
    "ENABLED",
    "RPC_SYSTEM",
    "BatchSpan",
    "CallSpan",
    "HttpSpan",
    "Traced",
    "batch_span",
    "call_span",
    "disable",
    "enable",
    "http_span",
    "installed",
    "setup",
    "traced_attempt",
]

log = logging.getLogger("offloop.tracing")

T = TypeVar("T")

#: Whether tracing is on. Hooks are called only when it is (``if tracing.ENABLED:``).
ENABLED: bool = False
#: ``rpc.system`` of offloop's calls (OpenTelemetry's name for Apache Thrift).
RPC_SYSTEM: Final = "apache_thrift"
#: The name of offloop's tracer (its instrumentation scope).
TRACER_NAME: Final = "offloop"
#: Exporters :func:`setup` knows by name (``OTEL_TRACES_EXPORTER``).
EXPORTERS: Final = ("otlp", "console")


class _Api:
    """What the hooks use of OpenTelemetry, imported once when tracing is turned on."""

    def __init__(self, provider: TracerProvider | None) -> None:
        from opentelemetry import context, trace
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        try:
            version = importlib.metadata.version("offloop")
        except importlib.metadata.PackageNotFoundError:
            version = None
        self.tracer = (provider or trace.get_tracer_provider()).get_tracer(TRACER_NAME, version)
        self.propagator = TraceContextTextMapPropagator()
        self.attach = context.attach
        self.detach = context.detach
        self.set_span_in_context = trace.set_span_in_context
        self.current_span = trace.get_current_span
        self.Link = trace.Link
        self.SERVER = trace.SpanKind.SERVER
        self.CLIENT = trace.SpanKind.CLIENT
        self.INTERNAL = trace.SpanKind.INTERNAL
        self.error = trace.Status(trace.StatusCode.ERROR)
        self.Status = trace.Status
        self.ERROR = trace.StatusCode.ERROR
        self.root = context.Context()

    def extract(self, headers: Mapping[str, str]) -> Context | None:
        """The remote parent that ``headers`` carry (W3C ``traceparent``), or None."""
        if TRACEPARENT_HEADER not in headers:
            return None
        return self.propagator.extract(headers)

    def inject(self, context: Context | None) -> dict[str, str]:
        carrier: dict[str, str] = {}
        self.propagator.inject(carrier, context)
        return carrier


_api: _Api | None = None


def installed() -> bool:
    """Whether the ``otel`` extra (OpenTelemetry's API and SDK) is installed; imports
    nothing."""
    if importlib.util.find_spec("opentelemetry") is None:
        return False
    try:
        importlib.metadata.version("opentelemetry-sdk")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def enable(provider: TracerProvider | None = None) -> None:
    """Turn tracing on, with spans made by ``provider`` (default: the global provider).

    Raises:
        ImportError: OpenTelemetry is not installed.
    """
    global ENABLED, _api
    _api = _Api(provider)
    ENABLED = True


def disable() -> None:
    """Turn tracing off (spans already started still end)."""
    global ENABLED
    ENABLED = False


def setup(service_name: str, environ: Mapping[str, str] | None = None) -> bool:
    """Turn tracing on if the rule of the module docstring says so.

    Args:
        service_name: the service name when ``OTEL_SERVICE_NAME`` (or ``service.name`` in
            ``OTEL_RESOURCE_ATTRIBUTES``) does not give one.
        environ: the environment (default ``os.environ``).

    Returns:
        Whether tracing is on.
    """
    env = os.environ if environ is None else environ
    if ENABLED:
        return True
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    names = [n.strip().lower() for n in env.get("OTEL_TRACES_EXPORTER", "").split(",")]
    names = [n for n in names if n]
    if names:
        if "none" in names:
            return False
        if not installed():
            log.warning(
                "OTEL_TRACES_EXPORTER=%s but OpenTelemetry is not installed "
                "(pip install 'offloop[otel]'): tracing is off",
                ",".join(names),
            )
            return False
        enable(_sdk_provider(names, service_name, env))
        log.info("tracing on: exporters %s", ",".join(names))
        return True
    provider = _application_provider()
    if provider is None:
        return False
    enable(provider)
    log.info("tracing on: the application's tracer provider")
    return True


def _application_provider() -> TracerProvider | None:
    """The tracer provider the embedding application installed, if it did (without
    importing OpenTelemetry when the application has not)."""
    if "opentelemetry.trace" not in sys.modules:
        return None
    from opentelemetry import trace

    provider = trace.get_tracer_provider()
    if isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider):
        return None
    return provider


def _sdk_provider(names: Sequence[str], service_name: str, env: Mapping[str, str]) -> Any:
    """The SDK's tracer provider, exporting to ``names``, installed as the global one."""
    from opentelemetry import trace
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    named = env.get("OTEL_SERVICE_NAME") or "service.name=" in env.get(
        "OTEL_RESOURCE_ATTRIBUTES", ""
    )
    # Resource.create reads OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME; attributes given
    # here win over them, so the default name is given only when neither names a service.
    resource = Resource.create({} if named else {SERVICE_NAME: service_name})
    provider = TracerProvider(resource=resource)  # OTEL_TRACES_SAMPLER(_ARG): read by the SDK
    for name in names:
        if name == "otlp":
            protocol = env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get(
                "OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"
            )
            if protocol != "http/protobuf":
                log.warning("OTLP protocol %r is not supported; using http/protobuf", protocol)
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        elif name == "console":
            provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
        else:
            log.warning("unknown trace exporter %r ignored (known: %s)", name, EXPORTERS)
    if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        trace.set_tracer_provider(provider)  # for handlers that trace work of their own
    return provider


def _epoch_ns(perf_counter_at: float) -> int:
    """The wall-clock time (ns since the epoch, as spans take) of a ``perf_counter`` value."""
    return time.time_ns() - int((time.perf_counter() - perf_counter_at) * 1e9)


def _error_type(exc: BaseException) -> str:
    return type(exc).__qualname__


# -- the gateway: one server span per HTTP request -------------------------------------------


class HttpSpan:
    """The server span of one HTTP request, current while the request is served."""

    __slots__ = ("_method", "_span", "_token")

    def __init__(self, span: Span, token: object, method: str) -> None:
        self._span = span
        self._token = token
        self._method = method

    def detach(self) -> None:
        """Stop being the current span (where the request's context ends)."""
        if self._token is not None:
            assert _api is not None
            _api.detach(self._token)  # type: ignore[arg-type]
            self._token = None

    def end(
        self, route: str | None, status: int | None, error: BaseException | None = None
    ) -> None:
        """End the span: ``route`` as ``http.route`` (None: no route matched), the response's
        ``status`` (None: none was made, ``error`` says why)."""
        self.detach()
        span = self._span
        if route is not None:
            span.update_name(f"{self._method} {route}")
            span.set_attribute("http.route", route)
        assert _api is not None
        if status is not None:
            span.set_attribute("http.response.status_code", status)
            if status >= 500:
                span.set_attribute("error.type", str(status))
                span.set_status(_api.error)
        elif error is not None:
            span.set_attribute("error.type", _error_type(error))
            span.set_status(_api.Status(_api.ERROR, "request not answered"))
        span.end()


def http_span(
    method: str, path: str, headers: Mapping[str, str], client: str = "", request_id: str = ""
) -> HttpSpan:
    """Start the server span of an HTTP request and make it current; its parent is the
    caller's span when ``headers`` (names in lower case) carry ``traceparent``."""
    api = _api
    assert api is not None
    attributes: dict[str, str] = {"http.request.method": method, "url.path": path}
    if client:
        attributes["client.address"] = client
    if request_id:
        attributes["offloop.request_id"] = request_id
    span = api.tracer.start_span(
        method, context=api.extract(headers), kind=api.SERVER, attributes=attributes
    )
    return HttpSpan(span, api.attach(api.set_span_in_context(span)), method)


# -- the gateway's client: one span per attempt to reach a backend ------------------------------


async def traced_attempt(
    call: Awaitable[T], service: str, method: str | None, host: str, port: int, attempt: int
) -> T:
    """Await ``call`` (one attempt to reach a backend, not yet started) inside a client span
    whose context goes to the backend as its ``traceparent``/``tracestate`` info headers.

    Args:
        call: the attempt's coroutine; it must not have started (it runs in the span).
        service: the Thrift service (``rpc.service``).
        method: the Thrift method (``rpc.method``), if known.
        host: the backend's host (``server.address``).
        port: its port (``server.port``).
        attempt: 1 for the first attempt of a call, 2 for its first retry...
    """
    api = _api
    assert api is not None
    parent = api.current_span()
    if not parent.is_recording() and parent.get_span_context().is_valid:
        # An unsampled request: its attempts would not be recorded either (a child shares
        # its parent's fate under every sampler of the SDK). Only its context goes on, so
        # that the worker's spans are not sampled on their own.
        headers = TRACE_HEADERS.set(api.inject(None))
        try:
            return await call
        finally:
            TRACE_HEADERS.reset(headers)
    attributes: dict[str, str | int] = {
        "rpc.system": RPC_SYSTEM,
        "rpc.service": service,
        "server.address": host,
        "server.port": port,
        "offloop.attempt": attempt,
    }
    if method:
        attributes["rpc.method"] = method
    name = f"{service}/{method}" if method else service
    span = api.tracer.start_span(name, kind=api.CLIENT, attributes=attributes)
    context = api.set_span_in_context(span)
    token = api.attach(context)
    headers = TRACE_HEADERS.set(api.inject(context))
    try:
        return await call
    except BaseException as exc:
        span.set_attribute("error.type", _error_type(exc))
        span.set_status(api.Status(api.ERROR, str(exc)[:200]))
        raise
    finally:
        TRACE_HEADERS.reset(headers)
        api.detach(token)
        span.end()


# -- the worker: one server span per call, and one span per batch ------------------------------


def _phases(span: Span, started: int, start_ns: int, end_ns: int | None) -> None:
    """Give ``span`` (begun at ``started``) two children: ``queued`` until ``start_ns``,
    then ``run`` until ``end_ns`` (default now); all ns since the epoch."""
    api = _api
    if api is None or not span.is_recording():
        return
    parent = api.set_span_in_context(span)
    start_ns = max(start_ns, started)
    end_ns = time.time_ns() if end_ns is None else max(end_ns, start_ns)
    api.tracer.start_span("queued", parent, api.INTERNAL, start_time=started).end(start_ns)
    api.tracer.start_span("run", parent, api.INTERNAL, start_time=start_ns).end(end_ns)


class Traced(NamedTuple):
    """A batched call's job with its span, as the worker hands it to its batcher (which
    carries payloads without looking at them): the batch's span links to the call's."""

    payload: Any
    span: CallSpan


class CallSpan:
    """The worker's server span of one call, with its ``queued`` and ``run`` children.

    Made when the call's task begins (its start is the call's arrival); :meth:`running`
    marks the end of its wait and the start of its run (a pool reports when the job started
    running), :meth:`end` ends it.
    """

    __slots__ = ("_ran", "_span", "_started", "context")

    def __init__(self, span: Span, started: int) -> None:
        self._span = span
        self._started = started
        self._ran = False
        #: The span's context, for the link from a batch (:func:`batch_span`).
        self.context: SpanContext = span.get_span_context()

    def running(self, start_ns: int, end_ns: int | None = None) -> None:
        """Record the call's time ``queued`` (arrival to ``start_ns``) and ``run``
        (``start_ns`` to ``end_ns``, default now), both ns since the epoch."""
        if not self._ran:
            self._ran = True
            _phases(self._span, self._started, start_ns, end_ns)

    def batched(self, batch: BatchSpan) -> None:
        """Record that the call ran in ``batch`` (an event naming the batch's span)."""
        context = batch.context
        self._span.add_event(
            "batched",
            {
                "offloop.batch.trace_id": f"{context.trace_id:032x}",
                "offloop.batch.span_id": f"{context.span_id:016x}",
            },
        )

    def end(self, outcome: str) -> None:
        """End the span with the call's outcome tag (``ok``, ``timeout``...: the worker's
        metrics' ``outcome``); one other than ``ok`` or ``exception`` marks it failed."""
        span = self._span
        span.set_attribute("offloop.outcome", outcome)
        if outcome not in ("ok", "exception"):
            assert _api is not None
            span.set_attribute("error.type", outcome)
            span.set_status(_api.error)
        span.end()


def call_span(
    service: str,
    method: str,
    headers: Mapping[str, str],
    arrived: float,
    peer: str = "",
    request_id: str | None = None,
) -> CallSpan:
    """Start the worker's server span of a call whose info headers are ``headers``, which
    arrived at ``arrived`` (a :func:`time.perf_counter` value); its parent is the client's
    attempt span (``traceparent``)."""
    api = _api
    assert api is not None
    attributes: dict[str, str] = {
        "rpc.system": RPC_SYSTEM,
        "rpc.service": service,
        "rpc.method": method,
    }
    if peer:
        attributes["network.peer.address"] = peer
    if request_id:
        attributes["offloop.request_id"] = request_id
    started = _epoch_ns(arrived)
    span = api.tracer.start_span(
        f"{service}/{method}",
        context=api.extract(headers),
        kind=api.SERVER,
        attributes=attributes,
        start_time=started,
    )
    return CallSpan(span, started)


class BatchSpan:
    """The span of one batch: the root of its own trace, linked to each call it carries."""

    __slots__ = ("_span", "_started", "context")

    def __init__(self, span: Span, started: int) -> None:
        self._span = span
        self._started = started
        self.context: SpanContext = span.get_span_context()

    def running(self, start_ns: int, end_ns: int) -> None:
        """Record the batch's time ``queued`` in the pool and ``run`` (ns since the epoch)."""
        _phases(self._span, self._started, start_ns, end_ns)

    def end(self, error: BaseException | None = None) -> None:
        span = self._span
        if error is not None:
            assert _api is not None
            span.set_attribute("error.type", _error_type(error))
            span.set_status(_api.error)
        span.end()


def batch_span(service: str, method: str, calls: Sequence[CallSpan | None]) -> BatchSpan:
    """Start the span of a batch of ``method`` carrying ``calls`` (their spans; None for a
    call that has none), with a link to each."""
    api = _api
    assert api is not None
    links = [api.Link(c.context) for c in calls if c is not None]
    started = time.time_ns()
    span = api.tracer.start_span(
        f"{service}/{method} batch",
        context=api.root,  # no parent: a trace of its own
        kind=api.INTERNAL,
        attributes={
            "rpc.system": RPC_SYSTEM,
            "rpc.service": service,
            "rpc.method": method,
            "offloop.batch.size": len(calls),
        },
        links=links,
        start_time=started,
    )
    batch = BatchSpan(span, started)
    for call in calls:
        if call is not None:
            call.batched(batch)
    return batch
