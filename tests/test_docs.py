"""The docs cannot rot: their examples run, their command lines parse, their links resolve.

- Every code sample of ``docs/library.md`` is a file of ``docs/examples/``, shown verbatim; each
  example runs here in a subprocess (servers on 127.0.0.1, on free ports, stopped with SIGINT
  and expected to exit 0; anything left of their process group is killed).
- Every ``offloop ...`` command line of ``README.md`` and ``docs/*.md`` parses with
  :func:`offloop.cli.parse`, values checked: a line of a shell block as it stands, an inline one
  (often a fragment) with placeholders in the environment for the required settings it leaves
  out.
- Every relative link and image points to a file that exists, and a link to a heading of a
  page (``gateway.md#errors``) to a heading that exists.
- Python samples in the docs parse, and import offloop only through its public API (``offloop``
  and ``offloop.testing``).
"""

from __future__ import annotations

import ast
import contextlib
import itertools
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from net import free_port
from waiting import wait_until

from offloop.cli import parse

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LIBRARY = ROOT / "docs" / "library.md"
EXAMPLES = ROOT / "docs" / "examples"

#: Modules of offloop that samples may import: the public API.
PUBLIC_MODULES = frozenset({"offloop", "offloop.testing"})

#: Seconds an example may take to start listening, to finish, or to stop after SIGINT.
START_TIMEOUT = 60.0
RUN_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0

#: No bytecode under docs/examples from running the examples.
ENV = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}


# -- reading Markdown ----------------------------------------------------------------------


@dataclass(frozen=True)
class Block:
    """A fenced code block: its info string (``python``, ``sh``...) and its text."""

    doc: Path
    line: int
    info: str
    text: str

    @property
    def where(self) -> str:
        return f"{self.doc.relative_to(ROOT)}:{self.line}"


def split_markdown(doc: Path) -> tuple[list[Block], list[tuple[int, str]]]:
    """The fenced blocks of ``doc``, and its other lines (number, text)."""
    blocks: list[Block] = []
    prose: list[tuple[int, str]] = []
    fence: tuple[int, str, list[str]] | None = None
    for number, line in enumerate(doc.read_text().splitlines(), 1):
        if line.lstrip().startswith("```"):
            if fence is None:
                fence = (number, line.strip()[3:].strip(), [])
            else:
                start, info, body = fence
                blocks.append(Block(doc, start, info, "\n".join(body) + "\n"))
                fence = None
        elif fence is not None:
            fence[2].append(line)
        else:
            prose.append((number, line))
    assert fence is None, f"{doc.relative_to(ROOT)}:{fence[0]}: code block never closed"
    return blocks, prose


def inline_code(line: str) -> list[str]:
    return re.findall(r"`([^`]+)`", line)


# -- command lines -------------------------------------------------------------------------


@dataclass(frozen=True)
class Command:
    """An ``offloop`` command line shown in a doc.

    Attributes:
        where: ``doc:line``.
        argv: the arguments after ``offloop``.
        environ: ``VAR=value`` settings written before it.
        fragment: an inline mention, which may leave out required flags.
        config: the text of the doc's first TOML block, for a ``--config`` file it names.
    """

    where: str
    argv: tuple[str, ...]
    environ: tuple[tuple[str, str], ...] = ()
    fragment: bool = False
    config: str | None = None


def _shell_lines(block: Block) -> Iterator[tuple[int, str]]:
    """The logical lines of a shell block, with their first line's number: continuations
    joined, prompts dropped."""
    pending, first = "", 0
    for number, raw in enumerate(block.text.splitlines(), block.line + 1):
        line = raw.rstrip()
        first = first or number
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        yield first, (pending + line).strip().removeprefix("$ ")
        pending, first = "", 0


def _split_command(text: str) -> tuple[tuple[tuple[str, str], ...], list[str]] | None:
    """``(environment, argv)`` if ``text`` runs offloop, else None."""
    try:
        tokens = shlex.split(text, comments=True)
    except ValueError:
        return None
    environ = []
    while tokens and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", tokens[0]):
        name, _, value = tokens.pop(0).partition("=")
        environ.append((name, value))
    if not tokens or Path(tokens[0]).name != "offloop":
        return None
    return tuple(environ), tokens[1:]


