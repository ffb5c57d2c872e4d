"""``python -m bench``: run the scenarios, write their results, print their tables.

    python -m bench                          # every scenario
    python -m bench --scenario sleep         # one (repeat the flag for several)
    python -m bench --quick                  # a few seconds per measurement, one repeat
    python -m bench --repeat 5 --publish     # copy the results into docs/performance/

Exits 0 when every scenario ran or was skipped for a stated reason (peer without Ray), 1 when
one failed.
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table as RichTable

from bench import scenarios
from bench.common import ROOT, machine_info, raise_nofile_limit
from bench.report import Context, ScenarioResult, print_result, publish, write_result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--scenario",
        action="append",
        default=[],
        metavar="NAME",
        help="run this scenario (repeatable; default: all)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="each measurement for a few seconds, one repeat"
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=None,
        help="repeats per contender (default: each scenario's own, 1 if quick)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=ROOT / "bench" / "results",
        help="where results go (default bench/results)",
    )
    parser.add_argument(
        "--publish",
        action="store_true",
        help="also copy results to docs/performance/ and rebuild docs/performance.md",
    )
    parser.add_argument("--list", action="store_true", help="list the scenarios and exit")
    opts = parser.parse_args(argv)

    if opts.list:
        for name in scenarios.SCENARIOS:
            print(f"{name:22} {scenarios.load(name).SUMMARY}")
        return 0
    names = opts.scenario or list(scenarios.SCENARIOS)
    unknown = [n for n in names if n not in scenarios.SCENARIOS]
    if unknown:
        parser.error(
            f"unknown scenario {', '.join(unknown)}; known: {', '.join(scenarios.SCENARIOS)}"
        )
    if opts.repeat is not None and opts.repeat < 1:
        parser.error("--repeat must be at least 1")
    raise_nofile_limit()
    out: Path = opts.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    console = Console()
    if not console.is_terminal:
        console = Console(width=160)  # a log file or pipe: keep tables readable
    walls: list[tuple[str, float, str]] = []
    failed = False
    suite_start = time.monotonic()
    with Progress(
        SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
        TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(),
        console=console, transient=False,
    ) as progress:  # fmt: skip
        for name in names:
            module = scenarios.load(name)
            ctx = Context(
                quick=opts.quick, repeat=opts.repeat, out=out, progress=progress, console=console
            )
            machine = machine_info()
            start = time.monotonic()
            try:
                result: ScenarioResult = module.run(ctx)
                status = "skipped" if result.skipped else "ok"
            except Exception as exc:
                failed = True
                status = "FAILED"
                trace = traceback.format_exc()
                progress.console.print(f"[red]{name} failed:[/] {exc}\n{trace}")
                result = ScenarioResult(
                    name,
                    name,
                    "",
                    "",
                    "",
                    skipped=f"failed: {type(exc).__name__}: {exc}",
                    raw={"traceback": trace},
                )
            finally:
                ctx.end()
            wall = time.monotonic() - start
            write_result(result, out=out, machine=machine, wall=wall, quick=opts.quick,
                         repeat=opts.repeat)  # fmt: skip
            print_result(result, progress.console)
            walls.append((name, wall, status))
    total = time.monotonic() - suite_start
    summary = RichTable(title=f"bench: {len(names)} scenarios in {total:.0f} s (results in {out})")
    summary.add_column("scenario")
    summary.add_column("wall s", justify="right")
    summary.add_column("status")
    for name, wall, status in walls:
        summary.add_row(name, f"{wall:.0f}", status)
    console.print(summary)
    if opts.publish:
        target = publish([n for n, _, s in walls if s != "FAILED"], out,
                         list(scenarios.SCENARIOS))  # fmt: skip
        console.print(f"published to {target}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
