"""docs/your-service.md, followed as a new user would (issue 12, item 13).

The page's IDL and handler are the files of ``docs/examples/shop/``, shown verbatim; its
``offloop worker`` and ``offloop gateway`` lines are started as written (on free ports instead
of 9090 and 8080, from the folder the page says), without ``PYTHONPATH``; then every ``curl``
line of the page is replayed in order and must get the answer printed under it, with the
status the answer implies (its ``code``, 202 for a oneway method, else 200; an error's
``request_id`` must be there, its value differs on every call). ``/docs`` and
``/openapi.json`` must answer too, and each process logs that it stopped. The page's
generated-client step is run as written: ``openapi-python-client generate``, then its sample,
which must print what the page shows.
"""

from __future__ import annotations

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

from net import free_port
from waiting import wait_until

from offloop.idl import load_idl, service_info

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "your-service.md"
SHOP = ROOT / "docs" / "examples" / "shop"

#: The ports the page uses, and what the test puts in their place.
WORKER_PORT, GATEWAY_PORT = "9090", "8080"

#: Seconds for a server to start listening, and for an HTTP answer.
START_TIMEOUT = 60.0
HTTP_TIMEOUT = 30.0

_FENCE = re.compile(r"^```(\w*)\n(.*?)^```\n", re.S | re.M)


@dataclass(frozen=True)
class Block:
    info: str
    text: str


def _blocks() -> list[Block]:
    return [Block(m.group(1), m.group(2)) for m in _FENCE.finditer(PAGE.read_text())]


def _walkthrough_commands() -> tuple[str, list[str], list[str]]:
    """The folder to ``cd`` to, and the first ``offloop worker`` and ``offloop gateway``
    lines of the page (the walkthrough's; later ones only show shapes)."""
    folder, worker, gateway = "", "", ""
    for block in _blocks():
        if block.info != "sh":
            continue
        for line in block.text.splitlines():
            if line.startswith("cd ") and not folder:
                folder = line.removeprefix("cd ").strip()
            elif line.startswith("offloop worker ") and not worker:
                worker = line
            elif line.startswith("offloop gateway ") and not gateway:
                gateway = line
    assert folder and worker and gateway, "the page shows no cd, worker or gateway line"
    return folder, shlex.split(worker)[1:], shlex.split(gateway)[1:]


@dataclass(frozen=True)
class Curl:
    method: str
    path: str
    body: bytes | None
    expected: Any


def _curls() -> list[Curl]:
    """Every ``curl`` line of the page with the JSON answer shown in the block after it."""
    blocks = _blocks()
    found = []
    for block, answer in itertools.pairwise(blocks):
        if block.info != "sh" or not block.text.startswith("curl "):
            continue
        assert answer.info == "json", f"no answer shown after {block.text!r}"
        args = shlex.split(block.text)
        method, body, url = "GET", None, ""
        i = 1
        while i < len(args):
            arg = args[i]
            if arg == "-X":
                method, i = args[i + 1], i + 2
            elif arg in ("-d", "--data"):
                body, i = args[i + 1].encode(), i + 2
            elif arg == "-H":
                assert args[i + 1] == "content-type: application/json", args[i + 1]
                i += 2
            elif arg == "-s":
                i += 1
            else:
                assert not url, f"unexpected argument {arg!r} in {block.text!r}"
                url, i = arg, i + 1
        prefix = f"localhost:{GATEWAY_PORT}"
        assert url.startswith(prefix), url
        found.append(Curl(method, url.removeprefix(prefix), body, json.loads(answer.text)))
    return found


def test_the_page_shows_the_example_files_verbatim() -> None:
    shown = {b.text for b in _blocks() if b.info in ("thrift", "python")}
    assert (SHOP / "shop.thrift").read_text() in shown
    assert (SHOP / "shop_service.py").read_text() in shown


def test_the_page_has_the_calls_it_promises() -> None:
    paths = {c.path for c in _curls()}
    methods = set(service_info(load_idl(SHOP / "shop.thrift"), "Shop").methods)
    assert {f"/rpc/Shop/{m}" for m in methods} <= paths


def _env() -> dict[str, str]:
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("OFFLOOP_")},
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONPATH": "",
    }


@contextlib.contextmanager
def _serving(argv: list[str], cwd: Path, port: int, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``offloop ARGV`` running in ``cwd`` until the block ends, then SIGTERM (exit 0)."""
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "offloop.cli", *argv],
            cwd=cwd,
            env=_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:

        def up() -> bool:
            assert proc.poll() is None, f"offloop {argv} exited:\n{log.read_text()}"
            return _connects(port)

        wait_until(up, START_TIMEOUT)
        yield proc
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, log.read_text()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _connects(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
        return True
    return False


_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _request(url: str, method: str = "GET", body: bytes | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, body, {"content-type": "application/json"}, method=method)
    try:
        with _HTTP.open(request, timeout=HTTP_TIMEOUT) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read()


def _without_request_ids(value: Any) -> Any:
    """An answer without its request ids (different on every call)."""
    if isinstance(value, dict):
        return {k: _without_request_ids(v) for k, v in value.items() if k != "request_id"}
    if isinstance(value, list):
        return [_without_request_ids(v) for v in value]
    return value


def _substitute(argv: list[str], ports: dict[str, str]) -> list[str]:
    return [re.sub(r"\b(9090|8080)\b", lambda m: ports[m.group(1)], arg) for arg in argv]


@contextlib.contextmanager
def _walkthrough(tmp_path: Path) -> Iterator[str]:
    """The page's worker and gateway, started as the page says (free ports instead of 9090
    and 8080), until the block ends; the gateway's base URL, once it is ready."""
    folder, worker_argv, gateway_argv = _walkthrough_commands()
    cwd = ROOT / folder
    assert cwd == SHOP
    ports = {WORKER_PORT: str(free_port()), GATEWAY_PORT: str(free_port())}
    base = f"http://127.0.0.1:{ports[GATEWAY_PORT]}"
    with (
        _serving(
            _substitute(worker_argv, ports),
            cwd,
            int(ports[WORKER_PORT]),
            tmp_path / "worker.log",
        ),
        _serving(
            _substitute(gateway_argv, ports),
            cwd,
            int(ports[GATEWAY_PORT]),
            tmp_path / "gateway.log",
        ),
    ):
        wait_until(lambda: _request(f"{base}/readyz")[0] == 200, START_TIMEOUT)
        yield base


