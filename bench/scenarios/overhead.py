"""overhead: what the gateway path costs for a call that does nothing.

``POST /rpc/TextLab/ping`` through the gateway (HTTP parse, JSON to Thrift, a multiplexed
Thrift call to a thread-pool worker and back) against bare hello-world servers that answer the
same request with a fixed body: Tornado, and a raw ASGI app on uvicorn. At concurrency 1 (the
added latency) and at concurrency 32 (requests per second).
"""

from __future__ import annotations

import os
from typing import Any

from bench import plots
from bench.common import Services, Spread, fmt_num, fmt_ratio, latency_summary, ratio
from bench.loadgen import HttpStream, run_load
from bench.report import Context, ScenarioResult, Table
from bench.servers import baseline, gateway, rpc_body, worker

NAME = "overhead"
SUMMARY = "no-op call through the gateway vs bare Tornado and uvicorn hello worlds"

CONCURRENCY = 32
"""Clients of the throughput run: enough to keep a one-core server busy."""

TORNADO = "bare Tornado hello world"
UVICORN = "bare uvicorn ASGI hello world"
GW_UVICORN = "offloop gateway, uvicorn front"
GW_TORNADO = "offloop gateway, Tornado front"
GW_ACTOR = "offloop actor gateway, uvicorn"


