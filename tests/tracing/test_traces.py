"""Issue 13, trace context: one HTTP request through a real gateway (uvicorn) and real
workers on 127.0.0.1 gives one trace with the expected parent links, through a retry and
through a batch; spans caught by OpenTelemetry's in-memory exporter."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from gates import Gate
from gateway_stack import Stack, worker_config
from harness import RawClient
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import SpanKind, StatusCode
from waiting import wait_until

from offloop import tracing
from offloop.worker.server import WorkerServer

MakeStack = Callable[..., Stack]

#: A caller's trace: its id and the id of the span that made the request.
TRACE_ID = 0x0AF7651916CD43DD8448EB211C80319C
CALLER_SPAN = 0xB7AD6B7169203331
TRACEPARENT = f"00-{TRACE_ID:032x}-{CALLER_SPAN:016x}-01"


class Spans:
    """The spans offloop made while the test ran (tracing on, sampling ``ratio`` of the
    traces that start here)."""

    def __init__(self, ratio: float = 1.0) -> None:
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider(sampler=ParentBased(TraceIdRatioBased(ratio)))
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))

    def finished(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def named(self, name: str) -> list[ReadableSpan]:
        return [s for s in self.finished() if s.name == name]


@pytest.fixture
def spans() -> Iterator[Spans]:
    """Tracing on for the test, into an in-memory exporter; off again afterwards."""
    assert not tracing.ENABLED
    made = Spans()
    tracing.enable(made.provider)
    try:
        yield made
    finally:
        tracing.disable()
        made.provider.shutdown()


def parent_id(span: ReadableSpan) -> int | None:
    return None if span.parent is None else span.parent.span_id


def span_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return span.context.span_id


def trace_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return span.context.trace_id


def children(spans: list[ReadableSpan], parent: ReadableSpan) -> list[ReadableSpan]:
    return sorted(
        (s for s in spans if parent_id(s) == span_id(parent)), key=lambda s: s.start_time or 0
    )


def one(spans: list[ReadableSpan], kind: SpanKind, name: str) -> ReadableSpan:
    found = [s for s in spans if s.kind == kind and s.name == name]
    assert len(found) == 1, [(s.name, s.kind) for s in spans]
    return found[0]


def check_worker_span(spans: list[ReadableSpan], worker: ReadableSpan) -> None:
    """The worker's call span has its ``queued`` then ``run`` children, in that order."""
    queued, run = children(spans, worker)
    assert (queued.name, run.name) == ("queued", "run")
    assert queued.end_time is not None and run.start_time is not None
    assert queued.end_time <= run.start_time
    assert worker.start_time is not None and queued.start_time == worker.start_time


def start(
    make_stack: MakeStack, mode: str, pool: str = "thread", server: str = "uvicorn", **worker: Any
) -> Stack:
    stack = make_stack(mode, server)
    server = stack.start_worker(worker_config(pool, **worker))
    stack.start_gateway([("127.0.0.1", server.port)])
    return stack


def test_one_request_is_one_trace(spans: Spans, make_stack: MakeStack, mode: str) -> None:
    _one_trace(spans, start(make_stack, mode, "thread"))


def test_a_process_pool_call_is_one_trace(spans: Spans, make_stack: MakeStack) -> None:
    # Its span is made in the worker's main process from the child's times; one mode shows it.
    _one_trace(spans, start(make_stack, "loop", "process"))


def _one_trace(spans: Spans, stack: Stack) -> None:
    r = stack.call("ping", {"msg": "hello"}, headers={"traceparent": TRACEPARENT})
    assert r.status_code == 200 and r.json() == {"result": "hello"}
    # The worker ends its span after it sends the reply: wait for all five.
    finished = wait_until(lambda: len(spans.finished()) >= 5 and spans.finished(), timeout=30)
    assert len(finished) == 5, [s.name for s in finished]
    assert {trace_id(s) for s in finished} == {TRACE_ID}  # one trace: the caller's

    http = one(finished, SpanKind.SERVER, "POST /rpc/TextLab/ping")
    assert parent_id(http) == CALLER_SPAN and http.parent is not None and http.parent.is_remote
    assert http.attributes is not None
    assert http.attributes["http.request.method"] == "POST"
    assert http.attributes["url.path"] == "/rpc/TextLab/ping"
    assert http.attributes["http.route"] == "/rpc/TextLab/ping"
    assert http.attributes["http.response.status_code"] == 200
    assert http.attributes["offloop.request_id"] == r.headers["x-request-id"]
    assert "error.type" not in http.attributes

    attempt = one(finished, SpanKind.CLIENT, "TextLab/ping")
    assert parent_id(attempt) == span_id(http)
    assert attempt.attributes is not None
    assert attempt.attributes["rpc.system"] == "apache_thrift"
    assert attempt.attributes["rpc.service"] == "TextLab"
    assert attempt.attributes["rpc.method"] == "ping"
    assert attempt.attributes["server.address"] == "127.0.0.1"
    assert attempt.attributes["server.port"] == stack.workers[0].port
    assert attempt.attributes["offloop.attempt"] == 1

    worker = one(finished, SpanKind.SERVER, "TextLab/ping")
    assert parent_id(worker) == span_id(attempt)
    assert worker.parent is not None and worker.parent.is_remote  # it came on the wire
    assert worker.attributes is not None
    assert worker.attributes["offloop.outcome"] == "ok"
    assert worker.attributes["offloop.request_id"] == r.headers["x-request-id"]
    check_worker_span(finished, worker)


