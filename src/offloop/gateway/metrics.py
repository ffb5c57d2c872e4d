"""Prometheus metrics of the gateway, on a registry of its own (no global state)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from offloop.client.caller import BackendState

__all__ = ["LATENCY_BUCKETS", "GatewayMetrics"]

#: From 0.5 ms (a /healthz on an idle loop) to 60 s (past the default 30 s deadline).
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)


class GatewayMetrics:
    """Requests by route and status, latency by route, in-flight calls, backend states.

    The watchdog adds loop lag and stall metrics to the same registry.
    """

    def __init__(
        self,
        backends: Callable[[], Sequence[BackendState]],
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.requests = Counter(
            "offloop_gateway_requests",
            "HTTP requests answered, by route and status.",
            ["route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "offloop_gateway_request_seconds",
            "Time to answer an HTTP request, by route.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._children: dict[tuple[str, int], tuple[Any, Any]] = {}
        self._gateway_inflight: Callable[[], int] = lambda: 0
        self.registry.register(_BackendCollector(backends, lambda: self._gateway_inflight()))

    def track_inflight(self, fn: Callable[[], int]) -> None:
        """Report ``fn()`` as the gateway's calls in flight."""
        self._gateway_inflight = fn

    def observe(self, route: str, status: int, seconds: float) -> None:
        """Count one answered request."""
        # Label look-ups cost more than the increments; the children are cached per label
        # set. Routes are bounded (one per IDL method plus a few), and so are statuses.
        key = (route, status)
        children = self._children.get(key)
        if children is None:
            children = (self.requests.labels(route, str(status)), self.latency.labels(route))
            self._children[key] = children
        children[0].inc()
        children[1].observe(seconds)


class _BackendCollector(Collector):
    def __init__(
        self, backends: Callable[[], Sequence[BackendState]], inflight: Callable[[], int]
    ) -> None:
        self._backends = backends
        self._inflight = inflight

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "offloop_gateway_inflight_calls",
            "Calls in flight in the gateway.",
            value=self._inflight(),
        )
        up = GaugeMetricFamily(
            "offloop_gateway_backend_up",
            "1 while a backend is in rotation, else 0.",
            labels=["service", "backend"],
        )
        busy = GaugeMetricFamily(
            "offloop_gateway_backend_inflight_calls",
            "Calls in flight to a backend.",
            labels=["service", "backend"],
        )
        for s in self._backends():
            up.add_metric([s.service, s.address], 1.0 if s.up else 0.0)
            busy.add_metric([s.service, s.address], s.in_flight)
        yield up
        yield busy
