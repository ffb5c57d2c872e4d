"""worker: the worker tier on its own, driven over Thrift (issue 2's figures).

- ``burn(50)`` from 8 concurrent callers on ``--pool process --workers 2``: calls/s against
  the physical limit, 2 cores / 50 ms = 40/s (target: at least 90 %);
- the same on ``--pool thread --workers 2`` (expected about 20/s: the GIL);
- ``crunch`` (GIL-releasing) on the thread pool, against 2 / its task time;
- ``ping`` from 64 concurrent callers on each pool, and on thriftpy2's own asyncio server
  (``make_aio_server``) running the handler inline: what the pool hand-off costs; and
  ``ping`` run on the worker's loop (``@inline``, ``async def``), without a hand-off.
"""

from __future__ import annotations

import os
from typing import Any

from bench import plots
from bench.common import Services, Spread, fmt_num, fmt_ratio, latency_summary, ratio
from bench.loadgen import ThriftStream, run_load
from bench.report import Context, ScenarioResult, Table
from bench.servers import baseline, worker

NAME = "worker"
SUMMARY = "worker tier over Thrift: burn/crunch vs the physical limit, ping vs thriftpy2's server"

POOL = 2
BURN_MS = 50
HEAVY_CALLERS = 8
PING_CALLERS = 64
CRUNCH_N = 800

PROCESS = "offloop worker, process pool"
THREAD = "offloop worker, thread pool"
THRIFTPY2 = "thriftpy2 make_aio_server, inline"
INLINE = "offloop worker, @inline ping"
ASYNC = "offloop worker, async def ping"
HANDLERS = "bench.scenarios.worker_handlers"