def test_the_tornado_front_makes_the_same_trace(spans: Spans, make_stack: MakeStack) -> None:
    stack = start(make_stack, "loop", server="tornado")
    r = stack.call("ping", {"msg": "t"}, headers={"traceparent": TRACEPARENT})
    assert r.json() == {"result": "t"}
    finished = wait_until(lambda: len(spans.finished()) >= 5 and spans.finished(), timeout=30)
    assert len(finished) == 5 and {trace_id(s) for s in finished} == {TRACE_ID}
    http = one(finished, SpanKind.SERVER, "POST /rpc/TextLab/ping")
    assert parent_id(http) == CALLER_SPAN
    attempt = one(finished, SpanKind.CLIENT, "TextLab/ping")
    assert parent_id(attempt) == span_id(http)
    worker = one(finished, SpanKind.SERVER, "TextLab/ping")
    assert parent_id(worker) == span_id(attempt)


@pytest.mark.parametrize("handler", ["light:InlineHandler", "light:AsyncHandler"])
def test_a_call_on_the_workers_loop_has_its_spans(
    spans: Spans, make_stack: MakeStack, handler: str
) -> None:
    stack = start(make_stack, "loop", handler=handler)
    r = stack.call("ping", {"msg": "light"}, headers={"traceparent": TRACEPARENT})
    assert r.json() == {"result": "light"}
    finished = wait_until(lambda: len(spans.finished()) >= 5 and spans.finished(), timeout=30)
    assert len(finished) == 5 and {trace_id(s) for s in finished} == {TRACE_ID}
    attempt = one(finished, SpanKind.CLIENT, "TextLab/ping")
    worker = one(finished, SpanKind.SERVER, "TextLab/ping")
    assert parent_id(worker) == span_id(attempt)
    assert worker.attributes is not None and worker.attributes["offloop.outcome"] == "ok"
    check_worker_span(finished, worker)


def test_an_unsampled_request_is_recorded_in_neither_tier(
    spans: Spans, make_stack: MakeStack
) -> None:
    # Sampling is parent-based at 100 %: a worker that did not hear the caller's decision
    # would record a trace of its own.
    stack = start(make_stack, "loop")
    unsampled = TRACEPARENT.removesuffix("-01") + "-00"
    assert stack.call("ping", {"msg": "a"}, headers={"traceparent": unsampled}).status_code == 200
    # Then a sampled one: its spans arrive after any the first request would have made.
    assert stack.call("ping", {"msg": "b"}).status_code == 200
    finished = wait_until(lambda: len(spans.finished()) >= 5 and spans.finished(), timeout=30)
    assert len(finished) == 5
    assert all(trace_id(s) != TRACE_ID for s in finished)


def test_a_request_without_traceparent_starts_a_trace(spans: Spans, make_stack: MakeStack) -> None:
    stack = start(make_stack, "loop")
    assert stack.call("ping", {"msg": "a"}).status_code == 200
    assert stack.call("ping", {"msg": "b"}).status_code == 200
    finished = wait_until(lambda: len(spans.finished()) >= 10 and spans.finished(), timeout=30)
    https = spans.named("POST /rpc/TextLab/ping")
    assert len(https) == 2 and all(s.parent is None for s in https)
    assert trace_id(https[0]) != trace_id(https[1])  # a trace per request
    for http in https:
        (attempt,) = children(finished, http)
        (worker,) = children(finished, attempt)
        assert worker.kind == SpanKind.SERVER


def test_a_failed_call_marks_its_spans(spans: Spans, make_stack: MakeStack) -> None:
    stack = start(make_stack, "loop")
    r = stack.call("ping", {"msg": "raise"})  # the handler raises ValueError
    assert r.status_code >= 500
    finished = wait_until(lambda: len(spans.finished()) >= 5 and spans.finished(), timeout=30)
    http = one(finished, SpanKind.SERVER, "POST /rpc/TextLab/ping")
    assert http.attributes is not None
    assert http.attributes["error.type"] == str(r.status_code)
    assert http.status.status_code == StatusCode.ERROR
    attempt = one(finished, SpanKind.CLIENT, "TextLab/ping")
    assert attempt.status.status_code == StatusCode.ERROR
    assert attempt.attributes is not None and attempt.attributes["error.type"]
    worker = one(finished, SpanKind.SERVER, "TextLab/ping")
    assert worker.attributes is not None and worker.attributes["offloop.outcome"] == "error"


