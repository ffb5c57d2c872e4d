"""deploy/kubernetes, checked without a cluster.

``kubectl kustomize`` renders the base and every overlay; kubernetes-validate checks every
object in strict mode (no unknown fields) against the newest Kubernetes version it ships;
then what offloop relies on is checked on the rendered objects: the worker's headless Service
and its named ``thrift`` port, the probes on the admin port, the preStop pause and a
termination grace period longer than preStop + drain delay + grace (read from the config file
the ConfigMap holds), the disruption budgets, the autoscaler's metric (a real one of the
worker), and that every container's command line, with that config file, parses as offloop
would parse it.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from deployment import DEPLOY, flags_in, project

from offloop.cli import parse
from offloop.runtime.base import PoolStats
from offloop.worker.metrics import WorkerMetrics

KUSTOMIZATIONS = sorted(
    str(p.parent.relative_to(DEPLOY / "kubernetes"))
    for p in (DEPLOY / "kubernetes").rglob("kustomization.yaml")
)
#: The kustomize that kubectl embeds reads ``resources`` that are directories from v4 on
#: (kubectl 1.21); Debian 12's kubernetes-client is 1.20, so with it these tests skip.
MIN_KUSTOMIZE = (4, 0)


def kubectl() -> str:
    """kubectl, with a kustomize new enough; skips the test with the reason otherwise."""
    path = shutil.which("kubectl")
    if path is None:
        pytest.skip("kubectl is not on PATH (.ci/run installs Debian's kubernetes-client)")
    out = subprocess.run(
        [path, "version", "--client", "-o", "json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    version = json.loads(out.stdout or "{}").get("kustomizeVersion", "")
    found = tuple(int(n) for n in re.findall(r"\d+", version)[:2])
    if found < MIN_KUSTOMIZE:
        pytest.skip(f"kubectl's kustomize is {version or 'absent'}; these need v4 or later")
    return path


def render(kustomization: str) -> list[dict[str, Any]]:
    result = subprocess.run(
        [kubectl(), "kustomize", str(DEPLOY / "kubernetes" / kustomization)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module", params=KUSTOMIZATIONS)
def rendered(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    """The objects of one kustomization (the base, then each overlay)."""
    return render(str(request.param))


def one(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    (c,) = deployment["spec"]["template"]["spec"]["containers"]
    assert isinstance(c, dict)
    return c


def config_file(objects: list[dict[str, Any]], tmp_path: Path) -> Path:
    """The offloop.toml of the rendered ConfigMap, written where the test can parse it."""
    (config,) = [o for o in objects if o["kind"] == "ConfigMap"]
    path = tmp_path / "offloop.toml"
    path.write_text(config["data"]["offloop.toml"])
    return path


def test_every_kustomization_is_checked() -> None:
    assert {"base", "overlays/demo"} <= set(KUSTOMIZATIONS)


def test_valid_in_strict_mode_against_a_current_kubernetes(
    rendered: list[dict[str, Any]],
) -> None:
    version = kubernetes_validate.latest_version()
    assert tuple(int(n) for n in version.split(".")[:2]) >= (1, 30)
    for obj in rendered:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{obj['kind']}/{obj['metadata']['name']}: {exc.message}")


def test_the_worker_service_is_headless_with_a_named_thrift_port(
    rendered: list[dict[str, Any]],
) -> None:
    service = one(rendered, "Service", "offloop-worker")
    assert service["spec"]["clusterIP"] == "None"
    assert not service["spec"].get("publishNotReadyAddresses", False)
    (port,) = service["spec"]["ports"]
    assert port["name"] == "thrift"  # SRV records: _thrift._tcp.offloop-worker...
    worker = one(rendered, "Deployment", "offloop-worker")
    labels = worker["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    names = {p["name"]: p["containerPort"] for p in container(worker)["ports"]}
    assert port["targetPort"] in names


def test_probes_pause_and_grace_period_fit_the_drain_timeline(
    rendered: list[dict[str, Any]], tmp_path: Path
) -> None:
    config = config_file(rendered, tmp_path)
    for role, port_name, live, ready in (
        ("worker", "admin", "/livez", "/readyz"),
        ("gateway", "http", "/healthz", "/readyz"),
    ):
        deployment = one(rendered, "Deployment", f"offloop-{role}")
        c = container(deployment)
        probes = {k: c[k]["httpGet"] for k in ("startupProbe", "livenessProbe", "readinessProbe")}
        assert probes["startupProbe"]["path"] == live
        assert probes["livenessProbe"]["path"] == live
        assert probes["readinessProbe"]["path"] == ready
        assert {p["port"] for p in probes.values()} == {port_name}
        port = {p["name"]: p["containerPort"] for p in c["ports"]}[port_name]

        # The command line as the pod runs it, its config file being the ConfigMap's.
        assert "/etc/offloop/offloop.toml" in c["args"]
        args = [a if a != "/etc/offloop/offloop.toml" else str(config) for a in c["args"]]
        settings = getattr(parse(args, environ={}), role)
        assert settings is not None
        listening = settings.admin.port if role == "worker" else settings.listen.port
        assert listening == port
        if role == "worker":
            assert settings.admin.host == settings.listen.host == "0.0.0.0"
        else:  # item 24: the image's HEALTHCHECK probes the gateway's own endpoint
            env = {e["name"]: e["value"] for e in c.get("env", [])}
            assert env["HEALTHCHECK_URL"] == f"http://127.0.0.1:{port}{live}"

        pause = c["lifecycle"]["preStop"]["exec"]["command"]
        assert pause[0] == "sleep"
        needed = float(pause[1]) + settings.drain_delay + settings.grace
        grace_period = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        assert grace_period > needed, f"{role}: {grace_period} s <= {needed} s"
        # Item 6: a call (request) begun just before the stop must fit in the drain.
        longest = settings.limits.call_timeout if role == "worker" else settings.front.timeout
        assert settings.grace >= longest, f"{role}: grace {settings.grace} s < {longest} s"


def test_each_tier_has_a_disruption_budget(rendered: list[dict[str, Any]]) -> None:
    for role in ("worker", "gateway"):
        budget = one(rendered, "PodDisruptionBudget", f"offloop-{role}")
        deployment = one(rendered, "Deployment", f"offloop-{role}")
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()
        assert budget["spec"]["maxUnavailable"] == 1


def test_the_autoscaler_follows_a_metric_the_worker_exports() -> None:
    objects = render("base")
    hpa = one(objects, "HorizontalPodAutoscaler", "offloop-worker")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "offloop-worker"
    (metric,) = hpa["spec"]["metrics"]
    name = metric["pods"]["metric"]["name"]
    registry = WorkerMetrics(lambda: PoolStats(1, 1, 0, 0, 0)).registry
    assert name in {family.name for family in registry.collect()}
    assert name == "offloop_worker_queue_depth"
    comment = (DEPLOY / "kubernetes/base/worker-hpa.yaml").read_text()
    assert "adapter" in comment  # a custom metric needs one; the file says so


def test_the_config_map_holds_the_idl_and_the_config_file(
    rendered: list[dict[str, Any]], tmp_path: Path
) -> None:
    (config,) = [o for o in rendered if o["kind"] == "ConfigMap"]
    idl = (Path(__file__).resolve().parents[2] / "src/offloop/demo/textlab.thrift").read_text()
    assert config["data"]["textlab.thrift"] == idl
    path = config_file(rendered, tmp_path)
    for role in ("worker", "gateway"):
        settings = getattr(parse([role, "--config", str(path)], environ={}), role)
        assert settings.idl == "/etc/offloop/textlab.thrift"
    for deployment in (o for o in rendered if o["kind"] == "Deployment"):
        volumes = deployment["spec"]["template"]["spec"]["volumes"]
        names = {v["configMap"]["name"] for v in volumes if "configMap" in v}
        assert names == {config["metadata"]["name"]}


def test_every_flag_of_the_containers_exists(
    rendered: list[dict[str, Any]], flags_of: dict[str, frozenset[str]]
) -> None:
    for deployment in (o for o in rendered if o["kind"] == "Deployment"):
        args = container(deployment)["args"]
        command = args[0]
        unknown = set(flags_in(args)) - flags_of[command]
        assert not unknown, f"offloop {command} has no {sorted(unknown)}"


def test_images_are_tagged_with_the_project_version(rendered: list[dict[str, Any]]) -> None:
    for deployment in _deployments(rendered):
        image = container(deployment)["image"]
        assert image.rpartition(":")[2] == project()["version"], image


def _deployments(objects: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    return (o for o in objects if o["kind"] == "Deployment")
