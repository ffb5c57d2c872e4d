"""docs/configuration.md stays what the dataclasses say: its tables and its example file."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from offloop.cli import parse
from offloop.cli.commands import reference

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
BEGIN = "<!-- BEGIN offloop config-reference -->"
END = "<!-- END offloop config-reference -->"


def test_the_tables_of_the_docs_are_those_the_dataclasses_give() -> None:
    text = DOC.read_text()
    assert BEGIN in text and END in text
    tables = text.split(BEGIN, 1)[1].split(END, 1)[0]
    assert tables.strip() == reference().strip(), (
        "docs/configuration.md is out of date: replace what lies between its markers with "
        "the output of `offloop config-reference`"
    )


def test_config_reference_prints_them() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "offloop.cli", "config-reference"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == reference()


@pytest.mark.parametrize("command", ["worker", "gateway"])
def test_the_example_file_of_the_docs_is_valid(command: str, tmp_path: Path) -> None:
    example = re.search(r"```toml\n(.*?)```", DOC.read_text(), re.S)
    assert example is not None
    path = tmp_path / "offloop.toml"
    path.write_text(example[1])
    invocation = parse([command, "--config", str(path)], environ={})
    assert invocation.log_level == "INFO"
    if command == "worker":
        assert invocation.worker is not None
        assert (invocation.worker.pool.workers, invocation.worker.admin.port) == (4, 9100)
    else:
        assert invocation.gateway is not None
        assert invocation.gateway.front.max_body == 262144
        assert invocation.gateway.watchdog.stall_threshold == 0.05


def test_no_module_outside_the_cli_imports_it() -> None:
    """The CLI sits on top: the library, the assembly layer and the demo never import it."""
    package = Path(__file__).resolve().parents[2] / "src" / "offloop"
    importing = re.compile(
        r"^\s*(from offloop\.cli\b|import offloop\.cli\b|from offloop import cli\b)", re.M
    )
    offenders = [
        str(path.relative_to(package))
        for path in package.rglob("*.py")
        if "cli" not in path.relative_to(package).parts[:1] and importing.search(path.read_text())
    ]
    assert offenders == []
