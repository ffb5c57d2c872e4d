"""io-concurrency: many clients waiting on an I/O-bound backend call.

Every request is ``POST /rpc/TextLab/sleep {"millis": 100}``, served by one ``offloop worker
--pool thread`` with enough threads that the backend is never the limit. Three fronts stand
before it; closed-loop clients at 10 to 5,000 concurrent connections. An event loop holds a
waiting call as a few small objects; a thread-per-request server holds a thread, and the actor
gateway at most ``actors`` calls at once.
"""

from __future__ import annotations

import time
from typing import Any

from bench import plots
from bench.common import (
    Services,
    Spread,
    fmt_num,
    latency_summary,
    rss_sampler,
    threads_of,
)
from bench.loadgen import HttpStream, LoadError, run_load
from bench.report import Context, ScenarioResult, Table
from bench.servers import baseline, gateway, rpc_body, worker

NAME = "io-concurrency"
SUMMARY = "10 to 5,000 clients on a 100 ms backend wait: loop vs actor vs thread-per-request"

WAIT_MS = 100
WORKER_THREADS = 1024
"""Worker threads: 1,024 / 0.1 s = 10,240 calls/s, beyond what two cores can front."""

ACTORS = 32
MAILBOX = 4
"""The actor gateway's defaults: at most 32 calls at once (320/s at 100 ms), 4 queued each."""

ERROR_PAUSE = 0.1
"""Seconds a client waits after a 503 before trying again, as a polite client would."""


def _warmup(clients: int) -> float:
    """Seconds before the window: a closed loop of 5,000 clients on two cores takes seconds
    to reach its steady state (Little: latency = clients / throughput)."""
    return 0.5 + clients / 2500


def _drain(clients: int) -> float:
    """Seconds the calls still in flight after the window may take; later ones are cut and
    counted as unfinished (failed)."""
    return 2.0 + clients / 1000


SETTLE = 10.0
"""Most seconds to wait, before a run, for a front's threads to come back to their idle count
(a thread-per-request server still finishing the last run's calls)."""


def _settle(svcs: Services, fronts: dict[str, tuple[str, int]], specs: dict[str, Any]) -> float:
    """Wait until every front is back to its idle thread count (+8), so that no run pays for
    the one before; a front still busy after ``SETTLE`` seconds is restarted.

    Args:
        fronts: label -> (server name, idle thread count).
        specs: server name -> its ServerSpec, for restarts.

    Returns:
        Seconds waited.
    """
    start = time.monotonic()

    def busy() -> list[str]:
        return [n for n, idle in fronts.values() if threads_of(svcs[n].pid) > idle + 8]

    while busy() and time.monotonic() - start < SETTLE:
        time.sleep(0.2)
    for name in busy():
        svcs.stop(name)
        svcs.start([specs[name]])
    return time.monotonic() - start


LOOP = "offloop loop gateway"
ACTOR = "offloop actor gateway"
THREADS = "ThreadingHTTPServer"