def doc_commands(doc: Path) -> list[Command]:
    blocks, prose = split_markdown(doc)
    config = next((b.text for b in blocks if b.info == "toml"), None)
    found: list[Command] = []
    for block in blocks:
        if block.info not in ("sh", "bash", "shell", "console"):
            continue
        for number, line in _shell_lines(block):
            split = _split_command(line)
            if split is not None:
                where = f"{doc.relative_to(ROOT)}:{number}"
                found.append(Command(where, tuple(split[1]), split[0], config=config))
    for number, line in prose:
        for span in inline_code(line):
            split = _split_command(span) if span.startswith("offloop ") else None
            if split is not None:
                where = f"{doc.relative_to(ROOT)}:{number}"
                for argv in _variants(split[1]):
                    found.append(Command(where, argv, split[0], fragment=True, config=config))
    return found


def _variants(tokens: list[str]) -> list[tuple[str, ...]]:
    """A fragment's command lines: ``...`` left out, each ``a|b`` alternative on its own."""
    choices = [token.split("|") for token in tokens if token != "..."]
    return [tuple(argv) for argv in itertools.product(*choices)]


#: The required settings a fragment may leave out, given in the environment: its own flags
#: still win, and are checked.
PLACEHOLDERS = {
    "OFFLOOP_IDL": "service.thrift",
    "OFFLOOP_SERVICE": "Service",
    "OFFLOOP_HANDLER": "package.module:Handler",
    "OFFLOOP_BACKEND": "127.0.0.1:9090",
}


COMMANDS = [command for doc in DOCS for command in doc_commands(doc)]


def test_the_docs_show_command_lines() -> None:
    wheres = {c.where.split(":")[0] for c in COMMANDS if not c.fragment}
    assert {"README.md", "docs/gateway.md", "docs/worker.md", "docs/actors.md"} <= wheres


@pytest.mark.parametrize(
    "command", COMMANDS, ids=[f"{c.where} offloop {' '.join(c.argv)}" for c in COMMANDS]
)
def test_command_line_parses(
    command: Command,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = list(command.argv)
    environ = {**(PLACEHOLDERS if command.fragment else {}), **dict(command.environ)}
    if "--config" in argv:
        name = argv[argv.index("--config") + 1]
        assert command.config is not None, f"{command.where}: --config {name}, no TOML shown"
        (tmp_path / name).write_text(command.config)
        monkeypatch.chdir(tmp_path)
    try:
        parse(argv, environ)
    except SystemExit as exc:  # --help and --version exit 0; a bad line exits 2
        assert exc.code == 0, f"{command.where}: {capsys.readouterr().err.strip()}"


# -- links -------------------------------------------------------------------------------------

_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_REFERENCE = re.compile(r"^\s*\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)")


def relative_links(doc: Path) -> list[tuple[int, str]]:
    _, prose = split_markdown(doc)
    links = []
    for number, line in prose:
        text = re.sub(r"`[^`]*`", "", line)
        targets = _LINK.findall(text) + _REFERENCE.findall(text)
        for target in targets:
            if not re.match(r"[a-z][a-z0-9+.-]*:", target):  # not a URL
                links.append((number, target))
    return links


def anchors(doc: Path) -> set[str]:
    """The anchors of ``doc``'s headings, as GitHub makes them."""
    found: set[str] = set()
    for _, line in split_markdown(doc)[1]:
        heading = re.match(r"#{1,6}\s+(.*)", line)
        if heading is None:
            continue
        slug = re.sub(r"[^\w\- ]", "", heading.group(1).strip().lower()).replace(" ", "-")
        anchor, n = slug, 0
        while anchor in found:  # a repeated heading gets -1, -2...
            n += 1
            anchor = f"{slug}-{n}"
        found.add(anchor)
    return found


def _resolves(doc: Path, target: str) -> bool:
    path, _, fragment = target.partition("#")
    file = doc.parent / path if path else doc
    if not file.exists():
        return False
    return not fragment or file.suffix != ".md" or fragment in anchors(file)


@pytest.mark.parametrize("doc", DOCS, ids=[str(d.relative_to(ROOT)) for d in DOCS])
def test_relative_links_resolve(doc: Path) -> None:
    broken = [
        f"{doc.relative_to(ROOT)}:{number}: {target}"
        for number, target in relative_links(doc)
        if not _resolves(doc, target)
    ]
    assert not broken


# -- Python samples ------------------------------------------------------------------------

PYTHON_BLOCKS = [
    block for doc in DOCS for block in split_markdown(doc)[0] if block.info in ("python", "py")
]


def offloop_imports(tree: ast.AST) -> list[str]:
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
    return [n for n in names if n == "offloop" or n.startswith("offloop.")]


@pytest.mark.parametrize("block", PYTHON_BLOCKS, ids=[b.where for b in PYTHON_BLOCKS])
def test_python_samples_use_the_public_api(block: Block) -> None:
    tree = ast.parse(block.text, filename=block.where)
    internal = [m for m in offloop_imports(tree) if m not in PUBLIC_MODULES]
    assert not internal, f"{block.where} imports internal modules: {internal}"


def test_library_shows_every_example_verbatim() -> None:
    files = {
        path.name: path.read_text()
        for path in sorted(EXAMPLES.iterdir())
        if path.suffix in (".py", ".thrift")
    }
    shown = [b for b in split_markdown(LIBRARY)[0] if b.info in ("python", "thrift")]
    assert not [b.where for b in shown if b.text not in files.values()], "not an example file"
    texts = {b.text for b in shown}
    assert not [name for name, text in files.items() if text not in texts], "example not shown"


# -- the examples, run ---------------------------------------------------------------------


def run_example(*args: str) -> subprocess.CompletedProcess[str]:
    """Run ``python docs/examples/<args>`` to its end; fail if it does not exit 0."""
    done = subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
    )
    assert done.returncode == 0, f"{args} exited {done.returncode}:\n{done.stdout}{done.stderr}"
    return done


