"""The gateway's request counter and latency histogram, as Prometheus reads them."""

from __future__ import annotations

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from offloop.gateway.metrics import LATENCY_BUCKETS, GatewayMetrics


def _samples(metrics: GatewayMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(metrics.registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_requests_are_counted_by_route_and_status_and_timed_in_le_buckets() -> None:
    metrics = GatewayMetrics(lambda: [])
    route = "/rpc/TextLab/ping"
    # On a bound (counted in it: Prometheus buckets are "less or equal"), between two
    # bounds, and past the last one.
    for seconds in (LATENCY_BUCKETS[0], 0.003, LATENCY_BUCKETS[-1] * 2):
        metrics.observe(route, 200, seconds)
    metrics.observe(route, 503, 0.0001)
    metrics.observe("/healthz", 200, 0.0001)
    got = _samples(metrics)
    total = "offloop_gateway_requests_total"
    assert got[(total, (("route", route), ("status", "200")))] == 3
    assert got[(total, (("route", route), ("status", "503")))] == 1
    assert got[(total, (("route", "/healthz"), ("status", "200")))] == 1

    def bucket(le: str) -> float:
        return got[("offloop_gateway_request_seconds_bucket", (("le", le), ("route", route)))]

    assert bucket("0.0005") == 2  # the 0.1 ms call and the one on the bound
    assert bucket("0.0025") == 2
    assert bucket("0.005") == 3
    assert bucket("60.0") == 3
    assert bucket("+Inf") == 4
    count = got[("offloop_gateway_request_seconds_count", (("route", route),))]
    assert count == 4
    total_seconds = got[("offloop_gateway_request_seconds_sum", (("route", route),))]
    assert abs(total_seconds - (0.0005 + 0.003 + 120.0 + 0.0001)) < 1e-9
