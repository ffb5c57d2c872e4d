"""embed: sentence embeddings through the gateway, dynamic batching on against off.

Two thread-pool workers serve the real all-MiniLM-L6-v2 model (``offloop[dl]``): one with
``embed`` batched (the default, ``@batched(max_batch=32, max_wait_ms=5)``), one with
``--no-batching``; one gateway in front of each. Closed-loop clients, each sending one text per
call, at 1, 8 and 64 concurrent callers; the two contenders alternate within each repeat.
Each repeat also measures the model alone, called in process at batch sizes 1, 8 and 32
(``bench.scenarios.embed_inprocess``): what batching at 64 callers is held against.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
from typing import Any

from bench import plots
from bench.common import PY, ROOT, Services, Spread, fmt_num, fmt_ratio, latency_summary, ratio
from bench.loadgen import HttpStream, run_load
from bench.report import Context, ScenarioResult, Table
from bench.servers import SINGLE_BLAS_THREAD, gateway, rpc_body, worker

NAME = "embed"
SUMMARY = "sentence embeddings through the gateway: dynamic batching on vs off"

CALLERS = (1, 8, 64)
"""Concurrent callers: one alone, a few, more than a batch (32) holds."""

TEXT = "The quick brown fox jumps over the lazy dog near the river bank."
"""One text per call: the batcher, not the caller, makes the batches."""

WORKERS = 2
"""Pool threads; torch gets cores // WORKERS intra-op threads each (no oversubscription)."""

ON = "batching on"
OFF = "batching off"

MODEL_BATCHES = (1, 8, 32)
"""Batch sizes of the in-process measurement: one text, a few, the worker's max_batch."""


