"""callers: two callers of one gateway, one flooding at 10x its share; the other's latency
with and without limits per caller.

Both callers hold an API key (the gateway's identity of a caller). The worker serves
``sleep(20 ms)`` on four threads: 200 calls/s in all. The calm caller sends 20 calls/s; the
flood sends ten times the per-caller rate, 500 calls/s, more than the worker can serve.
Without limits the flood fills the worker's queue and the calm caller's calls wait behind it
or are refused; with ``--caller-rate 50`` the flood's excess is refused at the gateway (429)
and the calm caller keeps the latency of an idle system.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bench.common import Services, Spread, cpu_busy, fmt_ratio, latency_summary, ratio
from bench.loadgen import HttpStream, run_load
from bench.report import Context, ScenarioResult, Table
from bench.servers import gateway, rpc_body, worker
from offloop.gateway.auth import key_line

NAME = "callers"
SUMMARY = "one caller floods at 10x its share: the other's p99 with and without limits"

CALM_KEY = "calm-caller-key-0123456789abcdef"
FLOOD_KEY = "flood-caller-key-0123456789abcdef"
#: The worker's capacity: WORKERS calls of SLEEP_MS at a time.
WORKERS = 4
SLEEP_MS = 20
#: The per-caller limit (calls/s) and the rates of the two callers.
SHARE = 50.0
CALM_RATE = 20.0
FLOOD_RATE = 10 * SHARE

OPEN = "no limits per caller"
LIMITED = f"--caller-rate {SHARE:g} --caller-max-inflight {WORKERS}"


@dataclass(frozen=True)
class KeyedStream(HttpStream):
    """An :class:`HttpStream` whose requests carry ``Authorization: Bearer <key>``."""

    key: str = ""

    def request_bytes(self, port: int) -> bytes:
        head, sep, body = super().request_bytes(port).partition(b"\r\n\r\n")
        return head + f"\r\nAuthorization: Bearer {self.key}".encode() + sep + body


def run(ctx: Context) -> ScenarioResult:
    duration = ctx.seconds(20.0, 5.0)
    result = ScenarioResult(
        NAME,
        "A flooding caller does not raise another caller's latency",
        f"With `{LIMITED}`, a caller sending {FLOOD_RATE:g} calls/s (10x the per-caller rate) "
        f"leaves the p99 of a caller sending {CALM_RATE:g} calls/s where it is on an idle "
        f"gateway; without limits the flood queues ahead of it.",
        "",
        f"One `offloop worker --pool thread --workers {WORKERS}` serves `sleep({SLEEP_MS} ms)` "
        f"({WORKERS * 1000 // SLEEP_MS} calls/s at most). Two gateways in front of it (uvicorn, "
        f"event-loop mode), both with API keys (`--auth-api-keys`), one with `{LIMITED}` "
        f"(burst {int(SHARE)}). Two paced streams run at once against each in turn: the calm "
        f"caller at {CALM_RATE:g} calls/s and the flood at {FLOOD_RATE:g} calls/s, for "
        f"{duration:g} s after a 1 s warm-up. Latency is counted from when a call was due.",
    )
    repeats = ctx.repeats(3)
    body = rpc_body(millis=SLEEP_MS)
    path = "/rpc/TextLab/sleep"
    calm = KeyedStream("calm", path, "POST", body, connections=64, rate=CALM_RATE, key=CALM_KEY)
    flood = KeyedStream(
        "flood", path, "POST", body, connections=512, rate=FLOOD_RATE, key=FLOOD_KEY
    )
    log_dir = ctx.log_dir(NAME)
    log_dir.mkdir(parents=True, exist_ok=True)
    keys = log_dir / "api-keys"
    keys.write_text(
        key_line("calm", CALM_KEY, ["*"]) + "\n" + key_line("flood", FLOOD_KEY, ["*"]) + "\n"
    )
    auth = ["--auth-api-keys", str(keys)]
    limits = [
        "--caller-rate", f"{SHARE:g}", "--caller-burst", str(int(SHARE)),
        "--caller-max-inflight", str(WORKERS),
    ]  # fmt: skip
    busy_before = cpu_busy(1.0)
    samples: dict[str, dict[str, list[float]]] = {}
    raw: dict[str, Any] = {"machine_busy_before": busy_before, "repeats": []}
    with Services(log_dir) as svcs:
        ctx.begin(NAME, 1 + repeats * 2)
        ctx.step(f"{NAME}: starting servers")
        svcs.start([worker("worker", pool="thread", workers=WORKERS)], on_wait=ctx.tick)
        port = svcs["worker"].port
        contenders = [
            (OPEN, gateway("gateway-open", port, extra=auth)),
            (LIMITED, gateway("gateway-limited", port, extra=[*auth, *limits])),
        ]
        svcs.start([spec for _, spec in contenders], on_wait=ctx.tick)
        ctx.advance()
        for rep in range(repeats):
            entry: dict[str, Any] = {}
            for label, spec in contenders:
                ctx.step(f"{NAME}: {label} (repeat {rep + 1}/{repeats})")
                load = run_load(svcs[spec.name].port, [calm, flood], duration=duration, warmup=1.0)
                c, f = load["calm"], load["flood"]
                lat = latency_summary(c.latencies)
                s = samples.setdefault(label, {})
                s.setdefault("p50", []).append(lat["p50"])
                s.setdefault("p99", []).append(lat["p99"])
                sent = max(1, sum(c.statuses.values()) + c.errors)
                s.setdefault("calm_failed", []).append(100.0 * c.failed / sent)
                s.setdefault("flood_ok", []).append(f.throughput)
                s.setdefault("flood_429", []).append(f.statuses.get("429", 0) / f.window)
                s.setdefault("gen", []).append(load.max_process_util)
                entry[label] = {
                    "calm": c.summary(),
                    "calm_latency": lat,
                    "calm_latencies_ms": [round(v * 1000, 3) for v in c.latencies],
                    "flood": f.summary(),
                    "generator": load.generator(),
                }
                ctx.advance()
            raw["repeats"].append(entry)
    result.raw = raw
    rows = []
    for label, s in samples.items():
        rows.append([
            label, Spread.of(s["p50"]).fmt(1), Spread.of(s["p99"]).fmt(1),
            Spread.of(s["calm_failed"]).fmt(1), Spread.of(s["flood_ok"]).fmt(0),
            Spread.of(s["flood_429"]).fmt(0),
        ])  # fmt: skip
    p99_open = Spread.of(samples[OPEN]["p99"]).median
    p99_limited = Spread.of(samples[LIMITED]["p99"]).median
    gen = max((max(s["gen"]) for s in samples.values()), default=0.0)
    result.tables.append(
        Table(
            f"The calm caller ({CALM_RATE:g}/s) while the other floods at {FLOOD_RATE:g}/s",
            [
                "gateway",
                "calm p50 ms",
                "calm p99 ms",
                "calm failed %",
                "flood served /s",
                "flood refused 429 /s",
            ],
            rows,
            f"Medians over {repeats} repeat(s) (min-max). Calm p99 without / with limits: "
            f"{fmt_ratio(ratio(p99_open, p99_limited))}. Machine busy before the run: "
            f"{100 * busy_before:.0f} %; busiest generator process: {100 * gen:.0f} % of a core.",
        )
    )
    result.reading = (
        "Without limits the flood takes the worker's threads and queue, so the calm caller's "
        "calls wait behind it (or are refused 503 when the queue is full). With limits per "
        "caller the gateway refuses the flood's excess at once with 429, for the cost of a "
        "table lookup, and the calm caller's latency stays that of the call itself."
    )
    return result