def run(ctx: Context) -> ScenarioResult:
    cpus = sorted(os.sched_getaffinity(0))
    pin = len(cpus) >= 2
    server_cpus = (cpus[0],) if pin else None
    gen_cpus = tuple(cpus[1:]) if pin else None
    pinning = (
        f"Fronts are pinned to CPU {cpus[0]}, the generator to "
        f"CPU{'s' if len(cpus) > 2 else ''} {', '.join(map(str, cpus[1:]))}: every front gets "
        "one core, as the hello worlds do, and the generator never competes with it. The "
        "worker is the other tier: it runs beside the generator, not on the front's core "
        "(the generator's CPU share shows it kept its headroom)."
        if pin
        else "Nothing is pinned (one CPU)."
    )
    result = ScenarioResult(
        NAME,
        "The gateway path is cheap",
        "A no-op call through the gateway and its worker costs a fraction of a millisecond "
        "more than a bare hello world, and its requests/s stay in the same range.",
        "",
        f'Every contender answers `POST /rpc/TextLab/ping {{"msg": "hello"}}`: the bare '
        f"servers with a fixed body, the gateways by calling `ping` on one `offloop worker "
        f"--pool thread --workers 4 --max-queued 256`. Gateways: event-loop mode with the "
        f"uvicorn front (the default) and the Tornado front, and the actor mode. Closed-loop "
        f"keep-alive clients: "
        f"1 (latency) and {CONCURRENCY} (throughput), one generator process. {pinning} "
        f"Contenders alternate within each repeat.",
    )
    repeats = ctx.repeats(3)
    d1 = ctx.seconds(2.0, 0.8)
    d32 = ctx.seconds(3.0, 1.0)
    warmup = ctx.seconds(0.5, 0.3)
    body = rpc_body(msg="hello")
    one = HttpStream("c1", "/rpc/TextLab/ping", "POST", body, connections=1)
    many = HttpStream("cN", "/rpc/TextLab/ping", "POST", body, connections=CONCURRENCY)
    samples: dict[str, dict[str, list[float]]] = {}
    raw: dict[str, Any] = {"pinned": pin, "server_cpus": server_cpus, "runs": []}
    with Services(ctx.log_dir(NAME)) as svcs:
        ctx.begin(NAME, 1 + repeats * 5)
        ctx.step(f"{NAME}: starting servers")
        specs: list[tuple[str, Any]] = [
            (TORNADO, baseline("hello-tornado", "hello_tornado.py", cpus=server_cpus)),
            (UVICORN, baseline("hello-uvicorn", "hello_uvicorn.py", cpus=server_cpus)),
        ]
        svcs.start(
            [s for _, s in specs]
            + [worker("worker", pool="thread", workers=4, max_queued=256, cpus=gen_cpus)],
            on_wait=ctx.tick,
        )
        wport = svcs["worker"].port
        gws = [
            (GW_UVICORN, gateway("gw-uvicorn", wport, cpus=server_cpus)),
            (GW_TORNADO, gateway("gw-tornado", wport, server="tornado", cpus=server_cpus)),
            (GW_ACTOR, gateway("gw-actor", wport, mode="actor", cpus=server_cpus)),
        ]
        failed = svcs.start([s for _, s in gws], optional=True, on_wait=ctx.tick)
        for label, spec in gws:
            if spec.name in failed:
                result.notes.append(f"{label} did not start, left out: {failed[spec.name]}")
            else:
                specs.append((label, spec))
        ctx.advance()
        for rep in range(repeats):
            for label, spec in specs:
                ctx.step(f"{NAME}: {label} (repeat {rep + 1}/{repeats})")
                port = svcs[spec.name].port
                r1 = run_load(port, [one], duration=d1, warmup=warmup, cpus=gen_cpus)
                rn = run_load(port, [many], duration=d32, warmup=warmup, cpus=gen_cpus)
                l1 = latency_summary(r1["c1"].latencies)
                ln = latency_summary(rn["cN"].latencies)
                s = samples.setdefault(label, {})
                s.setdefault("c1_p50", []).append(l1["p50"])
                s.setdefault("c1_p99", []).append(l1["p99"])
                s.setdefault("rate", []).append(rn["cN"].throughput)
                s.setdefault("cN_p50", []).append(ln["p50"])
                s.setdefault("gen", []).append(rn.max_process_util)
                s.setdefault("failed", []).append(r1["c1"].failed + rn["cN"].failed)
                raw["runs"].append({
                    "server": label, "repeat": rep, "c1": r1["c1"].summary(), "c1_latency_ms": l1,
                    "cN": rn["cN"].summary(), "cN_latency_ms": ln, "generator": rn.generator(),
                })  # fmt: skip
                ctx.advance()
    result.raw = raw
    base_rate = Spread.of(samples[TORNADO]["rate"]).median
    base_p50 = Spread.of(samples[TORNADO]["c1_p50"]).median
    uv_p50 = Spread.of(samples[UVICORN]["c1_p50"]).median
    rows = []
    for label, s in samples.items():
        rate = Spread.of(s["rate"])
        p50 = Spread.of(s["c1_p50"])
        rows.append([
            label, p50.fmt(3), Spread.of(s["c1_p99"]).fmt(3),
            f"{1000 * (p50.median - base_p50):+,.0f} us",
            f"{1000 * (p50.median - uv_p50):+,.0f} us",
            rate.fmt(0), fmt_ratio(ratio(rate.median, base_rate)), Spread.of(s["cN_p50"]).fmt(2),
            f"{100 * max(s['gen']):.0f} %", str(int(sum(s["failed"]))),
        ])  # fmt: skip
    result.tables.append(
        Table(
            "POST /rpc/TextLab/ping: latency at concurrency 1, requests/s at concurrency "
            f"{CONCURRENCY}",
            [
                "server",
                "c=1 p50 ms",
                "c=1 p99 ms",
                "p50 added vs Tornado",
                "p50 added vs uvicorn",
                f"c={CONCURRENCY} req/s",
                "req/s vs Tornado",
                f"c={CONCURRENCY} p50 ms",
                "generator CPU",
                "failed",
            ],
            rows,
            "Medians over repeats (min-max). Generator CPU: its busiest process at "
            f"concurrency {CONCURRENCY}, share of one core.",
        )
    )
    labels = list(samples)
    short = [label.replace("offloop ", "").replace(", ", "\n").replace(" hello", "\nhello")
             for label in labels]  # fmt: skip
    result.plots.append(
        plots.bars(
            ctx.out / f"{NAME}-rps.png",
            short,
            {f"req/s at c={CONCURRENCY}": [_mmm(Spread.of(samples[k]["rate"])) for k in labels]},
            title=f"POST /rpc/TextLab/ping, {CONCURRENCY} clients"
            + (" (servers on one core)" if pin else ""),
            ylabel="requests/s",
        )
    )
    result.plots.append(
        plots.bars(
            ctx.out / f"{NAME}-latency.png",
            short,
            {
                "p50": [_mmm(Spread.of(samples[k]["c1_p50"])) for k in labels],
                "p99": [_mmm(Spread.of(samples[k]["c1_p99"])) for k in labels],
            },
            title="POST /rpc/TextLab/ping, one client",
            ylabel="ms",
        )
    )
    for label in (GW_UVICORN, GW_TORNADO):
        if label not in samples:
            continue
        gw_rate = Spread.of(samples[label]["rate"]).median
        added = Spread.of(samples[label]["c1_p50"]).median - base_p50
        result.notes.append(
            f"Target (issue 3), {label}: req/s ≥ bare Tornado: "
            f"{'met' if gw_rate >= base_rate else 'MISSED'} ({fmt_num(gw_rate, 0)} vs "
            f"{fmt_num(base_rate, 0)}); added p50 at c=1 < 1 ms: "
            f"{'met' if added < 1.0 else 'MISSED'} ({1000 * added:+,.0f} µs)."
        )
    if GW_UVICORN in samples and GW_TORNADO in samples:
        a = Spread.of(samples[GW_UVICORN]["rate"]).median
        b = Spread.of(samples[GW_TORNADO]["rate"]).median
        result.notes.append(
            f"Front choice: uvicorn / Tornado = {fmt_ratio(ratio(a, b))} in req/s; the "
            f"{'uvicorn' if a >= b else 'Tornado'} front is the faster here."
        )
    result.reading = (
        "The gateway does real work per call that a hello world does not (JSON to Thrift, a "
        "second hop to the worker and a thread hand-off there), all on one core here; what "
        "it adds at concurrency 1 is the second hop. The uvicorn front (httptools parser) "
        "is the cheaper HTTP layer; Tornado parses HTTP in Python."
    )
    return result


def _mmm(s: Spread) -> tuple[float, float, float]:
    return (s.median, s.min, s.max)