def test_a_request_with_no_route_has_no_http_route_and_probes_no_span(
    spans: Spans, make_stack: MakeStack
) -> None:
    stack = start(make_stack, "loop")
    for probe in ("/healthz", "/readyz", "/metrics"):  # probes and scrapes make no span
        assert stack.client.get(probe).status_code == 200
    assert stack.client.post("/rpc/TextLab/nope", json={}).status_code == 404
    (http,) = wait_until(spans.finished, timeout=30)
    assert http.name == "POST" and http.attributes is not None
    assert "http.route" not in http.attributes
    assert http.attributes["http.response.status_code"] == 404
    assert http.status.status_code != StatusCode.ERROR  # the client's fault, not ours


def test_a_retry_is_a_second_attempt_span(
    spans: Spans, make_stack: MakeStack, mode: str, tmp_path: Path
) -> None:
    stack = make_stack(mode)
    # The refusing worker's only slot is held by a call of its own (not the gateway's):
    # it refuses every call the gateway sends it, which the gateway then sends elsewhere.
    refusing = stack.start_worker(worker_config(workers=1, max_queued=0))
    serving = stack.start_worker(worker_config())
    stack.start_gateway([("127.0.0.1", refusing.port), ("127.0.0.1", serving.port)])
    with Gate(tmp_path) as gate, RawClient(refusing.port) as raw, ThreadPoolExecutor(1) as pool:
        raw.send("ping", 1, gate.message)
        wait_until(lambda: _on_loop(stack, lambda: refusing.pool.stats().busy) == 1, timeout=30)
        # A call held at the serving worker (sent there at once, or after a refusal)...
        held = pool.submit(stack.call, "ping", {"msg": gate.message})
        wait_until(lambda: _on_loop(stack, lambda: serving.pool.stats().busy) == 1, timeout=30)
        # ... makes the refusing worker (fewer calls in flight) the pick of the next one,
        # unless it already refused the first (then the gateway learned its limit).
        assert stack.call("ping", {"msg": "next"}).status_code == 200
        gate.open()
        assert held.result(30).status_code == 200
        assert raw.recv().value() == "opened"
    # Both requests were answered: the refusing worker's refusals have spans too (one per
    # attempt it refused), and its own held call a trace of its own.
    finished = wait_until(lambda: _settled(spans.finished()), timeout=30)
    attempts = [s for s in finished if s.kind == SpanKind.CLIENT]
    again = [s for s in attempts if s.attributes and s.attributes["offloop.attempt"] == 2]
    assert again  # the second call at least: the refusing worker was its pick
    for second in again:
        retried = [s for s in finished if trace_id(s) == trace_id(second)]
        http = one(retried, SpanKind.SERVER, "POST /rpc/TextLab/ping")
        first, then = children(retried, http)  # two attempts under one server span
        assert then is second
        assert first.attributes is not None and second.attributes is not None
        assert first.attributes["offloop.attempt"] == 1
        assert first.attributes["server.port"] == refusing.port
        assert first.attributes["error.type"] == "Overloaded"  # the refusal, by its class
        assert first.status.status_code == StatusCode.ERROR
        (refusal,) = children(retried, first)  # the refusing worker's span: not run
        assert refusal.attributes is not None
        assert refusal.attributes["offloop.outcome"] == "overloaded"
        assert children(retried, refusal) == []
        assert second.attributes["server.port"] == serving.port
        assert second.status.status_code == StatusCode.UNSET
        (worker,) = children(retried, second)
        assert worker.attributes is not None and worker.attributes["offloop.outcome"] == "ok"
        check_worker_span(retried, worker)


def _settled(finished: list[ReadableSpan]) -> list[ReadableSpan] | None:
    """``finished`` once both requests of the retry test have all their spans."""
    https = [s for s in finished if s.name.startswith("POST ")]
    attempts = [s for s in finished if s.kind == SpanKind.CLIENT]
    workers = [s for s in finished if s.kind == SpanKind.SERVER and s not in https]
    runs = [s for s in finished if s.name == "run"]
    # Every attempt reached a worker; the held raw call's span is one more.
    done = len(https) == 2 and len(runs) == 3 and len(workers) == len(attempts) + 1
    return finished if done else None


