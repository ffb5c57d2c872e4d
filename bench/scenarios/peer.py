"""peer: the same runs against Ray Serve (two replicas), a peer design, when it installs.

Light-under-heavy (as in cpu-blocks-the-loop) and the no-op call (as in overhead), for the
offloop gateway with a two-process worker and for Ray Serve with two replicas of the same
handler behind its HTTP proxy. Without ``ray[serve]`` the scenario says so and is skipped.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from typing import Any

from bench import plots
from bench.common import Services, Spread, fmt_ratio, latency_summary, ratio
from bench.loadgen import HttpStream, run_load
from bench.report import Context, ScenarioResult, Table
from bench.scenarios.cpu_blocks_the_loop import (
    HEAVY_CLIENTS,
    HEAVY_MILLIS,
    PROBE_CONNECTIONS,
    PROBE_RATE,
)
from bench.servers import baseline, gateway, rpc_body, worker

NAME = "peer"
SUMMARY = "light-under-heavy and no-op calls: offloop vs Ray Serve (2 replicas), if installed"

REPLICAS = 2
CONCURRENCY = 32
OFFLOOP = "offloop gateway + process worker"
RAY = "Ray Serve, 2 replicas"
INSTALL = "pip install 'ray[serve]'"


def ray_missing() -> str | None:
    """Why Ray Serve cannot run here, or None when it can."""
    if importlib.util.find_spec("ray") is None:
        return f"ray[serve] is not installed ({INSTALL})"
    try:
        if (
            importlib.util.find_spec("ray.serve") is None
            or importlib.util.find_spec("fastapi") is None
        ):
            return f"ray is installed without its serve extra ({INSTALL})"
    except (ImportError, ValueError) as exc:
        return f"ray.serve cannot be imported: {exc} ({INSTALL})"
    return None


def run(ctx: Context) -> ScenarioResult:
    result = ScenarioResult(
        NAME,
        "Against a peer: Ray Serve",
        "On one machine, offloop's gateway keeps light requests fast under CPU-heavy load and "
        "adds less per call than a general-purpose serving framework with the same number "
        "of worker processes.",
        "",
        f"Ray Serve (local Ray instance, no dashboard, no access log): a FastAPI ingress "
        f"deployment with {REPLICAS} replicas of the TextLab handler (`rpc` is a sync `def`, "
        f"`/healthz` an `async def`), behind Ray's HTTP proxy. offloop: the gateway (uvicorn, "
        f"event-loop mode) in front of `offloop worker --pool process --workers {REPLICAS} "
        f"--max-queued 64`. "
        f"Runs: a `GET /healthz` probe every {1000 / PROBE_RATE:g} ms idle and while "
        f"{HEAVY_CLIENTS} clients call `burn({HEAVY_MILLIS})`; `POST /rpc/TextLab/ping` from "
        f"1 client (latency) and {CONCURRENCY} clients (requests/s). Contenders alternate "
        f"within each repeat; nothing is pinned.",
    )
    missing = ray_missing()
    if missing is not None:
        result.skipped = missing
        result.notes.append(f"skipped: {missing}")
        return result
    repeats = ctx.repeats(2)
    idle_s = ctx.seconds(2.0, 1.0)
    loaded_s = ctx.seconds(4.0, 1.5)
    d1 = ctx.seconds(2.0, 0.8)
    dn = ctx.seconds(3.0, 1.0)
    warm = ctx.seconds(1.0, 0.5)
    probe = HttpStream("probe", "/healthz", rate=PROBE_RATE, connections=PROBE_CONNECTIONS)
    heavy = HttpStream("heavy", "/rpc/TextLab/burn", "POST", rpc_body(millis=HEAVY_MILLIS),
                       connections=HEAVY_CLIENTS)  # fmt: skip
    body = rpc_body(msg="hello")
    one = HttpStream("c1", "/rpc/TextLab/ping", "POST", body, connections=1)
    many = HttpStream("cN", "/rpc/TextLab/ping", "POST", body, connections=CONCURRENCY)
    samples: dict[str, dict[str, list[Any]]] = {}
    raw: dict[str, Any] = {"runs": []}
    with Services(ctx.log_dir(NAME)) as svcs:
        ctx.begin(NAME, 1 + repeats * 2)
        ctx.step(f"{NAME}: starting offloop and Ray Serve")
        ray_spec = baseline("ray-serve", "ray_serve.py", "--replicas", str(REPLICAS))
        ray_spec = dataclasses.replace(ray_spec, timeout=240.0)
        failed = svcs.start(
            [worker("worker", pool="process", workers=REPLICAS, max_queued=64), ray_spec],
            optional=True,
            on_wait=ctx.tick,
        )
        if "worker" in failed:
            raise failed["worker"]
        svcs.start([gateway("gateway", svcs["worker"].port)], on_wait=ctx.tick)
        contenders = [(OFFLOOP, "gateway")]
        if "ray-serve" in failed:
            result.notes.append(f"Ray Serve did not start, left out: {failed['ray-serve']}")
        else:
            contenders.append((RAY, "ray-serve"))
        ctx.advance()
        for rep in range(repeats):
            for label, sname in contenders:
                ctx.step(f"{NAME}: {label} (repeat {rep + 1}/{repeats})")
                port = svcs[sname].port
                idle = run_load(port, [probe], duration=idle_s, warmup=0.3)
                loaded = run_load(port, [probe, heavy], duration=loaded_s, warmup=warm)
                r1 = run_load(port, [one], duration=d1, warmup=warm)
                rn = run_load(port, [many], duration=dn, warmup=warm)
                s = samples.setdefault(label, {})
                s.setdefault("idle", []).append(latency_summary(idle["probe"].latencies))
                s.setdefault("loaded", []).append(latency_summary(loaded["probe"].latencies))
                s.setdefault("loaded_lat", []).extend(v * 1000 for v in loaded["probe"].latencies)
                s.setdefault("heavy", []).append(loaded["heavy"].throughput)
                s.setdefault("c1", []).append(latency_summary(r1["c1"].latencies))
                s.setdefault("rate", []).append(rn["cN"].throughput)
                s.setdefault("failed", []).append(loaded["heavy"].failed + rn["cN"].failed)
                raw["runs"].append({
                    "server": label, "repeat": rep,
                    "idle_probe": latency_summary(idle["probe"].latencies),
                    "loaded_probe": loaded["probe"].summary(),
                    "loaded_latencies_ms": [round(v * 1000, 3) for v in loaded["probe"].latencies],
                    "heavy": loaded["heavy"].summary(), "c1": r1["c1"].summary(),
                    "c1_latency_ms": latency_summary(r1["c1"].latencies), "cN": rn["cN"].summary(),
                    "generator": [x.generator() for x in (idle, loaded, r1, rn)],
                })  # fmt: skip
                ctx.advance()
    result.raw = raw

    def sp(label: str, key: str, field: str | None = None) -> Spread:
        vals = samples[label][key]
        return Spread.of(v[field] for v in vals) if field else Spread.of(vals)

    base99 = sp(OFFLOOP, "loaded", "p99").median
    base_rate = sp(OFFLOOP, "rate").median
    base_c1 = sp(OFFLOOP, "c1", "p50").median
    rows = []
    for label in samples:
        p99 = sp(label, "loaded", "p99")
        rate = sp(label, "rate")
        c1 = sp(label, "c1", "p50")
        rows.append([
            label, sp(label, "idle", "p99").fmt(2), sp(label, "loaded", "p50").fmt(2), p99.fmt(2),
            fmt_ratio(ratio(p99.median, base99)), sp(label, "heavy").fmt(1), c1.fmt(3),
            fmt_ratio(ratio(c1.median, base_c1)), rate.fmt(0),
            fmt_ratio(ratio(rate.median, base_rate)), str(int(sum(samples[label]["failed"]))),
        ])  # fmt: skip
    result.tables.append(
        Table(
            f"offloop and Ray Serve ({REPLICAS} worker processes each)",
            [
                "server",
                "/healthz idle p99 ms",
                "loaded p50 ms",
                "loaded p99 ms",
                "p99 vs offloop",
                "heavy calls/s",
                "ping c=1 p50 ms",
                "vs offloop",
                f"ping c={CONCURRENCY} req/s",
                "vs offloop",
                "failed",
            ],
            rows,
            f"Loaded: while {HEAVY_CLIENTS} clients call burn({HEAVY_MILLIS}). Medians over "
            "repeats (min-max).",
        )
    )
    result.plots.append(
        plots.latency_cdf(
            ctx.out / f"{NAME}-cdf.png",
            {label: s["loaded_lat"] for label, s in samples.items()},
            title=f"GET /healthz latency while {HEAVY_CLIENTS} clients call burn({HEAVY_MILLIS})",
        )
    )
    result.plots.append(
        plots.bars(
            ctx.out / f"{NAME}-ping.png",
            list(samples),
            {f"ping req/s, c={CONCURRENCY}": [_mmm(sp(k, "rate")) for k in samples]},
            title=f"POST /rpc/TextLab/ping, {CONCURRENCY} clients",
            ylabel="requests/s",
        )
    )
    result.reading = (
        "Ray Serve routes every request through its proxy actor to a replica process, which "
        "runs the endpoint; a light request that lands on a replica busy with CPU work waits "
        "for it. offloop answers /healthz on the gateway's loop and sends only the calls to "
        "the worker tier. Ray brings much more (a cluster, autoscaling, model composition); "
        "this compares one machine's request path only."
    )
    return result


def _mmm(s: Spread) -> tuple[float, float, float]:
    return (s.median, s.min, s.max)
