"""deploy/compose.yaml, parsed and checked without Docker (no daemon or compose plugin here).

A gateway and N worker replicas of one image (the project's version, built from the
Dockerfile), the gateway finding the workers by ``dns:///worker:9090``; every command line is
made of flags the command has and parses as offloop parses it; each service has a health
check on the right endpoint and a stop grace period longer than drain delay + grace.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml
from deployment import DEPLOY, ROOT, flags_in, project

from offloop.cli import parse

COMPOSE: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]


def seconds(duration: str) -> float:
    """A compose duration (``20s``, ``1m30s``) in seconds."""
    parts = re.fullmatch(r"(?:(\d+)m)?(?:(\d+(?:\.\d+)?)s)?", duration)
    assert parts and duration, f"not a duration: {duration!r}"
    return 60 * float(parts.group(1) or 0) + float(parts.group(2) or 0)


def test_a_gateway_and_several_workers_of_one_image() -> None:
    assert set(SERVICES) == {"gateway", "worker"}
    version = project()["version"]
    for service in SERVICES.values():
        assert service["image"] == f"offloop:{version}"
        build = service["build"]
        assert (DEPLOY / build["context"] / build["dockerfile"]).resolve() == (ROOT / "Dockerfile")
    assert SERVICES["worker"]["deploy"]["replicas"] >= 2
    assert SERVICES["gateway"]["depends_on"]["worker"]["condition"] == "service_healthy"
    assert "8080:8080" in SERVICES["gateway"]["ports"]


@pytest.mark.parametrize("role", ["worker", "gateway"])
def test_every_flag_exists(role: str, flags_of: dict[str, frozenset[str]]) -> None:
    command = SERVICES[role]["command"]
    assert command[0] == role
    unknown = set(flags_in(command)) - flags_of[role]
    assert not unknown, f"offloop {role} has no {sorted(unknown)}"


def test_the_gateway_finds_the_workers_by_dns() -> None:
    command = SERVICES["gateway"]["command"]
    assert command[command.index("--backend") + 1] == "dns:///worker:9090"
    worker = SERVICES["worker"]["command"]
    assert worker[worker.index("--port") + 1] == "9090"


@pytest.mark.parametrize("role", ["worker", "gateway"])
def test_the_command_lines_parse_and_listen_beyond_the_container(role: str) -> None:
    config = getattr(parse(SERVICES[role]["command"], environ={}), role)
    assert config is not None
    assert config.listen.host == "0.0.0.0"
    if role == "worker":
        assert config.admin.host == "0.0.0.0" and config.admin.port == 9100
    stop = seconds(SERVICES[role]["stop_grace_period"])
    assert stop > config.drain_delay + config.grace
    # Item 6: a call (request) begun just before the stop must fit in the drain.
    longest = config.limits.call_timeout if role == "worker" else config.front.timeout
    assert config.grace >= longest, f"{role}: grace {config.grace} s < {longest} s"


@pytest.mark.parametrize(
    ("role", "endpoint"),
    [("worker", "http://127.0.0.1:9100/livez"), ("gateway", "http://127.0.0.1:8080/healthz")],
)
def test_health_checks_probe_each_roles_endpoint(role: str, endpoint: str) -> None:
    check = SERVICES[role]["healthcheck"]
    test = check["test"]
    assert test[:3] == ["CMD", "python", "-c"]
    assert f"urlopen('{endpoint}'" in test[3]
    compile(test[3], "healthcheck", "exec")  # it is Python
    for key in ("interval", "timeout", "start_period"):
        assert seconds(check[key]) > 0
    if role == "gateway":  # the image's own HEALTHCHECK, for `docker run`, agrees
        assert SERVICES[role]["environment"]["HEALTHCHECK_URL"] == endpoint
