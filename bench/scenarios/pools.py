"""pools: worker throughput against pool size, for process and thread pools.

Six ``offloop worker`` servers (process and thread pools of 1, 2 and 4) are driven directly
over Thrift with each kind of work: ``burn`` (pure Python, holds the GIL), ``parse`` (NLTK
chart parsing, pure Python) and ``crunch`` (a numpy matrix product, releases the GIL). Each is
compared with the physical limit, ``min(pool size, cores) / task time``, where the task time
is one call's latency on an idle worker.
"""

from __future__ import annotations

import os
from typing import Any

from bench import plots
from bench.common import Services, Spread, fmt_num, latency_summary, ratio
from bench.loadgen import ThriftStream, run_load
from bench.report import Context, ScenarioResult, Table
from bench.servers import PARSE_SENTENCE, worker

NAME = "pools"
SUMMARY = "calls/s against pool size (1, 2, 4): process vs thread pools, GIL-bound vs not"

SIZES = (1, 2, 4)
QUICK_SIZES = (1, 2)
WORKLOADS: dict[str, tuple[str, dict[str, Any], str]] = {
    "burn(50)": ("burn", {"millis": 50}, "pure Python, holds the GIL"),
    "parse": ("parse", {"sentence": PARSE_SENTENCE}, "NLTK Earley parser, pure Python"),
    "crunch(800)": ("crunch", {"n": 800}, "numpy 800x800 matmul, releases the GIL"),
}
"""Name -> (method, arguments, what it is)."""


def run(ctx: Context) -> ScenarioResult:
    cores = len(os.sched_getaffinity(0))
    sizes = QUICK_SIZES if ctx.quick else SIZES
    result = ScenarioResult(
        NAME,
        "Processes beat threads on pure-Python CPU work; threads suffice for GIL-releasing work",
        "A process pool scales GIL-bound work (burn, parse) up to the cores; a thread pool "
        "stays at one core's worth whatever its size. For work that releases the GIL (crunch) "
        "a thread pool scales too, without the cost of processes.",
        "",
        f"Six workers, `offloop worker --pool process|thread --workers 1|2|4` (one BLAS thread "
        f"per call: `OPENBLAS_NUM_THREADS=1`), driven over Thrift by offloop's multiplexed "
        f"client with 2 x pool-size concurrent callers (closed loop). Task time: one call's "
        f"median latency on the idle one-process worker. Physical limit: min(pool size, "
        f"{cores} cores) / task time. Workers and workloads alternate within each repeat; "
        f"nothing is pinned.",
    )
    repeats = ctx.repeats(2)
    duration = ctx.seconds(2.0, 0.8)
    warmup = ctx.seconds(0.5, 0.3)
    kinds = ("process", "thread")
    cells = [(w, k, n) for w in WORKLOADS for k in kinds for n in sizes]
    samples: dict[tuple[str, str, int], list[float]] = {}
    task_ms: dict[str, float] = {}
    raw: dict[str, Any] = {"cores": cores, "task_time_ms": task_ms, "runs": []}
    with Services(ctx.log_dir(NAME)) as svcs:
        ctx.begin(NAME, 1 + len(WORKLOADS) + repeats * len(cells))
        ctx.step(f"{NAME}: starting {len(kinds) * len(sizes)} workers")
        svcs.start(
            [worker(f"{k}-{n}", pool=k, workers=n) for k in kinds for n in sizes],
            on_wait=ctx.tick,
        )
        ctx.advance()
        for wname, (method, args, _) in WORKLOADS.items():
            ctx.step(f"{NAME}: task time of {wname}")
            one = ThriftStream("one", method, args, callers=1)
            load = run_load(svcs["process-1"].port, [one], duration=duration, warmup=warmup)
            task_ms[wname] = latency_summary(load["one"].latencies)["p50"]
            ctx.advance()
        for rep in range(repeats):
            for wname, kind, size in cells:
                method, args, _ = WORKLOADS[wname]
                ctx.step(f"{NAME}: {wname} on {kind} pool of {size} (repeat {rep + 1}/{repeats})")
                stream = ThriftStream("calls", method, args, callers=2 * size, pool_size=2)
                load = run_load(svcs[f"{kind}-{size}"].port, [stream], duration=duration,
                                warmup=warmup)  # fmt: skip
                r = load["calls"]
                samples.setdefault((wname, kind, size), []).append(r.throughput)
                raw["runs"].append({
                    "workload": wname, "pool": kind, "size": size, "repeat": rep,
                    "result": r.summary(), "latency_ms": latency_summary(r.latencies),
                    "generator": load.generator(),
                })  # fmt: skip
                ctx.advance()
    result.raw = raw

    def limit(wname: str, size: int) -> float:
        return min(size, cores) / (task_ms[wname] / 1000)

    rows = []
    for wname, (_, _, what) in WORKLOADS.items():
        for kind in kinds:
            row = [f"{wname}, {kind} pool"]
            for size in sizes:
                s = Spread.of(samples[(wname, kind, size)])
                row.append(f"{s.fmt(1)}; {100 * ratio(s.median, limit(wname, size)):.0f} %")
            rows.append(row)
        rows.append(
            [f"{wname}: limit ({fmt_num(task_ms[wname], 1)} ms/call; {what})"]
            + [fmt_num(limit(wname, size), 1) for size in sizes]
        )
    result.tables.append(
        Table(
            "Calls/s by pool size; share of the physical limit",
            ["work, pool"] + [f"{n} worker{'s' if n > 1 else ''}" for n in sizes],
            rows,
            f"Medians over repeats (min-max). Limit: min(pool size, {cores} cores) / task time.",
        )
    )
    x = [float(n) for n in sizes]
    result.plots.append(
        plots.panels(
            ctx.out / f"{NAME}.png",
            x,
            {
                wname: {
                    f"{kind} pool": [Spread.of(samples[(wname, kind, n)]).median for n in sizes]
                    for kind in kinds
                }
                for wname in WORKLOADS
            },
            refs={
                wname: {"physical limit": [limit(wname, n) for n in sizes]} for wname in WORKLOADS
            },
            title=f"Calls/s against pool size ({cores} cores)",
            xlabel="pool size",
            ylabel="calls/s",
        )
    )
    result.reading = (
        "burn and parse: the process pool follows the limit up to the number of cores, then "
        "stays flat (more processes than cores only share them); the thread pool stays at "
        "one core's worth at every size: the GIL lets one thread run Python at a time. "
        "crunch: the thread pool scales like the process pool, since the matrix product "
        "runs without the GIL, and needs no process start-up, pickling or per-process memory."
    )
    return result
