"""Prometheus metrics of the gateway, on a registry of its own (no global state)."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator, Sequence

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from offloop.client.caller import BackendState

__all__ = ["BACKEND_STATES", "LATENCY_BUCKETS", "GatewayMetrics"]

#: The states of a backend (:mod:`offloop.client.balancer`), one series each.
BACKEND_STATES = ("up", "down", "draining")

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
        self._requests = _RequestCollector()
        self.registry.register(self._requests)
        self._gateway_inflight: Callable[[], int] = lambda: 0
        self.registry.register(_BackendCollector(backends, lambda: self._gateway_inflight()))

    def track_inflight(self, fn: Callable[[], int]) -> None:
        """Report ``fn()`` as the gateway's calls in flight."""
        self._gateway_inflight = fn

    def observe(self, route: str, status: int, seconds: float) -> None:
        """Count one answered request (on the gateway's loop)."""
        self._requests.observe(route, status, seconds)


class _RequestCollector(Collector):
    """``offloop_gateway_requests_total{route,status}`` and the histogram
    ``offloop_gateway_request_seconds{route}``, kept as plain numbers.

    prometheus_client's Counter and Histogram take a lock per update (three per request);
    these are only updated on the gateway's loop, and read by a scrape served on that loop
    too, so no lock is needed. Routes are bounded (one per IDL method plus a few), and so
    are statuses.
    """

    def __init__(self) -> None:
        self._counts: dict[tuple[str, int], int] = {}
        # route -> [count per bucket (the last one past every bound), sum of seconds]
        self._latency: dict[str, tuple[list[int], list[float]]] = {}

    def observe(self, route: str, status: int, seconds: float) -> None:
        key = (route, status)
        counts = self._counts
        counts[key] = counts.get(key, 0) + 1
        latency = self._latency.get(route)
        if latency is None:
            latency = self._latency[route] = ([0] * (len(LATENCY_BUCKETS) + 1), [0.0])
        latency[0][bisect_left(LATENCY_BUCKETS, seconds)] += 1
        latency[1][0] += seconds

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "offloop_gateway_requests",
            "HTTP requests answered, by route and status.",
            labels=["route", "status"],
        )
        for (route, status), count in list(self._counts.items()):
            requests.add_metric([route, str(status)], count)
        yield requests
        latency = HistogramMetricFamily(
            "offloop_gateway_request_seconds",
            "Time to answer an HTTP request, by route.",
            labels=["route"],
        )
        for route, (buckets, total) in list(self._latency.items()):
            cumulative, running = [], 0
            for bound, count in zip((*LATENCY_BUCKETS, float("inf")), buckets, strict=True):
                running += count
                cumulative.append((_bound(bound), float(running)))
            latency.add_metric([route], cumulative, sum_value=total[0])
        yield latency


def _bound(value: float) -> str:
    return "+Inf" if value == float("inf") else repr(value)


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
        state = GaugeMetricFamily(
            "offloop_gateway_backend_state",
            "1 for a backend's state (up, down or draining), 0 for the others; source is "
            "'static' or the DNS target that found it.",
            labels=["service", "backend", "source", "state"],
        )
        for s in self._backends():
            up.add_metric([s.service, s.address], 1.0 if s.up else 0.0)
            busy.add_metric([s.service, s.address], s.in_flight)
            for name in BACKEND_STATES:
                state.add_metric(
                    [s.service, s.address, s.source, name], 1.0 if s.state == name else 0.0
                )
        yield up
        yield busy
        yield state
