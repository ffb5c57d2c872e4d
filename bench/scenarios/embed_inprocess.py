"""The embed model's own throughput, in process, at each batch size: what the worker's
batching is held against (issue 16: 64 callers ≥ 90 % of the best of these).

Run as ``python -m bench.scenarios.embed_inprocess TEXT SECONDS SIZE...``: loads textlab's
handler as a one-thread pool would (torch gets every core), calls its batched ``embed``
directly with batches of each SIZE (one text per call, as the scenario's callers send) for
SECONDS each, and prints one JSON object: batch size -> embeddings/s.
"""

from __future__ import annotations

import json
import sys
import time

from offloop.demo.textlab import Handler


def measure(text: str, seconds: float, sizes: list[int]) -> dict[int, float]:
    handler = Handler()
    handler.setup_pool("thread", 1)
    handler.embed([[text]])  # loads the model
    rates = {}
    for size in sizes:
        calls = [[text]] * size
        handler.embed(calls)  # warm this shape
        done, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds:
            handler.embed(calls)
            done += size
        rates[size] = done / elapsed
    return rates


def main() -> None:
    text, seconds, *sizes = sys.argv[1:]
    print(json.dumps(measure(text, float(seconds), [int(s) for s in sizes])))


if __name__ == "__main__":
    main()