def run(ctx: Context) -> ScenarioResult:
    levels = [10, 100, 1000] if ctx.quick else [10, 100, 1000, 5000]
    result = ScenarioResult(
        NAME,
        "An event loop holds thousands of waiting calls where threads and actors run out",
        "With a backend call that waits 100 ms, the event-loop gateway's throughput grows "
        "with the clients until the CPU is the limit, at little memory per call in flight; "
        "the actor gateway stops at actors / 0.1 s, and a thread-per-request server pays a "
        "thread (memory, scheduling) per connection.",
        "",
        f"Clients: closed loop, keep-alive, one request at a time each, at "
        f"{', '.join(f'{n:,}' for n in levels)} concurrent connections (over two generator "
        f"processes from 1,000 up); a client that gets an error waits {ERROR_PAUSE * 1000:g} ms "
        f"before its next request. Every request is `POST /rpc/TextLab/sleep "
        f'{{"millis": {WAIT_MS}}}` to one `offloop worker --pool thread --workers '
        f"{WORKER_THREADS} --max-queued 8192`. Fronts: the offloop gateway in event-loop mode "
        f"(uvicorn, `--max-inflight 8192 --pool-size 8`), the offloop actor gateway (defaults: "
        f"`--actors {ACTORS} --mailbox {MAILBOX}`, `--max-inflight 8192`), and "
        f"`http.server.ThreadingHTTPServer` (HTTP/1.1, a thread per connection, a blocking "
        f"thriftpy2 client per thread). Memory: the front's VmRSS, sampled every 200 ms, peak "
        f"per run. Levels go up once; at each, contenders alternate within each repeat, and a "
        f"run waits until every front's threads are back to their idle count (restarting one "
        f"that is still busy after {SETTLE:g} s). Each run warms up for 0.5 s + clients / "
        f"2,500 s; calls still unanswered 2 s + clients / 1,000 s after its window count as "
        f"failed. Nothing is pinned.",
    )
    repeats = ctx.repeats(2)
    duration = ctx.seconds(2.0, 1.0)
    warmup = ctx.seconds(0.5, 0.5)
    samples: dict[str, dict[int, dict[str, list[float]]]] = {}
    idle_rss: dict[str, int] = {}
    raw: dict[str, Any] = {"levels": levels, "runs": []}
    with Services(ctx.log_dir(NAME)) as svcs:
        ctx.begin(NAME, 1 + repeats * len(levels) * 3)
        ctx.step(f"{NAME}: starting servers")
        svcs.start(
            [worker("worker", pool="thread", workers=WORKER_THREADS, max_queued=8192)],
            on_wait=ctx.tick,
        )
        wport = svcs["worker"].port
        specs = [
            (LOOP, gateway("gateway-loop", wport, extra=["--max-inflight", "8192",
                                                         "--pool-size", "8"])),
            (ACTOR, gateway("gateway-actor", wport, mode="actor",
                            extra=["--max-inflight", "8192", "--actors", str(ACTORS),
                                   "--mailbox", str(MAILBOX)])),
            (THREADS, baseline("threading-http", "threading_http.py", "--backend",
                               f"127.0.0.1:{wport}")),
        ]  # fmt: skip
        failed = svcs.start([s for _, s in specs], optional=True, on_wait=ctx.tick)
        ctx.advance()
        live = [(label, spec.name) for label, spec in specs if spec.name not in failed]
        for label, spec in specs:
            if spec.name in failed:
                result.notes.append(f"{label} did not start, left out: {failed[spec.name]}")
        idle_threads: dict[str, int] = {}
        for label, sname in live:
            idle_rss[label] = svcs[sname].rss_kib()
            idle_threads[label] = threads_of(svcs[sname].pid)
        # Levels go up once, each repeated before the next: what a level leaves behind
        # (threads still finishing, memory not returned) only meets larger levels.
        gave_up: dict[str, str] = {}
        fronts = {label: (sname, idle_threads[label]) for label, sname in live}
        by_name = {spec.name: spec for _, spec in specs}
        for level in levels:
            for rep in range(repeats):
                for label, sname in live:
                    ctx.step(f"{NAME}: {label}, {level:,} clients (repeat {rep + 1}/{repeats})")
                    svc = svcs[sname]
                    if label in gave_up:
                        ctx.advance()
                        continue
                    settle = _settle(svcs, fronts, by_name)
                    svc = svcs[sname]  # restarted, perhaps
                    stream = HttpStream(
                        "io", "/rpc/TextLab/sleep", "POST", rpc_body(millis=WAIT_MS),
                        connections=level, processes=1 if level < 1000 else 2,
                        error_pause=ERROR_PAUSE,
                    )  # fmt: skip
                    start = time.monotonic()
                    try:
                        with rss_sampler({"front": svc.pid}) as peaks:
                            load = run_load(
                                svc.port,
                                [stream],
                                duration=duration,
                                warmup=_warmup(level) if not ctx.quick else warmup,
                                drain=_drain(level),
                            )
                            threads = threads_of(svc.pid)
                    except LoadError as exc:
                        # A front that cannot take the connections has failed this level;
                        # later runs would only wait for it again.
                        gave_up[label] = f"{level:,} clients: {exc}"
                        result.notes.append(
                            f"{label} gave up at {level:,} clients ({exc}); no larger level "
                            "was run for it."
                        )
                        raw["runs"].append({"front": label, "clients": level, "repeat": rep,
                                            "error": str(exc)})  # fmt: skip
                        ctx.advance()
                        continue
                    r = load["io"]
                    lat = latency_summary(r.latencies)
                    sent = sum(r.statuses.values()) + r.errors + r.unfinished
                    s = samples.setdefault(label, {}).setdefault(level, {})
                    s.setdefault("rate", []).append(r.throughput)
                    s.setdefault("p50", []).append(lat["p50"])
                    s.setdefault("p99", []).append(lat["p99"])
                    s.setdefault("rss", []).append(peaks["front"] / 1024)
                    bad = r.failed + r.unfinished
                    s.setdefault("failed_share", []).append(bad / sent if sent else 0.0)
                    s.setdefault("gen", []).append(load.max_process_util)
                    raw["runs"].append({
                        "front": label, "clients": level, "repeat": rep,
                        "result": r.summary(), "latency_ms": lat, "rss_peak_kib": peaks["front"],
                        "rss_idle_kib": idle_rss[label], "threads_at_end": threads,
                        "settle_s": settle, "run_s": time.monotonic() - start,
                        "generator": load.generator(),
                    })  # fmt: skip
                    ctx.advance()
    result.raw = raw
    _report(ctx, result, samples, idle_rss, levels)
    return result


