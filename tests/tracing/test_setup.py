"""When tracing is on (:func:`offloop.tracing.setup`, by the ``OTEL_*`` variables), and
what it costs when off: nothing, not even an import of OpenTelemetry (checked in a fresh
interpreter, which serves a request through a gateway and a worker in memory)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from offloop import tracing
from offloop.context import TRACE_HEADERS, TRACEPARENT_HEADER, outgoing_headers

SUPPORT = Path(__file__).resolve().parents[1] / "support"
TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
TRACEPARENT = f"00-{TRACE_ID}-b7ad6b7169203331-01"

#: One request through a gateway core and a worker in memory, then what this process holds.
SCRIPT = textwrap.dedent(
    f"""
    import asyncio, json, sys
    import faulty
    from configs import override
    from offloop import GatewayConfig, WorkerConfig, build_gateway, tracing
    from offloop.gateway.core import Request
    from offloop.testing import WorkerFor

    async def main():
        config = override(
            WorkerConfig(idl=faulty.IDL, service="TextLab", grace=0.0),
            pool="thread", workers=1, nice=0,
        )
        async with WorkerFor(config, handler=faulty.Handler()) as worker:
            gateway = build_gateway(
                override(
                    GatewayConfig(idl=faulty.IDL, backends={{"*": (worker.address,)}}),
                    watchdog=False,
                ),
                network=worker.network,
            )
            await gateway.startup()
            headers = {{"content-type": "application/json", "traceparent": "{TRACEPARENT}"}}
            request = Request("POST", "/rpc/TextLab/ping", headers, b'{{"msg": "hi"}}')
            response = await gateway.handle(request)
            await gateway.shutdown(0)
        return response.status

    status = asyncio.run(main())
    loaded = sorted(m for m in sys.modules if m.split(".")[0] == "opentelemetry")
    print("RESULT " + json.dumps({{"status": status, "enabled": tracing.ENABLED,
                                   "loaded": loaded}}), flush=True)
    """
)


def run_script(**env: str) -> tuple[dict[str, object], str]:
    """Run :data:`SCRIPT` with ``env`` added (and no ``OTEL_*`` variable of ours)."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    environ["PYTHONPATH"] = os.pathsep.join([str(SUPPORT), environ.get("PYTHONPATH", "")])
    environ.update(env)
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    (line,) = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")]
    return json.loads(line.removeprefix("RESULT ")), done.stdout


@pytest.mark.parametrize("exporter", [None, "none"])
def test_off_imports_no_opentelemetry(exporter: str | None) -> None:
    env = {} if exporter is None else {"OTEL_TRACES_EXPORTER": exporter}
    result, _ = run_script(**env)
    assert result == {"status": 200, "enabled": False, "loaded": []}


def test_sdk_disabled_wins() -> None:
    result, _ = run_script(OTEL_TRACES_EXPORTER="console", OTEL_SDK_DISABLED="true")
    assert result == {"status": 200, "enabled": False, "loaded": []}


def test_an_exporter_turns_it_on() -> None:
    # The console exporter prints each span as JSON when the process exits (it flushes).
    result, out = run_script(OTEL_TRACES_EXPORTER="console", OTEL_SERVICE_NAME="gw-under-test")
    assert result["status"] == 200 and result["enabled"] is True
    assert '"name": "POST /rpc/TextLab/ping"' in out
    assert f'"trace_id": "0x{TRACE_ID}"' in out  # the caller's trace, continued
    assert '"service.name": "gw-under-test"' in out
    assert '"rpc.system": "apache_thrift"' in out  # the attempt and the worker's spans


def test_setup_reads_the_rule_from_the_environment() -> None:
    assert not tracing.ENABLED
    assert tracing.setup("x", {}) is False  # nothing set, no application provider
    assert tracing.setup("x", {"OTEL_TRACES_EXPORTER": "none"}) is False
    assert tracing.setup("x", {"OTEL_TRACES_EXPORTER": " None "}) is False
    sdk_off = {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "TRUE"}
    assert tracing.setup("x", sdk_off) is False
    assert not tracing.ENABLED


def test_the_attempts_trace_context_goes_with_the_call() -> None:
    assert TRACEPARENT_HEADER not in outgoing_headers(None, 0.0)
    token = TRACE_HEADERS.set({TRACEPARENT_HEADER: TRACEPARENT})
    try:
        assert outgoing_headers(None, 0.0)[TRACEPARENT_HEADER] == TRACEPARENT
    finally:
        TRACE_HEADERS.reset(token)
