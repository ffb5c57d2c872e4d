"""The Dockerfile, checked by its structure (no Docker daemon here, and no hadolint: the image
is not built by the tests; docs/deploy.md says so).

What is checked: every stage's base has an explicit tag that is not ``latest``; the final
stage runs as a numeric non-root user; it has a HEALTHCHECK that probes the admin endpoint;
its one entrypoint is a console script of pyproject.toml; what it copies is in the build
context that .dockerignore leaves; the default command parses as a worker's command line;
and nothing the demo needs is fetched at run time (its handler works without a network).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass

import pytest
from deployment import ROOT, flags_in, project

from offloop.cli import parse


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str
    stage: int


def instructions() -> list[Instruction]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped; ``stage``
    counts the ``FROM`` lines before each (0 for the global ``ARG`` s)."""
    joined: list[str] = []
    pending = ""
    for raw in (ROOT / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        joined.append(pending + line)
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued line"
    found: list[Instruction] = []
    stage = 0
    for line in joined:
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stage += 1
        found.append(Instruction(keyword, args.strip(), stage))
    return found


DOCKERFILE = instructions()
FINAL = max(i.stage for i in DOCKERFILE)


def final(keyword: str) -> list[Instruction]:
    return [i for i in DOCKERFILE if i.stage == FINAL and i.keyword == keyword]


def build_args() -> dict[str, str]:
    """The defaults of the global ``ARG`` s (before the first ``FROM``)."""
    found: dict[str, str] = {}
    for i in DOCKERFILE:
        if i.keyword == "ARG" and i.stage == 0 and "=" in i.args:
            name, value = i.args.split("=", 1)
            found[name] = value
    return found


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


def test_every_base_image_has_a_pinned_tag_that_is_not_latest() -> None:
    froms = [i.args.split()[0] for i in DOCKERFILE if i.keyword == "FROM"]
    assert len(froms) >= 2, "a build stage and a slim run stage"
    for image in froms:
        image = re.sub(r"\$\{(\w+)\}", lambda m: build_args()[m.group(1)], image)
        name, _, tag = image.rpartition(":")
        assert name and tag, f"{image}: no explicit tag"
        assert tag != "latest", f"{image}: a moving tag"
        assert "slim" in tag, f"{image}: not a slim base"


def test_the_final_stage_runs_as_a_numeric_non_root_user() -> None:
    users = final("USER")
    assert users, "no USER in the final stage: it would run as root"
    user = users[-1].args.split(":")[0]
    assert user.isdigit() and int(user) != 0, f"USER {user}: not a numeric non-root uid"
    # The manifests run it as the same uid.
    manifest = (ROOT / "deploy/kubernetes/base/worker-deployment.yaml").read_text()
    assert f"runAsUser: {user}" in manifest


def test_the_working_directory_is_not_writable_by_the_user() -> None:
    # Item 8: the working directory is first on sys.path (app_dir "."): a world-writable one
    # (/tmp) would let any process of the container plant a module that the worker imports.
    workdirs = final("WORKDIR")
    assert workdirs, "no WORKDIR: the image's (/) would be used"
    workdir = workdirs[-1].args
    assert workdir == "/app"
    assert not any(workdir.startswith(d) for d in ("/tmp", "/var/tmp", "/dev/shm"))
    # Made by root before USER, mode 0755: the user can read it, not write it.
    stage = [i for i in DOCKERFILE if i.stage == FINAL]
    made = [
        n
        for n, i in enumerate(stage)
        if i.keyword == "RUN" and f"mkdir -m 0755 {workdir}" in i.args
    ]
    user = [n for n, i in enumerate(stage) if i.keyword == "USER"]
    assert made and user and made[0] < user[0], "the working directory is not made by root"


def test_healthcheck_probes_the_admin_endpoint() -> None:
    (check,) = final("HEALTHCHECK")
    assert "CMD" in check.args
    command = exec_form(check.args[check.args.index("CMD") + 3 :].strip())
    assert command[0] == "python"  # the image's own: a slim image has no curl
    env = " ".join(i.args for i in final("ENV"))
    assert "HEALTHCHECK_URL=http://127.0.0.1:9100/livez" in env
    assert "HEALTHCHECK_URL" in command[-1]
    # The port probed is the admin port that the default command opens.
    (cmd,) = final("CMD")
    args = exec_form(cmd.args)
    assert args[args.index("--admin-port") + 1] == "9100"


def test_the_entrypoint_is_the_projects_console_script() -> None:
    (entrypoint,) = final("ENTRYPOINT")
    scripts = project()["scripts"]
    assert isinstance(scripts, dict)
    assert exec_form(entrypoint.args) == ["offloop"]
    assert "offloop" in scripts
    assert final("STOPSIGNAL")[0].args == "SIGTERM"


def test_the_default_command_is_a_worker_command_line_that_parses() -> None:
    (cmd,) = final("CMD")
    args = exec_form(cmd.args)
    assert args[0] == "worker"
    invocation = parse(args, environ={})
    assert invocation.worker is not None
    assert invocation.worker.listen.host == "0.0.0.0"
    assert invocation.worker.admin.host == "0.0.0.0"
    assert "--config" not in flags_in(args)
    exposed = {p for i in final("EXPOSE") for p in i.args.split()}
    assert {"9090", "9100", "8080"} <= exposed


def test_the_build_copies_only_what_the_build_context_holds() -> None:
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    assert "*" in ignore, ".dockerignore should be an allow-list"
    for copy in (i for i in DOCKERFILE if i.keyword == "COPY"):
        if "--from=" in copy.args:
            continue
        *sources, _ = copy.args.split()
        for source in sources:
            assert (ROOT / source).exists(), f"COPY {source}: no such file"
            top = source.split("/")[0]
            assert top in allowed, f"COPY {source}: excluded by .dockerignore"
    assert not {".venv", ".git", "tests", "bench"} & allowed


def test_the_image_installs_the_demo_at_build_time_and_runs_offline() -> None:
    runs = " ".join(i.args for i in DOCKERFILE if i.keyword == "RUN")
    assert "pip install" in runs and "[${EXTRAS}]" in runs
    extras = [i.args for i in DOCKERFILE if i.keyword == "ARG" and i.args.startswith("EXTRAS=")]
    assert extras == ["EXTRAS=demo,auth"]  # item 24: JWT at the gateway works out of the box
    assert "HF_HUB_OFFLINE=1" in " ".join(i.args for i in final("ENV"))
    # Only the build stage runs pip: the run stage downloads nothing.
    assert not [i for i in final("RUN") if "pip" in i.args]


def test_the_demo_handler_needs_no_network() -> None:
    """What the image runs by default works in a network namespace with no network at all:
    no NLTK data, no model hub (the embed model is a pip package of the dl extra)."""
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("unshare (util-linux) is not installed")
    probe = subprocess.run([unshare, "--net", "true"], capture_output=True, timeout=30)
    if probe.returncode != 0:
        pytest.skip(f"cannot make a network namespace here: {probe.stderr.decode().strip()}")
    code = (
        "from offloop.demo.textlab import Handler\n"
        "h = Handler()\n"
        "print(h.ping('offline'), h.parse('the dog saw a man in the park') is not None)\n"
    )
    result = subprocess.run(
        [unshare, "--net", sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["offline", "True"]
