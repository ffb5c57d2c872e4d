"""tls: what TLS costs, between the tiers and on the front, against plaintext, in one run.

Four gateways (event-loop mode, uvicorn front) answer ``POST /rpc/TextLab/ping``: plaintext
everywhere; mutual TLS to the worker only; HTTPS on the front only; both. Behind them, two
``offloop worker --pool thread`` processes, one plaintext and one with mutual TLS
(``--tls-client-ca``). Certificates are made by ``trustme`` for the run. Clients are
keep-alive connections (the handshake is paid once per connection, as a pooled client pays
it), driven closed-loop by a small HTTP(S) generator of this module, since the shared
generator speaks plaintext only: 1 client for the latency, 32 for requests per second.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import ssl
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import Services, Spread, fmt_ratio, latency_summary, ratio
from bench.report import Context, ScenarioResult, Table
from bench.servers import gateway, rpc_body, worker

NAME = "tls"
SUMMARY = "ping through the gateway with TLS between the tiers and HTTPS on the front"

CONCURRENCY = 32
"""Clients of the throughput run, as in ``overhead``."""

GEN_PROCESSES = 2
"""Generator processes at concurrency 32: one Python process tops out near the gateway's rate."""

PLAIN = "plaintext (HTTP, plain Thrift)"
TIERS = "mutual TLS between the tiers"
FRONT = "HTTPS front"
BOTH = "HTTPS front + mutual TLS between the tiers"


def run(ctx: Context) -> ScenarioResult:
    result = ScenarioResult(
        NAME,
        "TLS costs little per call once connections are open",
        "With keep-alive HTTPS clients and pooled TLS connections to workers, a no-op call "
        "costs little more latency and few requests/s more than in plaintext.",
        "",
        f"`POST /rpc/TextLab/ping` through four `offloop gateway` processes (loop mode, "
        f"uvicorn front), each in front of a thread-pool worker (4 workers): {PLAIN}; "
        f"{TIERS} (`--backend-tls-ca/-cert/-key` against `--tls-cert/-key/-client-ca`); "
        f"{FRONT} (`--tls-cert/-key`); {BOTH}. Keep-alive clients, closed loop: 1 (latency) "
        f"and {CONCURRENCY} over {GEN_PROCESSES} generator processes (throughput). TLS 1.3, "
        "certificates from trustme (ECDSA P-256). Contenders alternate within each repeat.",
    )
    try:
        import trustme
    except ImportError:
        result.skipped = "trustme is not installed (pip install trustme)"
        result.notes.append(f"skipped: {result.skipped}")
        return result
    repeats = ctx.repeats(3)
    d1 = ctx.seconds(2.0, 0.8)
    dn = ctx.seconds(3.0, 1.0)
    warmup = ctx.seconds(0.5, 0.3)
    with tempfile.TemporaryDirectory(prefix="offloop-bench-tls-") as tmp:
        files = _certificates(trustme, Path(tmp))
        server_tls = ["--tls-cert", files["server"], "--tls-key", files["server_key"]]
        backend_tls = [
            "--backend-tls-ca", files["ca"], "--backend-tls-cert", files["client"],
            "--backend-tls-key", files["client_key"], "--backend-tls-server-name", "localhost",
        ]  # fmt: skip
        samples: dict[str, dict[str, list[float]]] = {}
        raw: dict[str, Any] = {"runs": []}
        with Services(ctx.log_dir(NAME)) as svcs:
            ctx.begin(NAME, 1 + repeats * 4)
            ctx.step(f"{NAME}: starting servers")
            svcs.start(
                [
                    worker("w-plain", pool="thread", workers=4, max_queued=256),
                    worker(
                        "w-tls",
                        pool="thread",
                        workers=4,
                        max_queued=256,
                        extra=[*server_tls, "--tls-client-ca", files["ca"]],
                    ),
                ],
                on_wait=ctx.tick,
            )
            plain_port, tls_port = svcs["w-plain"].port, svcs["w-tls"].port
            specs = {
                PLAIN: (gateway("gw-plain", plain_port), False),
                TIERS: (gateway("gw-tiers", tls_port, extra=backend_tls), False),
                # HTTPS fronts: readiness is checked here, over HTTPS (the spec waits for the
                # port only).
                FRONT: (_https(gateway("gw-front", plain_port, extra=server_tls)), True),
                BOTH: (
                    _https(gateway("gw-both", tls_port, extra=[*server_tls, *backend_tls])),
                    True,
                ),
            }
            svcs.start([spec for spec, _ in specs.values()], on_wait=ctx.tick)
            client_ctx = ssl.create_default_context(cafile=files["ca"])
            for spec, secure in specs.values():
                _wait_ready(svcs[spec.name].port, client_ctx if secure else None)
            ctx.advance()
            for rep in range(repeats):
                for label, (spec, secure) in specs.items():
                    ctx.step(f"{NAME}: {label} (repeat {rep + 1}/{repeats})")
                    port = svcs[spec.name].port
                    cafile = files["ca"] if secure else None
                    one = _load(port, cafile, 1, 1, d1, warmup)
                    many = _load(port, cafile, CONCURRENCY, GEN_PROCESSES, dn, warmup)
                    l1 = latency_summary(one["latencies"])
                    ln = latency_summary(many["latencies"])
                    s = samples.setdefault(label, {})
                    s.setdefault("c1_p50", []).append(l1["p50"])
                    s.setdefault("c1_p99", []).append(l1["p99"])
                    s.setdefault("rate", []).append(many["rate"])
                    s.setdefault("cN_p50", []).append(ln["p50"])
                    s.setdefault("failed", []).append(one["failed"] + many["failed"])
                    raw["runs"].append({
                        "contender": label, "repeat": rep, "c1_latency_ms": l1,
                        "cN_latency_ms": ln, "cN_rate": many["rate"],
                        "failed": one["failed"] + many["failed"],
                    })  # fmt: skip
                    ctx.advance()
    result.raw = raw
    base_rate = Spread.of(samples[PLAIN]["rate"]).median
    base_p50 = Spread.of(samples[PLAIN]["c1_p50"]).median
    rows = []
    for label, s in samples.items():
        rate = Spread.of(s["rate"])
        p50 = Spread.of(s["c1_p50"])
        rows.append([
            label, p50.fmt(3), Spread.of(s["c1_p99"]).fmt(3),
            f"{1000 * (p50.median - base_p50):+,.0f} us", rate.fmt(0),
            fmt_ratio(ratio(rate.median, base_rate)), Spread.of(s["cN_p50"]).fmt(2),
            str(int(sum(s["failed"]))),
        ])  # fmt: skip
    result.tables.append(
        Table(
            "POST /rpc/TextLab/ping: latency at concurrency 1, requests/s at concurrency "
            f"{CONCURRENCY}",
            [
                "contender",
                "c=1 p50 ms",
                "c=1 p99 ms",
                "p50 added vs plaintext",
                f"c={CONCURRENCY} req/s",
                "req/s vs plaintext",
                f"c={CONCURRENCY} p50 ms",
                "failed",
            ],
            rows,
            "Medians over repeats (min-max). Nothing is pinned: servers, workers and "
            f"generators share {os.cpu_count()} CPUs.",
        )
    )
    result.reading = (
        "Per call, TLS adds the encryption of a few hundred bytes each way per hop, which "
        "each event loop pays on its own thread; the handshakes are paid once per "
        "connection and do not show in a keep-alive run. "
        "Between the tiers one TLS connection carries many calls at once, so its cost per "
        "call shrinks with concurrency."
    )
    return result


