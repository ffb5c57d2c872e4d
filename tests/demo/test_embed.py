"""The real all-MiniLM-L6-v2 model behind a worker, with and without dynamic batching.

Runs only where the ``offloop[dl]`` extra is installed (``make test`` installs it).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from configs import override
from harness import ServerThread, running_worker, thrift_client

from offloop.demo.textlab import IDL_PATH
from offloop.idl import load_idl
from offloop.worker.config import WorkerConfig

pytest.importorskip("sentence_transformers", reason="needs the offloop[dl] extra")

TEXTLAB = load_idl(IDL_PATH)


def _config(batching: bool) -> WorkerConfig:
    return override(
        WorkerConfig(idl=str(IDL_PATH), service="TextLab", handler="offloop.demo.textlab:Handler"),
        pool="thread",
        workers=2,
        port=0,
        call_timeout=60.0,
        batching=batching,
        # Room for every concurrent caller of these tests (24), so that a slow model on a
        # loaded machine queues them instead of refusing some as overloaded.
        max_queued=64,
    )


@pytest.fixture(scope="module")
def batched_server() -> Iterator[ServerThread]:
    with running_worker(_config(True)) as server:
        yield server


@pytest.fixture(scope="module")
def batched_port(batched_server: ServerThread) -> int:
    return batched_server.port


@pytest.fixture(scope="module")
def unbatched_port() -> Iterator[int]:
    with running_worker(_config(False)) as server:
        yield server.port


def _embed(port: int, texts: list[str]) -> list[list[float]]:
    client = thrift_client(port, timeout_ms=60_000)
    try:
        return list(client.embed(texts))
    finally:
        client.close()


def _cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


SENTENCES = [
    "A man is playing a guitar on stage.",
    "Someone performs music with a guitar in front of an audience.",
    "The stock market fell sharply this morning.",
    "",
    "word " * 600,  # over the 256-token window: truncated
]


def test_paraphrases_are_closer_than_unrelated_sentences(batched_port: int) -> None:
    guitar, paraphrase, stocks, empty, long = _embed(batched_port, SENTENCES)
    assert len(guitar) == 384
    assert all(len(v) == 384 for v in (empty, long))
    assert _cosine(guitar, paraphrase) > _cosine(guitar, stocks) + 0.3


def _batches(server: ServerThread) -> tuple[float, float]:
    registry = server.server.metrics.registry
    labels = {"method": "embed"}
    count = registry.get_sample_value("offloop_worker_batch_size_count", labels) or 0.0
    total = registry.get_sample_value("offloop_worker_batch_size_sum", labels) or 0.0
    return count, total


def test_batched_and_unbatched_results_are_equal(
    batched_server: ServerThread, batched_port: int, unbatched_port: int
) -> None:
    calls = [[f"sentence number {i} about topic {i % 3}", SENTENCES[i % 3]] for i in range(8)]
    count0, total0 = _batches(batched_server)
    with ThreadPoolExecutor(8) as ex:
        batched = list(ex.map(lambda texts: _embed(batched_port, texts), calls))
    count, total = _batches(batched_server)
    assert total - total0 == len(calls)
    assert count - count0 < len(calls), "no two calls were merged into one batch"
    unbatched = [_embed(unbatched_port, texts) for texts in calls]
    for got, want in zip(batched, unbatched, strict=True):
        for u, v in zip(got, want, strict=True):
            assert max(abs(x - y) for x, y in zip(u, v, strict=True)) < 1e-5


def test_concurrent_callers_each_get_their_own_result(batched_port: int) -> None:
    alone = {text: _embed(batched_port, [text])[0] for text in SENTENCES[:3]}
    calls = [[SENTENCES[i % 3]] * (1 + i % 4) for i in range(24)]
    with ThreadPoolExecutor(24) as ex:
        results = list(ex.map(lambda texts: _embed(batched_port, texts), calls))
    for texts, vectors in zip(calls, results, strict=True):
        assert len(vectors) == len(texts)
        for text, vector in zip(texts, vectors, strict=True):
            assert max(abs(x - y) for x, y in zip(vector, alone[text], strict=True)) < 1e-5


def test_a_refused_call_fails_alone_in_its_batch(batched_port: int) -> None:
    too_many = ["x"] * 257
    calls = [["fine"], too_many, ["also fine"], []]
    with ThreadPoolExecutor(4) as ex:
        futures = [ex.submit(_embed, batched_port, texts) for texts in calls]
    assert len(futures[0].result()) == 1
    with pytest.raises(TEXTLAB.InvalidArgument, match="at most 256"):
        futures[1].result()
    assert len(futures[2].result()) == 1
    assert futures[3].result() == []
