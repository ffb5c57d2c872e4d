"""Results: the context a scenario runs in, what it returns, and the files written from it.

Each scenario writes ``<out>/<name>.json`` (every raw figure, the machine, the tables),
``<out>/<name>.md`` (the tables of medians with min and max over repeats, and the plots) and
``<out>/<name>-*.png``. With ``--publish`` the plots and the JSON less its raw figures are also
copied to ``docs/performance/``, and ``docs/performance.md`` is rebuilt from every JSON there.
"""

from __future__ import annotations

import datetime
import json
import math
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import Progress, TaskID
from rich.table import Table as RichTable

from bench.common import ROOT

DOCS = ROOT / "docs"
PUBLISHED = DOCS / "performance"
"""Where ``--publish`` copies each scenario's files (committed, unlike bench/results/)."""

DISTURBED_BUSY = 0.2
"""A run that starts while other work keeps more than this share of the CPUs busy is flagged
as disturbed (the CPUs are sampled for a second before each scenario)."""


@dataclass
class Table:
    """A table of the report: header and rows of formatted cells."""

    title: str
    columns: list[str]
    rows: list[list[str]]
    note: str = ""

    def markdown(self) -> str:
        lines = [f"**{self.title}**", ""]
        lines.append("| " + " | ".join(self.columns) + " |")
        lines.append(
            "|" + "|".join("---" if i == 0 else "---:" for i in range(len(self.columns))) + "|"
        )
        lines.extend("| " + " | ".join(row) + " |" for row in self.rows)
        if self.note:
            lines += ["", self.note]
        return "\n".join(lines)

    def rich(self) -> RichTable:
        table = RichTable(title=self.title, title_justify="left")
        for i, col in enumerate(self.columns):
            table.add_column(col, justify="left" if i == 0 else "right")
        for row in self.rows:
            table.add_row(*row)
        return table


@dataclass
class ScenarioResult:
    """What a scenario returns.

    Attributes:
        name: the scenario's name (``--scenario``).
        title: a heading.
        claim: the claim it checks, one sentence.
        reading: how to read the result: what it shows.
        method: what was started and how it was driven.
        tables: the report's tables.
        plots: file names of the plots written into ``ctx.out``.
        raw: every raw figure (latency lists included).
        notes: remarks of this run (targets met or missed, contenders skipped...).
        skipped: why the scenario did not run, when it did not.
    """

    name: str
    title: str
    claim: str
    reading: str
    method: str
    tables: list[Table] = field(default_factory=list)
    plots: list[str] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    skipped: str | None = None


class Context:
    """What a scenario gets: mode, repeats, output folder, progress display.

    Args:
        quick: a few seconds per measurement, one repeat (a smoke run).
        repeat: repeats per contender; None for the scenario's default.
        out: the output folder.
        progress: the progress display.
        console: where tables are printed.
    """

    def __init__(
        self,
        *,
        quick: bool,
        repeat: int | None,
        out: Path,
        progress: Progress,
        console: Console,
    ) -> None:
        self.quick = quick
        self.repeat = repeat
        self.out = out
        self.progress = progress
        self.console = console
        self._task: TaskID | None = None

    def repeats(self, default: int) -> int:
        """Repeats to run: ``--repeat`` if given, else 1 when quick, else ``default``."""
        if self.repeat is not None:
            return self.repeat
        return 1 if self.quick else default

    def seconds(self, full: float, quick: float) -> float:
        """A measurement's duration for the mode."""
        return quick if self.quick else full

    def log_dir(self, scenario: str) -> Path:
        return self.out / "logs" / scenario

    def begin(self, name: str, steps: int) -> None:
        """Start the scenario's progress bar with ``steps`` measurements to go."""
        self._task = self.progress.add_task(name, total=steps)

    def step(self, label: str) -> None:
        """Say what is being measured now."""
        if self._task is not None:
            self.progress.update(self._task, description=label)

    def advance(self, n: int = 1) -> None:
        if self._task is not None:
            self.progress.advance(self._task, n)

    def tick(self) -> None:
        """Refresh the display while waiting."""
        self.progress.refresh()

    def end(self) -> None:
        if self._task is not None:
            task = self.progress.tasks[self._task]
            self.progress.update(self._task, completed=task.total)
            self._task = None

    def say(self, text: str) -> None:
        self.progress.console.print(text)