def _https(spec: Any) -> Any:
    """``spec`` waiting for its port only; the scenario checks readiness over HTTPS."""
    from dataclasses import replace

    return replace(spec, ready_path=None)


def _certificates(trustme: Any, root: Path) -> dict[str, str]:
    ca = trustme.CA()
    out: dict[str, str] = {}

    def write(name: str, data: bytes) -> str:
        path = root / name
        path.write_bytes(data)
        out[name.replace(".pem", "").replace(".", "_")] = str(path)
        return str(path)

    write("ca.pem", ca.cert_pem.bytes())
    for name, host in (("server", "localhost"), ("client", "gateway.bench")):
        leaf = ca.issue_cert(host)
        write(f"{name}.pem", b"".join(b.bytes() for b in leaf.cert_chain_pems))
        write(f"{name}.key", leaf.private_key_pem.bytes())
    return out


def _wait_ready(port: int, tls: ssl.SSLContext | None, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if asyncio.run(_get_status(port, tls, "/readyz")) == 200:
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"gateway on port {port} not ready within {timeout} s")
        time.sleep(0.2)


async def _get_status(port: int, tls: ssl.SSLContext | None, path: str) -> int:
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=tls, server_hostname="localhost" if tls else None
    )
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
        status, _ = await _response(reader)
        return status
    finally:
        writer.close()


async def _response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
    body = await reader.readexactly(length)
    return status, body


# -- a small closed-loop HTTP(S) generator ------------------------------------------------


def _load(
    port: int, cafile: str | None, clients: int, processes: int, duration: float, warmup: float
) -> dict[str, Any]:
    """``clients`` keep-alive clients over ``processes`` processes for ``duration`` seconds
    after ``warmup``: every latency (s), the rate (req/s) and the failures."""
    per = [clients // processes + (1 if i < clients % processes else 0) for i in range(processes)]
    mpctx = mp.get_context("fork")
    with mpctx.Pool(processes) as pool:
        parts = pool.starmap(_generate, [(port, cafile, n, duration, warmup) for n in per if n])
    latencies = [x for part in parts for x in part["latencies"]]
    return {
        "latencies": latencies,
        "rate": len(latencies) / duration,
        "failed": sum(part["failed"] for part in parts),
    }


def _generate(
    port: int, cafile: str | None, clients: int, duration: float, warmup: float
) -> dict[str, Any]:
    return asyncio.run(_clients(port, cafile, clients, duration, warmup))


async def _clients(
    port: int, cafile: str | None, clients: int, duration: float, warmup: float
) -> dict[str, Any]:
    tls = ssl.create_default_context(cafile=cafile) if cafile else None
    body = rpc_body(msg="hello")
    request = (
        f"POST /rpc/TextLab/ping HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json"
        f"\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    start = time.perf_counter() + warmup
    end = start + duration
    latencies: list[float] = []
    failed = 0

    async def client() -> None:
        nonlocal failed
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=tls, server_hostname="localhost" if tls else None
        )
        try:
            while True:
                t0 = time.perf_counter()
                if t0 >= end:
                    return
                writer.write(request)
                status, _ = await _response(reader)
                t1 = time.perf_counter()
                if t0 >= start:
                    if status == 200:
                        latencies.append(t1 - t0)
                    else:
                        failed += 1
        finally:
            writer.close()

    outcomes = await asyncio.gather(*(client() for _ in range(clients)), return_exceptions=True)
    failed += sum(1 for o in outcomes if isinstance(o, BaseException))
    return {"latencies": latencies, "failed": failed}