def run(ctx: Context) -> ScenarioResult:
    result = ScenarioResult(
        NAME,
        "Dynamic batching multiplies inference throughput",
        "Merging calls that arrive together into one forward pass gives several times the "
        "embeddings/s with many callers, with no worse tail latency.",
        "",
        f"Two `offloop worker --pool thread --workers {WORKERS} --max-queued 256` serving "
        f"textlab's `embed` (all-MiniLM-L6-v2 on CPU torch), one with batching (`embed` is "
        f"`@batched(max_batch=32, max_wait_ms=5)`), one with `--no-batching`; an offloop "
        f"gateway (uvicorn, event-loop mode) in front of each. Closed-loop keep-alive clients "
        f'send `POST /rpc/TextLab/embed {{"texts": ["..."]}}` (one text per call) at '
        f"{', '.join(map(str, CALLERS))} concurrent callers. Contenders alternate within each "
        f"repeat; nothing is pinned.",
    )
    if importlib.util.find_spec("sentence_transformers") is None:
        result.notes.append(
            "skipped: the deep-learning extra is not installed (pip install 'offloop[dl]')"
        )
        result.reading = "Not measured on this machine."
        return result
    repeats = ctx.repeats(3)
    duration = ctx.seconds(4.0, 1.5)
    warmup = ctx.seconds(1.0, 0.5)
    body = rpc_body(texts=[TEXT])
    samples: dict[tuple[str, int], dict[str, list[float]]] = {}
    raw: dict[str, Any] = {"runs": []}
    with Services(ctx.log_dir(NAME)) as svcs:
        ctx.begin(NAME, 2 + repeats * (2 * len(CALLERS) + 1))
        ctx.step(f"{NAME}: starting workers (loading the model)")
        svcs.start(
            [
                worker("w-on", pool="thread", workers=WORKERS, max_queued=256),
                worker("w-off", pool="thread", workers=WORKERS, max_queued=256,
                       extra=["--no-batching"]),
            ],
            on_wait=ctx.tick,
        )  # fmt: skip
        svcs.start(
            [gateway("g-on", svcs["w-on"].port), gateway("g-off", svcs["w-off"].port)],
            on_wait=ctx.tick,
        )
        ctx.advance()
        ctx.step(f"{NAME}: loading the model in each worker")
        first = HttpStream("first", "/rpc/TextLab/embed", "POST", body, connections=1, count=1)
        for name in ("g-on", "g-off"):
            run_load(svcs[name].port, [first], duration=120.0)
        ctx.advance()
        for rep in range(repeats):
            for callers in CALLERS:
                for label, name in ((ON, "g-on"), (OFF, "g-off")):
                    ctx.step(f"{NAME}: {label}, {callers} callers (repeat {rep + 1}/{repeats})")
                    stream = HttpStream(
                        "calls", "/rpc/TextLab/embed", "POST", body, connections=callers,
                        processes=2 if callers > 8 else 1,
                    )  # fmt: skip
                    load = run_load(svcs[name].port, [stream], duration=duration, warmup=warmup)
                    r = load["calls"]
                    lat = latency_summary(r.latencies)
                    s = samples.setdefault((label, callers), {})
                    s.setdefault("rate", []).append(r.throughput)
                    s.setdefault("p50", []).append(lat["p50"])
                    s.setdefault("p99", []).append(lat["p99"])
                    s.setdefault("failed", []).append(r.failed)
                    s.setdefault("gen", []).append(load.max_process_util)
                    raw["runs"].append({
                        "contender": label, "callers": callers, "repeat": rep,
                        "calls": r.summary(), "latency_ms": lat, "generator": load.generator(),
                    })  # fmt: skip
                    ctx.advance()
            ctx.step(f"{NAME}: the model in process (repeat {rep + 1}/{repeats})")
            rates = _in_process(duration)
            for size, per_s in rates.items():
                samples.setdefault(("model", size), {}).setdefault("rate", []).append(per_s)
            raw.setdefault("in_process", []).append(rates)
    result.raw = raw
    rows = []
    for callers in CALLERS:
        for label in (ON, OFF):
            s = samples[(label, callers)]
            rate = Spread.of(s["rate"])
            other = Spread.of(samples[(OFF if label == ON else ON, callers)]["rate"]).median
            rows.append([
                str(callers), label, rate.fmt(1),
                fmt_ratio(ratio(rate.median, other)) if label == ON else "1.00x",
                Spread.of(s["p50"]).fmt(1), Spread.of(s["p99"]).fmt(1),
                str(int(sum(s["failed"]))), f"{100 * max(s['gen']):.0f} %",
            ])  # fmt: skip
    result.tables.append(
        Table(
            "Embeddings/s and latency (ms), one text per call",
            [
                "callers",
                "contender",
                "embeddings/s",
                "on / off",
                "p50 ms",
                "p99 ms",
                "failed",
                "generator CPU",
            ],
            rows,
            "Medians over repeats (min-max). Generator CPU: its busiest process, share of a core.",
        )
    )
    result.plots.append(
        plots.bars(
            ctx.out / f"{NAME}-throughput.png",
            [f"{c} callers" for c in CALLERS],
            {
                label: [_mmm(Spread.of(samples[(label, c)]["rate"])) for c in CALLERS]
                for label in (ON, OFF)
            },
            title="embed through the gateway: embeddings/s",
            ylabel="embeddings/s",
        )
    )
    result.plots.append(
        plots.bars(
            ctx.out / f"{NAME}-p99.png",
            [f"{c} callers" for c in CALLERS],
            {
                label: [_mmm(Spread.of(samples[(label, c)]["p99"])) for c in CALLERS]
                for label in (ON, OFF)
            },
            title="embed through the gateway: p99 latency",
            ylabel="ms",
        )
    )
    top = CALLERS[-1]
    on = samples[(ON, top)]
    off = samples[(OFF, top)]
    gain = ratio(Spread.of(on["rate"]).median, Spread.of(off["rate"]).median)
    p99_on, p99_off = Spread.of(on["p99"]).median, Spread.of(off["p99"]).median
    result.notes.append(
        f"Target (issue 7), {top} callers: throughput with batching ≥ 3x without: "
        f"{'met' if gain >= 3 else 'MISSED'} ({fmt_ratio(gain)}); "
        f"p99 no worse: {'met' if p99_on <= p99_off else 'MISSED'} "
        f"({p99_on:,.1f} vs {p99_off:,.1f} ms)."
    )
    lone = ratio(
        Spread.of(samples[(ON, 1)]["rate"]).median, Spread.of(samples[(OFF, 1)]["rate"]).median
    )
    result.notes.append(
        f"Target (issue 16), 1 caller: batching on ≥ 0.95x off: "
        f"{'met' if lone >= 0.95 else 'MISSED'} ({fmt_ratio(lone)})."
    )
    best_size, best = max(
        ((size, Spread.of(samples[("model", size)]["rate"]).median) for size in MODEL_BATCHES),
        key=lambda item: item[1],
    )
    served = Spread.of(on["rate"]).median
    result.notes.append(
        f"Target (issue 16), {top} callers: ≥ 90 % of the model's in-process throughput at its "
        f"best batch size ({best_size}: {fmt_num(best)}/s, measured in this run; by size: "
        + ", ".join(
            f"{size}: {fmt_num(Spread.of(samples[('model', size)]['rate']).median)}/s"
            for size in MODEL_BATCHES
        )
        + f"): {'met' if served >= 0.9 * best else 'MISSED'} "
        f"({100 * ratio(served, best):.0f} %, {fmt_num(served)}/s)."
    )
    result.reading = (
        "Alone, a call finds a worker idle and leaves at once, as a batch of one, so batching "
        "costs nothing at one caller. With many callers each forward pass carries up to 32 "
        "texts for little more than the cost of one: calls that arrive while the workers run "
        "batches join the next one, so throughput grows with the batch, and queued calls "
        "wait for fewer passes, which is why the tail shrinks too."
    )
    return result


def _mmm(s: Spread) -> tuple[float, float, float]:
    return (s.median, s.min, s.max)


def _in_process(seconds: float) -> dict[int, float]:
    """The model's embeddings/s at each of :data:`MODEL_BATCHES`, called directly in a
    process of its own with every core (:mod:`bench.scenarios.embed_inprocess`)."""
    out = subprocess.run(
        [PY, "-m", "bench.scenarios.embed_inprocess", TEXT, str(seconds)]
        + [str(size) for size in MODEL_BATCHES],
        cwd=ROOT,
        env={**os.environ, **SINGLE_BLAS_THREAD},
        capture_output=True,
        check=True,
        timeout=600,
    )
    return {
        int(size): rate for size, rate in json.loads(out.stdout.decode().splitlines()[-1]).items()
    }
