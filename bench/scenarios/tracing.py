"""tracing: what OpenTelemetry tracing (issue 13, ``offloop[otel]``) costs per request.

``POST /rpc/TextLab/ping`` through a gateway and a thread-pool worker, four ways, the same
processes and flags but for how tracing is set up in both tiers:

- **without the extra**: OpenTelemetry cannot be imported (the process starts with
  ``sys.modules["opentelemetry"] = None``, so that any import of it fails, as in an
  environment without the extra);
- **tracing off**: the extra installed, no ``OTEL_TRACES_EXPORTER`` (offloop's default);
- **on, 100 %** and **on, 1 %**: each tier installs the SDK's tracer provider with a
  parent-based ratio sampler and a batch span processor whose exporter drops every span (no
  network, no collector: what is measured is offloop's and the SDK's work, not an export),
  which offloop picks up as the application's provider (``docs/tracing.md``).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from bench import plots
from bench.common import ServerSpec, Services, Spread, fmt_ratio, latency_summary, ratio
from bench.loadgen import HttpStream, run_load
from bench.report import Context, ScenarioResult, Table
from bench.servers import gateway, rpc_body, worker

NAME = "tracing"
SUMMARY = "ping req/s: tracing off vs without the otel extra vs on at 100 % and 1 % sampling"

CONCURRENCY = 32
"""Clients of the throughput run (as the overhead scenario)."""

#: Contender -> the sampling ratio both tiers trace with ("" off, "missing": no extra).
VARIANTS: dict[str, str] = {
    "without the otel extra": "missing",
    "tracing off (default)": "",
    "tracing on, 100 % sampled": "1.0",
    "tracing on, 1 % sampled": "0.01",
}

#: Runs the ``offloop`` command after setting tracing up as ``BENCH_TRACING`` says.
BOOT = """
import os, sys
how = os.environ.get("BENCH_TRACING", "")
if how == "missing":
    sys.modules["opentelemetry"] = None  # import opentelemetry now fails: no extra
elif how:
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor, SpanExporter, SpanExportResult,
    )
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    class Drop(SpanExporter):
        def export(self, spans):
            return SpanExportResult.SUCCESS

    provider = TracerProvider(sampler=ParentBased(TraceIdRatioBased(float(how))))
    provider.add_span_processor(BatchSpanProcessor(Drop()))
    trace.set_tracer_provider(provider)
