"""Prometheus metrics of a worker server, on a registry of its own (no global state)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from offloop.runtime.base import PoolStats

__all__ = ["LATENCY_BUCKETS", "ConnectionStats", "WorkerMetrics"]

#: From 1 ms to 60 s: light calls land in the first buckets, deep-learning and parse calls
#: in the middle, runaway calls near the default 30 s deadline at the top.
LATENCY_BUCKETS = (
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


@dataclass(frozen=True, slots=True)
class ConnectionStats:
    """A snapshot of what the server's connections hold.

    Attributes:
        partial_bytes: bytes of frames not yet whole, summed over all connections (bounded
            by ``max_partial_bytes``).
        throttled: connections not read now because they have ``max_calls_per_connection``
            calls in progress.
    """

    partial_bytes: int
    throttled: int


class WorkerMetrics:
    """Calls by method and outcome, latency, queue depth, busy workers, child restarts, and
    what connections hold (when ``connections`` is given)."""

    def __init__(
        self,
        stats: Callable[[], PoolStats],
        registry: CollectorRegistry | None = None,
        connections: Callable[[], ConnectionStats] | None = None,
    ):
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.calls = Counter(
            "offloop_worker_calls",
            "Calls answered, by method and outcome.",
            ["method", "outcome"],
            registry=r,
        )
        self.latency = Histogram(
            "offloop_worker_call_seconds",
            "Time from a call's arrival to its reply.",
            ["method"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.connections = Gauge(
            "offloop_worker_connections", "Open client connections.", registry=r
        )
        self.protocol_errors = Counter(
            "offloop_worker_protocol_errors",
            "Connections closed for bad input (garbage, oversized or truncated frames, a "
            "frame that did not arrive whole within frame_timeout).",
            ["reason"],
            registry=r,
        )
        self.connections_shed = Counter(
            "offloop_worker_connections_shed",
            "Connections closed to keep the worker within a limit of its own (partial_bytes: "
            "partial frames of all connections over max_partial_bytes).",
            ["reason"],
            registry=r,
        )
        self.throttles = Counter(
            "offloop_worker_connection_throttles",
            "Times a connection reached max_calls_per_connection and stopped being read.",
            registry=r,
        )
        self.batch_size = Histogram(
            "offloop_worker_batch_size",
            "Calls merged into one batch of a batched method.",
            ["method"],
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=r,
        )
        r.register(_PoolCollector(stats))
        if connections is not None:
            r.register(_ConnectionCollector(connections))
        # The labelled children, looked up once: ``labels()`` takes a lock and builds a key on
        # every call, a few per cent of a light call's cost (issue 16). Bounded: the IDL's
        # methods (and "<unknown>") times the outcomes.
        self._calls: dict[tuple[str, str], Any] = {}
        self._latency: dict[str, Any] = {}

    def observe(self, method: str, outcome: str, seconds: float) -> None:
        """Count one answered call."""
        counter = self._calls.get((method, outcome))
        if counter is None:
            counter = self._calls[(method, outcome)] = self.calls.labels(method, outcome)
        counter.inc()
        histogram = self._latency.get(method)
        if histogram is None:
            histogram = self._latency[method] = self.latency.labels(method)
        histogram.observe(seconds)


class _PoolCollector(Collector):
    """Reads the pool's statistics when scraped, so they are never stale."""

    def __init__(self, stats: Callable[[], PoolStats]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        s = self._stats()
        yield GaugeMetricFamily(
            "offloop_worker_queue_depth", "Calls waiting for a worker.", value=s.queued
        )
        yield GaugeMetricFamily(
            "offloop_worker_busy_workers", "Workers running a call.", value=s.busy
        )
        yield GaugeMetricFamily(
            "offloop_worker_alive_workers", "Workers ready or running a call.", value=s.alive
        )
        yield CounterMetricFamily(
            "offloop_worker_child_restarts",
            "Worker processes replaced since start (died, or killed at their deadline).",
            value=s.restarts,
        )


class _ConnectionCollector(Collector):
    """Reads what the connections hold when scraped."""

    def __init__(self, stats: Callable[[], ConnectionStats]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        s = self._stats()
        yield GaugeMetricFamily(
            "offloop_worker_partial_frame_bytes",
            "Bytes of frames not yet whole, all connections.",
            value=s.partial_bytes,
        )
        yield GaugeMetricFamily(
            "offloop_worker_throttled_connections",
            "Connections not read because they have max_calls_per_connection calls in progress.",
            value=s.throttled,
        )