def _listening(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
        return True
    return False


@contextlib.contextmanager
def serving(log: Path, script: str, *args: str, port: int) -> Iterator[None]:
    """Run a server example until the block ends, then SIGINT it: it must exit 0.

    It runs in a process group of its own, so that whatever of it is still there afterwards
    (a pool's children, if it failed) is killed with it.
    """
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, str(EXAMPLES / script), *args],
            cwd=ROOT,
            env=ENV,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_until(lambda: proc.poll() is not None or _listening(port), START_TIMEOUT)
        assert proc.poll() is None, f"{script} exited {proc.returncode}:\n{log.read_text()}"
        yield
        proc.send_signal(signal.SIGINT)
        code = proc.wait(STOP_TIMEOUT)
        assert code == 0, f"{script} exited {code} on SIGINT:\n{log.read_text()}"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # 127.0.0.1 directly


def http(url: str, body: Any = None) -> tuple[int, Any]:
    """GET ``url``, or POST ``body`` as JSON; the status and the decoded JSON (or text)."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data, {"content-type": "application/json"})
    try:
        with _HTTP.open(request, timeout=RUN_TIMEOUT) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as exc:
        with exc:
            status, raw = exc.code, exc.read()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode()


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``docs/examples/worker.py`` serving; its address."""
    port = free_port()
    log = tmp_path_factory.mktemp("worker") / "worker.log"
    with serving(log, "worker.py", str(port), port=port):
        yield f"127.0.0.1:{port}"


def test_clients(worker: str) -> None:
    assert run_example(str(EXAMPLES / "client.py"), worker).stdout == "hello\n5\n"
    assert run_example(str(EXAMPLES / "async_client.py"), worker).stdout == f"{2 * 28}\n"


def test_gateway(worker: str, tmp_path: Path) -> None:
    port = free_port()
    with serving(tmp_path / "gateway.log", "gateway.py", worker, str(port), port=port):
        url = f"http://127.0.0.1:{port}"
        assert http(f"{url}/rpc/Echo/add", {"a": 2, "b": 3}) == (200, {"result": 5})
        status, body = http(f"{url}/rpc/Echo/fail", {"why": "boom"})
        assert (status, body["error"]["message"]) == (502, "Echo.fail: backend error")
        assert http(f"{url}/readyz")[0] == 200


def test_gateway_mounted_in_starlette(worker: str, tmp_path: Path) -> None:
    port = free_port()
    with serving(tmp_path / "mount.log", "mount.py", worker, str(port), port=port):
        url = f"http://127.0.0.1:{port}"
        assert http(f"{url}/") == (200, "the Echo API is under /api\n")
        assert http(f"{url}/api/rpc/Echo/echo", {"text": "hi"}) == (200, {"result": "hi"})
        assert http(f"{url}/api/healthz") == (200, {"status": "ok"})


def test_errors_example_prints_what_the_doc_says() -> None:
    out = run_example(str(EXAMPLES / "errors.py")).stdout
    doc = LIBRARY.read_text()
    assert out.count("\n") == 5
    assert not [line for line in out.splitlines() if line not in doc]


def test_in_memory_tests_pass() -> None:
    done = run_example("-m", "pytest", "-q", str(EXAMPLES))
    assert re.search(r"\b2 passed\b", done.stdout), done.stdout
