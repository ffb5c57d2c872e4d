"""The scenarios, in the order ``python -m bench`` runs them.

Each module exposes ``NAME``, ``SUMMARY`` (one line for ``--list``) and
``run(ctx: bench.report.Context) -> bench.report.ScenarioResult``.
"""

from __future__ import annotations

import importlib
from types import ModuleType

SCENARIOS: dict[str, str] = {
    "cpu-blocks-the-loop": "bench.scenarios.cpu_blocks_the_loop",
    "sleep": "bench.scenarios.sleep",
    "io-concurrency": "bench.scenarios.io_concurrency",
    "pools": "bench.scenarios.pools",
    "worker": "bench.scenarios.worker",
    "overhead": "bench.scenarios.overhead",
    "tracing": "bench.scenarios.tracing",
    "peer": "bench.scenarios.peer",
    "embed": "bench.scenarios.embed",
    "watchdog": "bench.scenarios.watchdog",
    "callers": "bench.scenarios.callers",
    "tls": "bench.scenarios.tls",
    "fleet": "bench.scenarios.fleet",
}
"""Scenario name -> module."""


def load(name: str) -> ModuleType:
    """The module of scenario ``name``.

    Raises:
        KeyError: no such scenario.
    """
    return importlib.import_module(SCENARIOS[name])