def test_a_request_whose_client_left_ends_its_spans(
    spans: Spans, make_stack: MakeStack, tmp_path: Path
) -> None:
    stack = start(make_stack, "loop")
    worker: WorkerServer = stack.workers[0]
    port = int(stack.url.rsplit(":", 1)[1])
    with Gate(tmp_path) as gate:
        body = json.dumps({"msg": gate.message}).encode()
        head = (
            "POST /rpc/TextLab/ping HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\n\r\n"
        )
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(head.encode() + body)
            wait_until(lambda: _on_loop(stack, lambda: worker.pool.stats().busy) == 1, timeout=30)
        # The client left: the gateway cancels the request, and its call at the worker.
        (http,) = wait_until(lambda: spans.named("POST"), timeout=30)
        (worker_span,) = wait_until(
            lambda: [s for s in spans.finished() if s.kind == SpanKind.SERVER and s is not http],
            timeout=30,
        )
    assert http.attributes is not None and http.attributes["error.type"] == "CancelledError"
    assert "http.response.status_code" not in http.attributes
    assert http.status.status_code == StatusCode.ERROR
    (attempt,) = children(spans.finished(), http)
    assert attempt.attributes is not None
    assert attempt.attributes["error.type"] == "CancelledError"
    assert parent_id(worker_span) == span_id(attempt)
    assert worker_span.attributes is not None
    assert worker_span.attributes["offloop.outcome"] == "cancelled"


def _on_loop(stack: Stack, fn: Callable[[], Any]) -> Any:
    async def run() -> Any:
        return fn()

    return stack.loop.run(run())


def test_a_batch_links_to_each_call_it_carries(
    spans: Spans, make_stack: MakeStack, tmp_path: Path
) -> None:
    # One pool thread: a gated batch of one holds it while the next two calls form a batch.
    stack = start(make_stack, "loop", handler="faulty:BatchedHandler", workers=1, call_timeout=30.0)
    worker: WorkerServer = stack.workers[0]
    batcher = worker._batchers["embed"]
    with Gate(tmp_path) as gate, ThreadPoolExecutor(3) as pool:
        held = pool.submit(stack.call, "embed", {"texts": [gate.message]})
        wait_until(lambda: _on_loop(stack, lambda: worker.pool.stats().busy) == 1, timeout=30)
        b = pool.submit(stack.call, "embed", {"texts": ["b"]})
        cc = pool.submit(stack.call, "embed", {"texts": ["cc"]})
        wait_until(lambda: _on_loop(stack, lambda: len(batcher._items)) == 2, timeout=30)
        gate.open()
        # The second number of each result is the size of the batch it ran in.
        assert b.result(30).json() == {"result": [[1.0, 2.0]]}
        assert cc.result(30).json() == {"result": [[2.0, 2.0]]}
        assert held.result(30).status_code == 200
    batch_name = "TextLab/embed batch"
    # 3 requests x (HTTP, attempt, worker, queued, run) + 2 batches x (batch, queued, run).
    finished = wait_until(lambda: len(spans.finished()) >= 21 and spans.finished(), timeout=30)
    assert len(finished) == 21, sorted(s.name for s in finished)
    workers = [s for s in finished if s.kind == SpanKind.SERVER and s.name == "TextLab/embed"]
    assert len(workers) == 3
    by_trace = {trace_id(s): s for s in workers}
    assert len(by_trace) == 3  # each call in its own request's trace
    batches = [s for s in finished if s.name == batch_name]
    (pair,) = [s for s in batches if s.attributes and s.attributes["offloop.batch.size"] == 2]
    assert pair.parent is None  # the root of a trace of its own: no call's trace holds it
    assert trace_id(pair) not in by_trace
    linked = {(link.context.trace_id, link.context.span_id) for link in pair.links}
    carried = [
        s for s in workers if (trace_id(s), span_id(s)) in linked
    ]  # the calls of b and cc, each by its own trace
    assert len(linked) == 2 and len(carried) == 2
    for call in carried:
        (event,) = [e for e in call.events if e.name == "batched"]
        assert event.attributes is not None
        assert event.attributes["offloop.batch.span_id"] == f"{span_id(pair):016x}"
        check_worker_span(finished, call)
        http = [s for s in finished if s.kind == SpanKind.SERVER and s.name.startswith("POST")]
        assert any(trace_id(h) == trace_id(call) for h in http)
    queued, run = children(finished, pair)
    assert (queued.name, run.name) == ("queued", "run")


def test_tracing_off_makes_no_span(spans: Spans, make_stack: MakeStack) -> None:
    tracing.disable()  # the provider and its exporter stay: nothing reaches them
    stack = start(make_stack, "loop")
    r = stack.call("ping", {"msg": "x"}, headers={"traceparent": TRACEPARENT})
    assert r.status_code == 200
    # The worker's span would have ended before its reply left: none was made.
    assert spans.finished() == []
    tracing.enable(spans.provider)
    assert stack.call("ping", {"msg": "y"}).status_code == 200
    wait_until(lambda: len(spans.finished()) == 5, timeout=30)
