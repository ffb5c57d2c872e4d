"""Smoke test of the benchmark suite: one scenario, quick, finishes and writes its files.

It never checks the numbers (they depend on the machine); it checks that ``python -m bench``
starts what it measures, drives it, stops it, and writes JSON, Markdown and PNG files.
Run with ``pytest bench/test_smoke.py`` (``make test`` includes it).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SCENARIO = "sleep"
"""The quickest scenario that starts an offloop worker, a gateway and baselines."""


@pytest.mark.timeout(180)
def test_quick_scenario_writes_its_files(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--scenario", SCENARIO, "--quick", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=170,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    doc = json.loads((tmp_path / f"{SCENARIO}.json").read_text())
    assert doc["scenario"] == SCENARIO
    assert doc["skipped"] is None
    assert doc["machine"]["cpu_model"]
    assert doc["tables"] and doc["tables"][0]["rows"]
    assert (tmp_path / f"{SCENARIO}.md").read_text().startswith("# ")
    assert doc["plots"]
    for plot in doc["plots"]:
        assert (tmp_path / plot).read_bytes().startswith(b"\x89PNG")


def test_list_names_every_scenario() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--list"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    names = {line.split()[0] for line in proc.stdout.splitlines() if line.strip()}
    assert {
        "cpu-blocks-the-loop",
        "sleep",
        "io-concurrency",
        "pools",
        "overhead",
        "peer",
        "worker",
    } <= names