from offloop.cli import main
sys.argv = ["offloop", *sys.argv[1:]]
sys.exit(main())
"""


def _booted(spec: ServerSpec, how: str) -> ServerSpec:
    """``spec`` (an ``offloop`` command) started through :data:`BOOT`."""
    cmd = list(spec.cmd)
    assert cmd[1:3] == ["-m", "offloop.cli"], cmd
    env = {**spec.env, "BENCH_TRACING": how}
    return dataclasses.replace(spec, cmd=[cmd[0], "-c", BOOT, *cmd[3:]], env=env)


def run(ctx: Context) -> ScenarioResult:
    cpus = sorted(os.sched_getaffinity(0))
    pin = len(cpus) >= 2
    server_cpus = (cpus[0],) if pin else None
    gen_cpus = tuple(cpus[1:]) if pin else None
    result = ScenarioResult(
        NAME,
        "Tracing costs nothing when off",
        "With tracing off, or without the otel extra, offloop serves as many requests/s as "
        "it does without the feature; on, the cost is the SDK's spans, less at 1 % sampling.",
        "",
        f'`POST /rpc/TextLab/ping {{"msg": "hello"}}` through `offloop gateway` (uvicorn '
        f"front, loop mode) and `offloop worker --pool thread --workers 4 --max-queued 256`, "
        f"each variant with its own gateway and worker, both set up as the variant says "
        f"(spans exported to an exporter that drops them). Closed-loop keep-alive clients: "
        f"1 (latency) and {CONCURRENCY} (throughput). "
        + (
            f"Gateways on CPU {cpus[0]}, worker and generator on the rest."
            if pin
            else "Nothing is pinned (one CPU)."
        )
        + " Variants alternate within each repeat.",
    )
    repeats = ctx.repeats(3)
    d1 = ctx.seconds(2.0, 0.8)
    dn = ctx.seconds(3.0, 1.0)
    warmup = ctx.seconds(0.5, 0.3)
    body = rpc_body(msg="hello")
    one = HttpStream("c1", "/rpc/TextLab/ping", "POST", body, connections=1)
    many = HttpStream("cN", "/rpc/TextLab/ping", "POST", body, connections=CONCURRENCY)
    samples: dict[str, dict[str, list[float]]] = {}
    raw: dict[str, Any] = {"pinned": pin, "runs": []}
    names = {label: f"v{i}" for i, label in enumerate(VARIANTS)}
    with Services(ctx.log_dir(NAME)) as svcs:
        ctx.begin(NAME, 2 + repeats * len(VARIANTS))
        ctx.step(f"{NAME}: starting workers")
        svcs.start(
            [
                _booted(
                    worker(
                        f"w-{names[label]}", pool="thread", workers=4, max_queued=256, cpus=gen_cpus
                    ),
                    how,
                )
                for label, how in VARIANTS.items()
            ],
            on_wait=ctx.tick,
        )
        ctx.advance()
        ctx.step(f"{NAME}: starting gateways")
        svcs.start(
            [
                _booted(
                    gateway(f"g-{names[label]}", svcs[f"w-{names[label]}"].port, cpus=server_cpus),
                    how,
                )
                for label, how in VARIANTS.items()
            ],
            on_wait=ctx.tick,
        )
        ctx.advance()
        for rep in range(repeats):
            for label in VARIANTS:
                ctx.step(f"{NAME}: {label} (repeat {rep + 1}/{repeats})")
                port = svcs[f"g-{names[label]}"].port
                r1 = run_load(port, [one], duration=d1, warmup=warmup, cpus=gen_cpus)
                rn = run_load(port, [many], duration=dn, warmup=warmup, cpus=gen_cpus)
                l1 = latency_summary(r1["c1"].latencies)
                s = samples.setdefault(label, {})
                s.setdefault("c1_p50", []).append(l1["p50"])
                s.setdefault("rate", []).append(rn["cN"].throughput)
                s.setdefault("failed", []).append(r1["c1"].failed + rn["cN"].failed)
                raw["runs"].append({
                    "variant": label, "repeat": rep, "c1": r1["c1"].summary(),
                    "c1_latency_ms": l1, "cN": rn["cN"].summary(),
                })  # fmt: skip
                ctx.advance()
    result.raw = raw
    base = "tracing off (default)"
    base_rate = Spread.of(samples[base]["rate"]).median
    base_p50 = Spread.of(samples[base]["c1_p50"]).median
    rows = []
    for label, s in samples.items():
        rate = Spread.of(s["rate"])
        p50 = Spread.of(s["c1_p50"])
        rows.append([
            label, rate.fmt(0), fmt_ratio(ratio(rate.median, base_rate)), p50.fmt(3),
            f"{1000 * (p50.median - base_p50):+,.0f} us", str(int(sum(s["failed"]))),
        ])  # fmt: skip
    result.tables.append(
        Table(
            f"POST /rpc/TextLab/ping: requests/s at concurrency {CONCURRENCY}, latency at 1",
            [
                "tracing",
                f"c={CONCURRENCY} req/s",
                "req/s vs off",
                "c=1 p50 ms",
                "p50 added vs off",
                "failed",
            ],
            rows,
            "Medians over repeats (min-max).",
        )
    )
    labels = list(samples)
    result.plots.append(
        plots.bars(
            ctx.out / f"{NAME}-rps.png",
            [label.replace(", ", "\n").replace(" (", "\n(") for label in labels],
            {f"req/s at c={CONCURRENCY}": [_mmm(Spread.of(samples[k]["rate"])) for k in labels]},
            title=f"POST /rpc/TextLab/ping, {CONCURRENCY} clients",
            ylabel="requests/s",
        )
    )
    missing = Spread.of(samples["without the otel extra"]["rate"]).median
    result.notes.append(
        f"Tracing off vs without the extra: {fmt_ratio(ratio(base_rate, missing))} in req/s "
        "(the same code path: with tracing off offloop never imports OpenTelemetry, so the two "
        "differ only by run-to-run noise)."
    )
    result.reading = (
        "With tracing off each hook is one attribute read, so off and without the extra are "
        "the same within noise. On, every request makes five spans in two processes (HTTP "
        "server, client attempt, worker call and its queued and run children); at 1 % the "
        "unsampled spans are non-recording and cost a fraction of that."
    )
    return result


def _mmm(s: Spread) -> tuple[float, float, float]:
    return (s.median, s.min, s.max)
