"""The deployment files are valid as far as this machine can tell: Kubernetes manifests against
the Kubernetes schemas, alert rules with promtool (or their structure), the dashboard's JSON,
the compose file (with `docker compose config` where it exists), and every metric they use is
one Vigil exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from vigil.settings import PROJECT_ROOT

K8S = PROJECT_ROOT / "deploy" / "k8s"
ALERTS = PROJECT_ROOT / "ops" / "prometheus" / "alerts.yml"
DASHBOARD = PROJECT_ROOT / "ops" / "grafana" / "vigil.json"
COMPOSE = PROJECT_ROOT / "deploy" / "compose.yaml"
SOURCES = ("vigil", "scoring", "flows")


def manifests() -> list[tuple[str, dict[str, object]]]:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    out = []
    for name in kustomization["resources"]:
        for document in yaml.safe_load_all((K8S / name).read_text()):
            out.append((name, document))
    return out


@pytest.mark.parametrize("kubernetes", ["1.29.0", "1.32.0"])
def test_kubernetes_manifests_follow_the_schemas(kubernetes: str) -> None:
    import kubernetes_validate

    found = manifests()
    kinds = {document["kind"] for _, document in found}
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "ConfigMap", "Secret"} <= kinds
    for _, document in found:
        kubernetes_validate.validate(document, kubernetes, strict=True)
    serve = next(d for n, d in found if d["kind"] == "Deployment" and d["metadata"]["name"] == "vigil-serve")  # type: ignore[index]
    container = serve["spec"]["template"]["spec"]["containers"][0]  # type: ignore[index]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"


def test_alert_rules() -> None:
    promtool = shutil.which("promtool")
    if promtool is not None:
        result = subprocess.run([promtool, "check", "rules", str(ALERTS)], capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr
    rules = [rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]
    assert all({"alert", "expr", "labels", "annotations"} <= set(rule) for rule in rules)
    names = {rule["alert"] for rule in rules}
    for wanted in ("VigilScoringLatencyHigh", "VigilFallbackRateHigh", "VigilDrift", "VigilModelReloadFailed",
                   "VigilPredictionLogLag", "VigilBlockRateJump", "VigilReviewVolumeJump", "VigilFreshnessSlow",
                   "VigilConsumerLag"):  # fmt: skip
        assert wanted in names


def test_prometheus_config_as_compose_mounts_it(tmp_path: Path) -> None:
    """`promtool check config` on deploy/prometheus.yml with exactly the files compose mounts
    into the Prometheus container (a rule file or key file it names but compose does not
    mount fails the check, as Prometheus itself would)."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (.ci/run installs Debian's prometheus package for it)")
    service = yaml.safe_load(COMPOSE.read_text())["services"]["prometheus"]
    root = tmp_path / "container"
    for volume in service["volumes"]:
        source, target = volume.split(":")[:2]
        destination = root / target.lstrip("/")
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy((COMPOSE.parent / source).resolve(), destination)
    config = root / "etc" / "prometheus" / "prometheus.yml"
    config.write_text(config.read_text().replace("/etc/prometheus/", f"{root}/etc/prometheus/"))
    result = subprocess.run([promtool, "check", "config", str(config)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


def test_dashboard_json() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "vigil" and dashboard["panels"]
    provisioned = yaml.safe_load((DASHBOARD.parent / "provisioning" / "datasources" / "prometheus.yaml").read_text())
    uid = provisioned["datasources"][0]["uid"]
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == uid and panel["targets"]
        assert all(target["expr"] for target in panel["targets"])


def exported_metrics() -> set[str]:
    """Every metric name Vigil's code declares (Counter/Gauge/Histogram/Info first arguments)."""
    names: set[str] = set()
    for folder in SOURCES:
        for path in (PROJECT_ROOT / folder).rglob("*.py"):
            names |= set(re.findall(r'"(vigil_[a-z0-9_]+)"', path.read_text()))
    return names


def test_every_metric_the_rules_and_dashboard_use_is_exported() -> None:
    exported = exported_metrics()
    used = set(re.findall(r"\b(vigil_[a-z0-9_]+)", ALERTS.read_text() + DASHBOARD.read_text()))
    suffixes = ("_bucket", "_count", "_sum", "_total")
    missing = {
        name
        for name in used
        if name not in exported and not any(name.endswith(s) and name.removesuffix(s) in exported for s in suffixes)
    }
    assert not missing, f"used by alerts or the dashboard, exported nowhere: {sorted(missing)}"


def test_compose_file() -> None:
    compose = yaml.safe_load(COMPOSE.read_text())
    services = compose["services"]
    for expected in ("redis", "postgres", "mlflow", "serve-a", "serve-b", "proxy", "flow", "monitor", "persister",
                     "prometheus", "grafana"):  # fmt: skip
        assert expected in services
    for name, service in services.items():
        assert "image" in service or "build" in service, name
        for dependency in service.get("depends_on", {}):
            assert dependency in services, (name, dependency)
        for volume in service.get("volumes", []):
            source = str(volume).split(":")[0]
            if source.startswith("."):
                assert (COMPOSE.parent / source).resolve().exists(), (name, source)
            else:
                assert source in compose["volumes"], (name, source)
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        result = subprocess.run([docker, "compose", "-f", str(COMPOSE), "config", "-q"], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr


def test_dockerfile_copies_what_exists() -> None:
    text = (PROJECT_ROOT / "Dockerfile").read_text()
    for line in text.splitlines():
        if line.startswith("COPY") and "--from" not in line:
            for source in line.split()[1:-1]:
                assert (PROJECT_ROOT / source).exists(), source
    assert "USER vigil" in text and "constraints" in text