def test_the_walkthrough_answers_as_the_page_says(tmp_path: Path) -> None:
    oneway = {
        name
        for name, method in service_info(load_idl(SHOP / "shop.thrift"), "Shop").methods.items()
        if method.oneway
    }
    with _walkthrough(tmp_path) as base:
        for curl in _curls():
            status, raw = _request(base + curl.path, curl.method, curl.body)
            answer = json.loads(raw)
            assert _without_request_ids(answer) == _without_request_ids(curl.expected), curl
            if isinstance(curl.expected, dict) and "error" in curl.expected:
                # The page shows each error's request_id, and says its value differs: there
                # must be one, a string, whatever it is.
                assert isinstance(curl.expected["error"].get("request_id"), str), curl
                assert isinstance(answer["error"].get("request_id"), str), (curl, answer)
                wanted = curl.expected["error"]["code"]
            else:
                wanted = 202 if curl.path.rsplit("/", 1)[1] in oneway else 200
            assert status == wanted, curl
        status, page = _request(f"{base}/docs")
        assert status == 200 and b"<html" in page.lower()
        status, raw = _request(f"{base}/openapi.json")
        assert status == 200 and "/rpc/Shop/place" in json.loads(raw)["paths"]
        wait_until(
            lambda: (
                "note for the shopkeeper: the fridge hums" in (tmp_path / "worker.log").read_text()
            ),
            START_TIMEOUT,
        )
    # Stopped with SIGTERM, each says so, as the page says.
    assert " offloop.gateway[" in _line_with("gateway stopped", tmp_path / "gateway.log")
    assert " offloop.worker[" in _line_with("worker stopped", tmp_path / "worker.log")


def _line_with(text: str, log: Path) -> str:
    """The line of ``log`` that ends with ``text``."""
    lines = [line for line in log.read_text().splitlines() if line.endswith(text)]
    assert lines, f"no {text!r} in {log.name}:\n{log.read_text()}"
    return lines[-1]


def _client_step() -> tuple[list[str], str, str]:
    """The page's ``openapi-python-client generate`` line (its arguments), the Python sample
    that uses the generated package, and the output shown under that sample."""
    blocks = _blocks()
    generate: list[str] = []
    for block in blocks:
        for line in block.text.splitlines() if block.info == "sh" else []:
            if line.startswith("openapi-python-client generate "):
                generate = shlex.split(line)[1:]
    samples = [
        (sample, shown)
        for sample, shown in itertools.pairwise(blocks)
        if sample.info == "python" and "from shop_api_client import Client" in sample.text
    ]
    assert generate and len(samples) == 1, "the page shows no generate line or client sample"
    [(sample, shown)] = samples
    assert shown.info == "text", "no output shown after the client sample"
    return generate, sample.text, shown.text


_REQUEST_ID = re.compile(r"\b[0-9a-f]{32}\b")


def test_a_client_generated_from_openapi_json_calls_the_service(tmp_path: Path) -> None:
    """openapi-python-client, run as the page says, makes a working typed client from the
    gateway's ``/openapi.json``; the page's sample, run after the page's ``curl`` calls, prints
    what the page shows (request ids aside): typed calls, one enum class, a declared exception
    as its own type."""
    generate, sample, shown = _client_step()
    with _walkthrough(tmp_path) as base:
        for curl in _curls():  # the state the page's sample starts from
            _request(base + curl.path, curl.method, curl.body)
        generated = subprocess.run(
            [sys.executable, "-m", "openapi_python_client", *_point_at(generate, base)],
            cwd=tmp_path,
            # its post-generation hooks run ruff, from this interpreter's bin directory
            env={
                **_env(),
                "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]),
            },
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert generated.returncode == 0, generated.stdout + generated.stderr
        assert (tmp_path / "shop_api_client" / "__init__.py").is_file(), generated.stdout
        (tmp_path / "use_client.py").write_text(
            sample.replace(f"http://localhost:{GATEWAY_PORT}", base)
        )
        used = subprocess.run(
            [sys.executable, "use_client.py"],
            cwd=tmp_path,
            env=_env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert used.returncode == 0, used.stderr
        assert _REQUEST_ID.sub("<id>", used.stdout) == _REQUEST_ID.sub("<id>", shown)
        assert "<id>" in _REQUEST_ID.sub("<id>", shown)  # the id is shown, and was printed


def _point_at(args: list[str], base: str) -> list[str]:
    """The generate line's arguments, with the page's gateway URL replaced by ``base``."""
    return [arg.replace(f"http://localhost:{GATEWAY_PORT}", base) for arg in args]