def _clean(value: Any) -> Any:
    """JSON cannot hold NaN or infinity: they become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def is_disturbed(machine: dict[str, Any]) -> bool:
    return bool((machine.get("cpu_busy_before") or 0.0) > DISTURBED_BUSY)


def machine_line(machine: dict[str, Any]) -> str:
    pk = machine["packages"]
    versions = ", ".join(f"{k} {v}" for k, v in pk.items() if v and k != "offloop")
    return (
        f"{machine['usable_cpus']} CPUs ({machine['physical_cores']} physical cores), "
        f"{machine['cpu_model']}, {machine['memory_gib']} GiB, {machine['os']}; Python "
        f"{machine['python']}, offloop {pk.get('offloop')}; {versions}. At the start: CPUs "
        f"{100 * (machine.get('cpu_busy_before') or 0):.0f} % busy with other work, load "
        f"average {' '.join(str(x) for x in machine['load_average'])}."
    )


def write_result(
    result: ScenarioResult,
    *,
    out: Path,
    machine: dict[str, Any],
    wall: float,
    quick: bool,
    repeat: int | None,
) -> dict[str, Any]:
    """Write ``<name>.json`` and ``<name>.md`` into ``out``; returns the JSON document."""
    doc = {
        "scenario": result.name,
        "title": result.title,
        "claim": result.claim,
        "reading": result.reading,
        "method": result.method,
        "finished": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "quick": quick,
        "repeat": repeat,
        "wall_s": round(wall, 1),
        "machine": machine,
        "disturbed": is_disturbed(machine),
        "skipped": result.skipped,
        "tables": [asdict(t) for t in result.tables],
        "plots": result.plots,
        "notes": result.notes,
        "raw": result.raw,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{result.name}.json").write_text(json.dumps(_clean(doc), indent=1) + "\n")
    (out / f"{result.name}.md").write_text(scenario_markdown(doc, heading="#") + "\n")
    return doc


def scenario_markdown(doc: dict[str, Any], *, heading: str = "#", plot_dir: str = "") -> str:
    """A scenario's section: claim, tables, plots, notes, method and machine."""
    lines = [f"{heading} {doc['title']}", "", f"*Claim:* {doc['claim']}", ""]
    mode = "quick" if doc["quick"] else "full"
    run = (
        f"*Run:* `python -m bench --scenario {doc['scenario']}` ({mode}), finished "
        f"{doc['finished']} in {doc['wall_s']} s."
    )
    if doc.get("disturbed"):
        run += (
            f" **Disturbed:** other work kept "
            f"{100 * (doc['machine'].get('cpu_busy_before') or 0):.0f} % of the CPUs busy "
            "at the start."
        )
    lines += [run, ""]
    if doc.get("skipped"):
        lines += [f"**Skipped:** {doc['skipped']}", ""]
    for table in doc["tables"]:
        lines += [Table(**table).markdown(), ""]
    for plot in doc["plots"]:
        lines += [f"![{plot}]({plot_dir}{plot})", ""]
    if doc.get("reading"):
        lines += [f"*Reading it:* {doc['reading']}", ""]
    if doc["notes"]:
        lines += ["*Notes on this run:*", ""]
        lines += [f"- {note}" for note in doc["notes"]]
        lines.append("")
    lines += [f"*Method:* {doc['method']}", "", f"*Machine:* {machine_line(doc['machine'])}"]
    return "\n".join(lines)


def print_result(result: ScenarioResult, console: Console) -> None:
    console.rule(result.title)
    if result.skipped:
        console.print(f"[yellow]skipped:[/] {result.skipped}")
    for table in result.tables:
        console.print(table.rich())
        if table.note:
            console.print(table.note, style="dim")
    for note in result.notes:
        console.print(f"- {note}")


def publish(names: list[str], out: Path, order: list[str]) -> Path:
    """Copy the files of ``names`` from ``out`` into docs/performance/ and rebuild
    docs/performance.md from every JSON there (in ``order``)."""
    PUBLISHED.mkdir(parents=True, exist_ok=True)
    for name in names:
        doc_path = out / f"{name}.json"
        if not doc_path.exists():
            continue
        doc = json.loads(doc_path.read_text())
        for old in PUBLISHED.glob(f"{name}-*.png"):
            old.unlink()
        for plot in doc["plots"]:
            shutil.copy2(out / plot, PUBLISHED / plot)
        # The raw figures (every latency) stay in bench/results/: the page needs the tables.
        slim = {k: v for k, v in doc.items() if k != "raw"}
        (PUBLISHED / f"{name}.json").write_text(json.dumps(slim, indent=1) + "\n")
    docs = []
    for name in order:
        path = PUBLISHED / f"{name}.json"
        if path.exists():
            docs.append(json.loads(path.read_text()))
    target = DOCS / "performance.md"
    target.write_text(performance_markdown(docs) + "\n")
    return target


