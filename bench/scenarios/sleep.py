"""sleep: 100 concurrent requests that each wait 100 ms, three ways.

``time.sleep`` inside a coroutine, ``await asyncio.sleep``, and the wait offloaded to an
offloop worker's thread pool through the gateway. Each burst is sent at once (one request per
connection, all connections opened first) while a probe sends ``GET /healthz`` every 5 ms.
"""

from __future__ import annotations

import json
from typing import Any

from bench import plots
from bench.common import Services, Spread, fmt_ratio, http_get, latency_summary, ratio
from bench.loadgen import HttpStream, run_load
from bench.report import Context, ScenarioResult, Table
from bench.servers import baseline, gateway, rpc_body, worker

NAME = "sleep"
SUMMARY = "100 concurrent 100 ms waits: time.sleep vs asyncio.sleep vs offloaded"

PROBE_RATE = 200.0
"""Light requests per second during the burst (one every 5 ms)."""

SYNC = "time.sleep in a coroutine"
ASYNC = "await asyncio.sleep"
OFFLOADED = "offloop gateway + thread worker"


def run(ctx: Context) -> ScenarioResult:
    requests = 50 if ctx.quick else 100
    millis = 50 if ctx.quick else 100
    result = ScenarioResult(
        NAME,
        "time.sleep in a coroutine stalls everyone",
        f"{requests} concurrent requests that each wait {millis} ms take {millis} ms in "
        f"all with `asyncio.sleep` or offloaded to a worker, but {requests} x {millis} ms with "
        f"`time.sleep` in a coroutine, which also stalls every other request for as long.",
        "",
        f"Each contender gets a burst of {requests} `POST /rpc/TextLab/sleep "
        f'{{"millis": {millis}}}` requests at once (one per connection, connections opened '
        f"first), while a probe sends `GET /healthz` every {1000 / PROBE_RATE:g} ms. The wall "
        f"time runs from the burst's start to its last answer; the worst stall is the probe's "
        f"worst latency, and, for the two plain ASGI apps (uvicorn), the worst lateness of a "
        f"5 ms timer measured inside the loop. The offloaded contender is the offloop gateway "
        f"(uvicorn, event-loop mode) in front of `offloop worker --pool thread --workers 128`. "
        f"Contenders alternate within each repeat.",
    )
    repeats = ctx.repeats(3)
    burst = HttpStream(
        "burst", "/rpc/TextLab/sleep", "POST", rpc_body(millis=millis), connections=requests,
        count=1,
    )  # fmt: skip
    probe = HttpStream("probe", "/healthz", rate=PROBE_RATE, connections=512)
    contenders = [
        (SYNC, baseline("sleep-sync", "sleep_asgi.py", "--style", "sync")),
        (ASYNC, baseline("sleep-async", "sleep_asgi.py", "--style", "async")),
    ]
    samples: dict[str, dict[str, list[float]]] = {}
    raw: dict[str, Any] = {"requests": requests, "millis": millis, "repeats": []}
    with Services(ctx.log_dir(NAME)) as svcs:
        ctx.begin(NAME, 1 + repeats * 3)
        ctx.step(f"{NAME}: starting servers")
        svcs.start(
            [spec for _, spec in contenders]
            + [worker("worker", pool="thread", workers=128, max_queued=256)],
            on_wait=ctx.tick,
        )
        contenders.append((OFFLOADED, gateway("gateway", svcs["worker"].port)))
        svcs.start([contenders[-1][1]], on_wait=ctx.tick)
        ctx.advance()
        for rep in range(repeats):
            entry: dict[str, Any] = {}
            for label, spec in contenders:
                ctx.step(f"{NAME}: {label} (repeat {rep + 1}/{repeats})")
                port = svcs[spec.name].port
                inside = spec.name.startswith("sleep-")
                if inside:
                    http_get(port, "/stall")  # reset
                load = run_load(port, [burst, probe], duration=120.0)
                stall = float("nan")
                if inside:
                    stall = json.loads(http_get(port, "/stall")[1])["max_stall_ms"]
                b, p = load["burst"], load["probe"]
                s = samples.setdefault(label, {})
                s.setdefault("wall", []).append(b.burst_wall * 1000)
                s.setdefault("probe_max", []).append(latency_summary(p.latencies)["max"])
                s.setdefault("probe_p50", []).append(latency_summary(p.latencies)["p50"])
                s.setdefault("inside", []).append(stall)
                s.setdefault("failed", []).append(b.failed)
                s.setdefault("gen", []).append(load.max_process_util)
                entry[label] = {
                    "burst": b.summary(),
                    "burst_latencies_ms": [round(v * 1000, 3) for v in b.latencies],
                    "probe": p.summary(),
                    "probe_latencies_ms": [round(v * 1000, 3) for v in p.latencies],
                    "loop_stall_inside_ms": stall,
                    "generator": load.generator(),
                }
                ctx.advance()
            raw["repeats"].append(entry)
    result.raw = raw
    rows = []
    for label, s in samples.items():
        wall = Spread.of(s["wall"])
        rows.append([
            label, wall.fmt(0), fmt_ratio(ratio(wall.median, millis)),
            Spread.of(s["probe_max"]).fmt(1), Spread.of(s["inside"]).fmt(1),
            Spread.of(s["probe_p50"]).fmt(2), str(sum(int(x) for x in s["failed"])),
        ])  # fmt: skip
    gen = max((max(s["gen"]) for s in samples.values()), default=0.0)
    result.tables.append(
        Table(
            f"{requests} concurrent requests that each wait {millis} ms",
            [
                "wait written as",
                "wall ms",
                f"wall / {millis} ms",
                "worst /healthz ms",
                "worst loop stall ms (inside)",
                "/healthz p50 ms",
                "failed",
            ],
            rows,
            f"Medians over repeats (min-max). Busiest generator process: {100 * gen:.0f} % of "
            "a core. Inside: a 5 ms timer's worst lateness in the app's own loop (- where the "
            "front is the offloop gateway: its watchdog exports a histogram, not a maximum).",
        )
    )
    labels = list(samples)
    result.plots.append(
        plots.bars(
            ctx.out / f"{NAME}-wall.png",
            labels,
            {
                "wall time of the burst": [_mmm(Spread.of(samples[k]["wall"])) for k in labels],
                "worst /healthz latency": [
                    _mmm(Spread.of(samples[k]["probe_max"])) for k in labels
                ],
            },
            title=f"{requests} concurrent requests that each wait {millis} ms",
            ylabel="ms (log scale)",
            log=True,
            hline=(float(millis), f"{millis} ms"),
        )
    )
    result.reading = (
        f"`time.sleep` on the loop serialises the waits ({requests} x {millis} ms) and holds "
        "up every other request for the whole burst. `asyncio.sleep` and the offloaded wait "
        "both finish in about one wait; offloading costs a little extra (two hops and a "
        "thread per waiting call in the worker) but needs no change to blocking code."
    )
    return result


def _mmm(s: Spread) -> tuple[float, float, float]:
    return (s.median, s.min, s.max)
