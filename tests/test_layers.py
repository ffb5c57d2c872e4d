"""The package's layers point one way (STYLE.md): wire and JSON codecs, then runtime, then
client and worker, then gateway, then assembly, then the command line. This reads every
module's imports (lazy ones inside functions included) and fails on any that points up, or
across between the client and the worker."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

#: Layer of each top-level part of the package; a module may import its own layer and below.
LAYERS: dict[str, int] = {
    "errors": 0,
    "idl": 0,
    "idl_docs": 0,
    "idl_requiredness": 0,
    "listen": 0,
    "tls": 0,
    "logs": 0,
    "identity": 0,
    "context": 0,
    "tracing": 0,
    "batching": 0,
    "inline": 0,
    "codec": 0,
    "runtime": 1,
    "watchdog": 1,
    "client": 2,
    "worker": 2,
    "gateway": 3,
    "app": 4,
    "testing": 4,
    "demo": 4,
    "cli": 5,
}
#: Same layer, but neither may know the other.
APART = {("client", "worker"), ("worker", "client")}


def _part(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "offloop" or len(parts) < 2:
        return None
    return parts[1]


def _imports(path: Path) -> list[tuple[str, int]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, node.lineno))
    return found


def _modules() -> list[Path]:
    root = SRC / "offloop"
    return sorted(p for p in root.rglob("*.py") if p.parent != root or p.name != "__init__.py")


def test_every_part_has_a_layer() -> None:
    parts = {p.relative_to(SRC / "offloop").parts[0].removesuffix(".py") for p in _modules()}
    parts.discard("__main__")
    assert parts <= set(LAYERS), f"parts without a layer: {sorted(parts - set(LAYERS))}"


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(SRC)))
def test_imports_point_down(path: Path) -> None:
    here = path.relative_to(SRC / "offloop").parts[0].removesuffix(".py")
    wrong = []
    for module, line in _imports(path):
        there = _part(module)
        if there is None or there == here:
            continue
        if LAYERS[there] > LAYERS[here] or (here, there) in APART:
            wrong.append(f"line {line}: offloop.{here} imports {module}")
    assert not wrong, "\n".join(wrong)