_INTRO = """\
# Performance

offloop's design rests on a few claims. This page shows each one measured, against what a
user would otherwise run, on one machine, in one command:

```sh
make bench                          # every scenario, about 15 minutes on 2 cores
make bench SCENARIO=sleep           # one scenario
make bench QUICK=1                  # each scenario for a few seconds (a smoke run)
.venv/bin/python -m bench --list    # the scenarios
.venv/bin/python -m bench --publish  # every scenario, then refresh this page
.venv/bin/python -m bench --scenario overhead --repeat 5 --out /tmp/overhead
```

FastAPI (a contender of `cpu-blocks-the-loop`) comes with the `bench` extra, which `make`
installs; `make bench` also tries to install Ray Serve (the `peer` extra, large) for `peer`,
and the `embed` scenario needs the `dl` extra. Without one of them, that contender or
scenario is left out with a note saying why, and the rest runs.

Each scenario starts every server it measures (on 127.0.0.1, free ports), drives it with a
load generator, stops it, and writes under `bench/results/`: a JSON file with every raw
figure and the machine (cores, CPU model, Python and package versions, load average), a
Markdown table of medians with min and max over repeated runs, and PNG plots. `--publish`
copies them to `docs/performance/` and rebuilds this page from them: the tables and plots
below are the latest published run.

How the comparisons are made:

- **Same run, alternating.** Every contender of a scenario runs in the same process tree, in
  turn (A, B, C, A, B, C...), so that a machine that slows down mid-run slows every
  contender alike. Figures are medians over the repeats, with (min-max); ratios are of
  medians.
- **The load generator is not the bottleneck.** `bench/loadgen.py` is a multi-process uvloop
  client with hand-written HTTP/1.1 requests and a minimal reply parser (a Thrift variant
  uses offloop's multiplexed pool). Each table reports the generator's CPU use; a process
  near 100 % of a core would be a bottleneck, and the notes say so when it happens.
- **Latency without coordinated omission.** A light probe sends on a fixed schedule and counts
  each request's latency from the moment it was due, so a server that stalls is charged for
  every request it held up.
- **Same work everywhere.** Every baseline (`bench/baselines/`) serves the same routes as the
  gateway (`GET /healthz`, `POST /rpc/TextLab/{method}`) and runs the same TextLab handler,
  so the generator sends identical bytes to each contender.
- **Processes are cleaned up.** Each server runs in a session of its own and is stopped with
  SIGTERM, then SIGKILL for whatever is left of its session, in `finally`.
- **Defaults as shipped.** offloop runs with its defaults unless a table says otherwise; note
  that its pool processes run at nice 10 (the worker's `--nice` default), which is part of
  how it keeps the front responsive on a shared machine.

On a machine with few cores the numbers move with everything else that runs: before each
scenario the bench samples the CPUs for a second, and a scenario that started while other
work kept more than a fifth of them busy is marked **disturbed** below. Re-run on a quiet
machine before quoting a figure.
"""


def performance_markdown(docs: list[dict[str, Any]]) -> str:
    """The whole of docs/performance.md from published scenario documents."""
    lines = [_INTRO]
    disturbed = [d["scenario"] for d in docs if d.get("disturbed")]
    if disturbed:
        lines += [
            f"> **Disturbed run.** {', '.join(disturbed)} started while other work kept over "
            f"{100 * DISTURBED_BUSY:.0f} % of the CPUs busy: the figures below show the method "
            "and the shape of each result, not numbers to quote. Re-run "
            "`python -m bench --publish` on a quiet machine.",
            "",
        ]
    if docs:
        lines += ["## Contents", ""]
        for doc in docs:
            anchor = doc["title"].lower()
            anchor = "".join(c for c in anchor if c.isalnum() or c in " -").replace(" ", "-")
            lines.append(f"- [{doc['title']}](#{anchor}) (`{doc['scenario']}`)")
        lines.append("")
    for doc in docs:
        lines += [scenario_markdown(doc, heading="##", plot_dir="performance/"), ""]
    return "\n".join(lines).rstrip()