def run(ctx: Context) -> ScenarioResult:
    cores = len(os.sched_getaffinity(0))
    result = ScenarioResult(
        NAME,
        "The worker tier reaches the machine's limit on CPU work and adds little to light calls",
        f"A process-pool worker runs `burn({BURN_MS})` at close to {POOL} cores / {BURN_MS} ms; "
        "a thread pool gets half that on GIL-bound work but the full rate on GIL-releasing "
        "work; light calls cost little more than thriftpy2's own server running them inline.",
        "",
        f"Workers: `offloop worker --pool process --workers {POOL}` and `--pool thread "
        f"--workers {POOL}` (one BLAS thread per call), and thriftpy2's `make_aio_server` "
        f"(framed, binary, uvloop) calling the same handler inline. Load: offloop's "
        f"multiplexed Thrift client, closed loop: {HEAVY_CALLERS} callers for `burn` and "
        f"`crunch({CRUNCH_N})`, {PING_CALLERS} callers over two generator processes for "
        f"`ping` (its workers with `--max-queued {2 * PING_CALLERS} --nice 0`, so that every "
        f"caller is queued rather than refused and priority is the same as thriftpy2's). "
        f"Crunch's task time is one call's median latency on the idle thread pool. "
        f"Measurements alternate within each repeat; nothing is pinned.",
    )
    repeats = ctx.repeats(3)
    duration = ctx.seconds(3.0, 1.0)
    warmup = ctx.seconds(0.5, 0.3)
    burn = ThriftStream("calls", "burn", {"millis": BURN_MS}, callers=HEAVY_CALLERS)
    crunch = ThriftStream("calls", "crunch", {"n": CRUNCH_N}, callers=HEAVY_CALLERS)
    ping = ThriftStream("calls", "ping", {"msg": "hello"}, callers=PING_CALLERS, processes=2)
    runs = [
        ("burn", PROCESS, "process", burn),
        ("burn", THREAD, "thread", burn),
        ("crunch", THREAD, "thread", crunch),
        ("crunch", PROCESS, "process", crunch),
        ("ping", PROCESS, "ping-process", ping),
        ("ping", THREAD, "ping-thread", ping),
        ("ping", THRIFTPY2, "thriftpy2", ping),
        ("ping", INLINE, "ping-inline", ping),
        ("ping", ASYNC, "ping-async", ping),
    ]
    samples: dict[tuple[str, str], dict[str, list[float]]] = {}
    raw: dict[str, Any] = {"runs": []}
    with Services(ctx.log_dir(NAME)) as svcs:
        ctx.begin(NAME, 2 + repeats * len(runs))
        ctx.step(f"{NAME}: starting servers")
        svcs.start(
            [
                worker("process", pool="process", workers=POOL),
                worker("thread", pool="thread", workers=POOL),
                # For ping: a queue deep enough for every caller (the default, 4 per worker,
                # would answer most of them `overloaded`), and nice 0 like thriftpy2's server,
                # so that the ratio measures dispatch, not priority against the generator.
                worker(
                    "ping-process",
                    pool="process",
                    workers=POOL,
                    max_queued=2 * PING_CALLERS,
                    extra=["--nice", "0"],
                ),
                worker(
                    "ping-thread",
                    pool="thread",
                    workers=POOL,
                    max_queued=2 * PING_CALLERS,
                    extra=["--nice", "0"],
                ),
                baseline("thriftpy2", "thriftpy2_aio.py", ready_path=None),
                # Light calls on the worker's loop, no hand-off (the process pool stays
                # for the other methods).
                *(
                    worker(
                        f"ping-{kind}",
                        pool="process",
                        workers=POOL,
                        max_queued=2 * PING_CALLERS,
                        extra=["--nice", "0", "--handler", f"{HANDLERS}:{cls}"],
                    )
                    for kind, cls in (("inline", "InlineHandler"), ("async", "AsyncHandler"))
                ),
            ],
            on_wait=ctx.tick,
        )
        ctx.advance()
        ctx.step(f"{NAME}: task time of crunch({CRUNCH_N})")
        one = ThriftStream("one", "crunch", {"n": CRUNCH_N}, callers=1)
        crunch_ms = latency_summary(
            run_load(svcs["thread"].port, [one], duration=duration, warmup=warmup)["one"].latencies
        )["p50"]
        raw["crunch_task_ms"] = crunch_ms
        ctx.advance()
        for rep in range(repeats):
            for work, label, sname, stream in runs:
                ctx.step(f"{NAME}: {work} on {label} (repeat {rep + 1}/{repeats})")
                load = run_load(svcs[sname].port, [stream], duration=duration, warmup=warmup)
                r = load["calls"]
                lat = latency_summary(r.latencies)
                s = samples.setdefault((work, label), {})
                s.setdefault("rate", []).append(r.throughput)
                s.setdefault("p50", []).append(lat["p50"])
                s.setdefault("p99", []).append(lat["p99"])
                s.setdefault("gen", []).append(load.max_process_util)
                s.setdefault("failed", []).append(r.failed)
                raw["runs"].append({
                    "work": work, "server": label, "repeat": rep, "result": r.summary(),
                    "latency_ms": lat, "generator": load.generator(),
                })  # fmt: skip
                ctx.advance()
    result.raw = raw
    burn_limit = min(POOL, cores) / (BURN_MS / 1000)
    crunch_limit = min(POOL, cores) / (crunch_ms / 1000)
    limits = {"burn": burn_limit, "crunch": crunch_limit}
    rows = []
    for (work, label), s in samples.items():
        if work == "ping":
            continue
        rate = Spread.of(s["rate"])
        lim = limits[work]
        rows.append([
            f"{work}, {label}", rate.fmt(1), fmt_num(lim, 1),
            f"{100 * ratio(rate.median, lim):.0f} %", Spread.of(s["p50"]).fmt(1),
            Spread.of(s["p99"]).fmt(1),
        ])  # fmt: skip
    result.tables.append(
        Table(
            f"CPU work from {HEAVY_CALLERS} callers: calls/s against the physical limit",
            ["work, server", "calls/s", "limit", "of limit", "p50 ms", "p99 ms"],
            rows,
            f"Limits: burn {POOL} cores / {BURN_MS} ms; crunch({CRUNCH_N}) {POOL} cores / "
            f"{fmt_num(crunch_ms, 1)} ms (its measured task time). Medians over repeats "
            "(min-max).",
        )
    )
    base = Spread.of(samples.get(("ping", THRIFTPY2), {}).get("rate", [])).median
    ping_rows = []
    for (work, label), s in samples.items():
        if work != "ping":
            continue
        rate = Spread.of(s["rate"])
        ping_rows.append([
            label, rate.fmt(0), fmt_ratio(ratio(rate.median, base)), Spread.of(s["p50"]).fmt(2),
            Spread.of(s["p99"]).fmt(2), f"{100 * max(s['gen']):.0f} %",
        ])  # fmt: skip
    result.tables.append(
        Table(
            f"ping from {PING_CALLERS} concurrent callers",
            [
                "server",
                "calls/s",
                f"vs {THRIFTPY2}",
                "p50 ms",
                "p99 ms",
                "busiest generator process",
            ],
            ping_rows,
            "The generator shares the machine's cores with the server: on a two-core machine "
            "this measures the whole round trip's CPU cost more than the server alone.",
        )
    )
    order = [(w, label) for w, label, _, _ in runs if w != "ping"]
    result.plots.append(
        plots.bars(
            ctx.out / f"{NAME}-cpu.png",
            [f"{w}\n{label.replace('offloop worker, ', '')}" for w, label in order],
            {"calls/s": [_mmm(Spread.of(samples[k]["rate"])) for k in order]},
            title=f"CPU work, {HEAVY_CALLERS} callers (dashed: {POOL} cores / {BURN_MS} ms)",
            ylabel="calls/s",
            hline=(burn_limit, f"{burn_limit:g}/s"),
        )
    )
    pings = [(w, label) for w, label, _, _ in runs if w == "ping"]
    result.plots.append(
        plots.bars(
            ctx.out / f"{NAME}-ping.png",
            [label.replace(", ", "\n") for _, label in pings],
            {"calls/s": [_mmm(Spread.of(samples[k]["rate"])) for k in pings]},
            title=f"ping, {PING_CALLERS} concurrent callers",
            ylabel="calls/s",
        )
    )
    proc = Spread.of(samples[("burn", PROCESS)]["rate"]).median
    result.notes.append(
        f"Target (issue 2): burn({BURN_MS}) on the process pool ≥ 90 % of {burn_limit:g}/s: "
        f"{'met' if proc >= 0.9 * burn_limit else 'MISSED'} ({fmt_num(proc)}/s)."
    )
    for label in (INLINE, ASYNC):
        light = Spread.of(samples[("ping", label)]["rate"]).median
        result.notes.append(
            f"Target (issue 16): ping on {label} ≥ 0.9x {THRIFTPY2}: "
            f"{'met' if light >= 0.9 * base else 'MISSED'} ({fmt_ratio(ratio(light, base))})."
        )
    result.reading = (
        "The process pool turns both cores into burn calls; the thread pool runs one at a "
        "time whatever its size (the GIL), yet matches the process pool on crunch, whose "
        "matrix product releases the GIL. On ping, the pool hand-off (a queue and a thread or "
        "a pipe to a process per call) is the price of never running a handler on the loop; "
        "a method marked `@inline` or written `async def` runs on the loop and skips it."
    )
    return result


def _mmm(s: Spread) -> tuple[float, float, float]:
    return (s.median, s.min, s.max)
