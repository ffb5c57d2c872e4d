"""watchdog: what the loop watchdog costs the gateway.

The same gateway twice, watchdog on (the default) and ``--no-watchdog``, in front of one
thread-pool worker; ``POST /rpc/TextLab/ping`` from closed-loop clients. The fronts are pinned
to one core and the generator and worker to the other, as in ``overhead``; the two contenders
alternate within each repeat, and the repeats are many and short so that drift on the machine
reaches both alike.
"""

from __future__ import annotations

import os
from typing import Any

from bench import plots
from bench.common import Services, Spread, fmt_ratio, latency_summary, ratio
from bench.loadgen import HttpStream, run_load
from bench.report import Context, ScenarioResult, Table
from bench.servers import gateway, rpc_body, worker

NAME = "watchdog"
SUMMARY = "requests/s of the gateway with its loop watchdog on and off"

CONCURRENCY = 32
"""Enough clients to keep the gateway's core busy."""

ON = "watchdog on (default)"
OFF = "--no-watchdog"


def run(ctx: Context) -> ScenarioResult:
    cpus = sorted(os.sched_getaffinity(0))
    pin = len(cpus) >= 2
    front = (cpus[0],) if pin else None
    rest = tuple(cpus[1:]) if pin else None
    result = ScenarioResult(
        NAME,
        "The loop watchdog costs nothing visible",
        "With the watchdog sampling loop lag and watching for stalls, the gateway serves as "
        "many requests/s as without it (the issue's bound: at most 3 % fewer).",
        "",
        f"Two `offloop gateway` (uvicorn, event-loop mode), one with the watchdog (the default: "
        f"a heartbeat every 10 ms, a lag sample every 0.25 s, a thread that wakes when a stall "
        f"could begin) and one with `--no-watchdog`, in front of one `offloop worker --pool "
        f"thread --workers 4 --max-queued 256`. `POST /rpc/TextLab/ping` from {CONCURRENCY} "
        f"closed-loop keep-alive clients. "
        + (
            f"Gateways pinned to CPU {cpus[0]}; worker and generator on the other CPU."
            if pin
            else "Nothing is pinned (one CPU)."
        )
        + " Contenders alternate within each repeat.",
    )
    # Many short repeats: the effect looked for (a few per cent) is the size of the drift
    # between two runs, which alternating only evens out over many.
    repeats = ctx.repeats(16)
    duration = ctx.seconds(2.5, 1.0)
    warmup = ctx.seconds(0.5, 0.3)
    stream = HttpStream(
        "calls", "/rpc/TextLab/ping", "POST", rpc_body(msg="hello"), connections=CONCURRENCY
    )
    samples: dict[str, dict[str, list[float]]] = {ON: {}, OFF: {}}
    raw: dict[str, Any] = {"runs": []}
    with Services(ctx.log_dir(NAME)) as svcs:
        ctx.begin(NAME, 1 + repeats * 2)
        ctx.step(f"{NAME}: starting servers")
        svcs.start(
            [worker("worker", pool="thread", workers=4, max_queued=256, cpus=rest)],
            on_wait=ctx.tick,
        )
        wport = svcs["worker"].port
        svcs.start(
            [
                gateway("on", wport, cpus=front),
                gateway("off", wport, extra=["--no-watchdog"], cpus=front),
            ],
            on_wait=ctx.tick,
        )
        ctx.advance()
        for rep in range(repeats):
            order = ((ON, "on"), (OFF, "off")) if rep % 2 == 0 else ((OFF, "off"), (ON, "on"))
            for label, name in order:
                ctx.step(f"{NAME}: {label} (repeat {rep + 1}/{repeats})")
                load = run_load(
                    svcs[name].port, [stream], duration=duration, warmup=warmup, cpus=rest
                )
                r = load["calls"]
                lat = latency_summary(r.latencies)
                s = samples[label]
                s.setdefault("rate", []).append(r.throughput)
                s.setdefault("p50", []).append(lat["p50"])
                s.setdefault("p99", []).append(lat["p99"])
                s.setdefault("failed", []).append(r.failed)
                s.setdefault("gen", []).append(load.max_process_util)
                raw["runs"].append({
                    "contender": label, "repeat": rep, "calls": r.summary(), "latency_ms": lat,
                    "generator": load.generator(),
                })  # fmt: skip
                ctx.advance()
    result.raw = raw
    base = Spread.of(samples[OFF]["rate"]).median
    rows = []
    for label in (ON, OFF):
        s = samples[label]
        rate = Spread.of(s["rate"])
        rows.append([
            label, rate.fmt(0), fmt_ratio(ratio(rate.median, base)), Spread.of(s["p50"]).fmt(2),
            Spread.of(s["p99"]).fmt(2), str(int(sum(s["failed"]))), f"{100 * max(s['gen']):.0f} %",
        ])  # fmt: skip
    result.tables.append(
        Table(
            f"POST /rpc/TextLab/ping from {CONCURRENCY} clients",
            ["gateway", "req/s", "vs --no-watchdog", "p50 ms", "p99 ms", "failed", "generator CPU"],
            rows,
            "Medians over repeats (min-max). Generator CPU: its busiest process, share of a core.",
        )
    )
    result.plots.append(
        plots.bars(
            ctx.out / f"{NAME}-rps.png",
            [ON, OFF],
            {"req/s": [_mmm(Spread.of(samples[k]["rate"])) for k in (ON, OFF)]},
            title=f"gateway req/s, {CONCURRENCY} clients: watchdog on and off",
            ylabel="requests/s",
        )
    )
    cost = 1.0 - ratio(Spread.of(samples[ON]["rate"]).median, base)
    result.notes.append(
        f"Target (issue 5): at most 3 % fewer requests/s with the watchdog on: "
        f"{'met' if cost <= 0.03 else 'MISSED'} ({100 * cost:+.1f} %; the spread of each "
        f"contender's repeats is in the table)."
    )
    result.reading = (
        "The watchdog's work is one timer callback every 10 ms on the loop and a thread that "
        "sleeps until a stall could begin: a few microseconds per hundredth of a second, "
        "below what run-to-run noise lets one see."
    )
    return result


def _mmm(s: Spread) -> tuple[float, float, float]:
    return (s.median, s.min, s.max)