def _report(
    ctx: Context,
    result: ScenarioResult,
    samples: dict[str, dict[int, dict[str, list[float]]]],
    idle_rss: dict[str, int],
    levels: list[int],
) -> None:
    def med(label: str, level: int, key: str) -> Spread:
        return Spread.of(samples[label].get(level, {}).get(key, []))

    cols = ["front"] + [f"{n:,} clients" for n in levels]
    ideal = ["limit: clients / 0.1 s"] + [fmt_num(n / (WAIT_MS / 1000), 0) for n in levels]
    rate_rows = [ideal] + [
        [label] + [med(label, n, "rate").fmt(0) for n in levels] for label in samples
    ]
    gen = max(
        (max(v["gen"]) for s in samples.values() for v in s.values() if v.get("gen")), default=0
    )
    result.tables.append(
        Table(
            f"Throughput (successful calls/s), backend call waits {WAIT_MS} ms",
            cols,
            rate_rows,
            f"Medians over repeats (min-max). Busiest generator process: {100 * gen:.0f} % of "
            "a core.",
        )
    )
    result.tables.append(
        Table(
            "p99 latency of successful calls (ms)",
            cols,
            [[label] + [med(label, n, "p99").fmt(0) for n in levels] for label in samples],
        )
    )
    result.tables.append(
        Table(
            "Share of requests refused or failed (503 overloaded, errors, unanswered)",
            cols,
            [
                [label] + [f"{100 * med(label, n, 'failed_share').median:.1f} %" for n in levels]
                for label in samples
            ],
        )
    )
    mem_rows = []
    for label in samples:
        row = [label, fmt_num(idle_rss[label] / 1024, 0)]
        prev_kib, prev_n = float(idle_rss[label]), 0
        for n in levels:
            # The first run at a level has the lowest peak: later ones add what it left.
            peak_kib = Spread.of(samples[label].get(n, {}).get("rss", [])).min * 1024
            per = (peak_kib - prev_kib) / (n - prev_n)
            row.append(f"{fmt_num(peak_kib / 1024, 0)} ({fmt_num(per, 1)})")
            prev_kib, prev_n = peak_kib, n
        mem_rows.append(row)
    result.tables.append(
        Table(
            "Front memory: peak VmRSS in MiB (KiB per added client)",
            ["front", "idle", *cols[1:]],
            mem_rows,
            "Peak of the first run at each level (levels go up once; memory is rarely given "
            "back). Per added client: the growth from the level before (from idle for the "
            "first), divided by the clients added.",
        )
    )
    x = [float(n) for n in levels]
    result.plots.append(
        plots.lines(
            ctx.out / f"{NAME}-throughput.png",
            x,
            {label: [med(label, n, "rate").median for n in levels] for label in samples},
            title=f"Throughput, backend call waits {WAIT_MS} ms",
            xlabel="concurrent clients (log scale)",
            ylabel="successful calls/s (log scale)",
            logx=True,
            logy=True,
            ref={"clients / 0.1 s": [n / (WAIT_MS / 1000) for n in levels]},
        )
    )
    result.plots.append(
        plots.panels(
            ctx.out / f"{NAME}-p99-memory.png",
            x,
            {
                "p99 latency (ms)": {
                    label: [med(label, n, "p99").median for n in levels] for label in samples
                },
                "front VmRSS peak (MiB)": {
                    label: [med(label, n, "rss").min for n in levels] for label in samples
                },
            },
            title="Latency and memory against concurrent clients",
            xlabel="concurrent clients (log scale)",
            ylabel="",
            logx=True,
            logy=True,
        )
    )
    result.reading = (
        "Up to the point where the machine's CPU is spent, the event-loop gateway follows the "
        "clients / 0.1 s line with p99 near the 100 ms wait, and its memory per client in "
        "flight is a few KiB. The actor gateway is flat at about actors / 0.1 s "
        f"({ACTORS / (WAIT_MS / 1000):g}/s) and sheds the rest with 503. The thread-per-request "
        "server keeps up while threads are few, then pays a thread per connection in memory "
        "and in scheduling."
    )
