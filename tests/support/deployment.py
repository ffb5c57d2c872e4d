"""For the deployment checks (tests/deploy): where the repository's deployment files are, and
the ``offloop`` command's own flags, read from its ``--help`` (the source of truth that the
flags of a manifest or a compose file are checked against).
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"


def project() -> dict[str, object]:
    """``[project]`` of pyproject.toml."""
    with open(ROOT / "pyproject.toml", "rb") as f:
        table = tomllib.load(f)["project"]
    assert isinstance(table, dict)
    return table


def help_flags(command: str) -> frozenset[str]:
    """Every ``--flag`` that ``offloop COMMAND --help`` lists (``--no-x`` forms included)."""
    result = subprocess.run(
        [sys.executable, "-m", "offloop.cli", command, "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return frozenset(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", result.stdout))


def flags_in(args: list[str]) -> list[str]:
    """The flag names in a command line (``--x`` and ``--x=value``), in order."""
    return [a.split("=", 1)[0] for a in args if a.startswith("--")]
