"""The Helm chart: lint, golden `helm template`, the pinned RBAC, values validation, the CRD copy.

Needs the helm binary that tests/cluster/build.sh installs (CI builds it before the tests).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "finetune-operator"
GOLDEN = Path(__file__).parent / "golden"


def _helm() -> str:
    versions = dict(
        line.split("=", 1)
        for line in (ROOT / "tests/cluster/versions.env").read_text().splitlines()
        if "=" in line and not line.startswith("#")
    )
    path = ROOT / ".cache/cluster/bin" / f"helm-{versions['HELM_VERSION']}"
    assert path.exists(), f"{path} is missing: run tests/cluster/build.sh helm"
    return str(path)


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([_helm(), *args], capture_output=True, text=True, check=check, timeout=60)


def template(*sets: str) -> list[dict[str, Any]]:
    args = ["template", "ftj", str(CHART), "-n", "finetune-system", "--kube-version", "1.36.0"]
    for s in sets:
        args += ["--set", s]
    return [d for d in yaml.safe_load_all(helm(*args).stdout) if d]


def test_helm_lint_is_clean() -> None:
    out = helm("lint", "--strict", str(CHART), "--kube-version", "1.36.0")
    assert "1 chart(s) linted, 0 chart(s) failed" in out.stdout


@pytest.mark.parametrize(
    ("case", "sets"),
    [("cluster-wide", ()), ("namespaced", ("watchNamespaces={team-a,team-b}", "metrics.serviceMonitor.enabled=true"))],
)
def test_template_matches_golden(case: str, sets: tuple[str, ...]) -> None:
    text = yaml.safe_dump_all(template(*sets), sort_keys=True)
    path = GOLDEN / f"chart-{case}.yaml"
    if os.environ.get("FTJ_UPDATE_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text(), f"helm template differs from {path}; if intended rerun with FTJ_UPDATE_GOLDEN=1"


EXPECTED_NAMESPACED_RULES = [
    {"apiGroups": ["finetune.dev"], "resources": ["finetunejobs"], "verbs": ["get", "list", "watch", "patch"]},
    {"apiGroups": ["finetune.dev"], "resources": ["finetunejobs/status"], "verbs": ["get", "patch"]},
    {
        "apiGroups": ["batch"],
        "resources": ["jobs"],
        "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"],
    },
    {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "create", "patch"]},
    {"apiGroups": [""], "resources": ["services", "serviceaccounts"], "verbs": ["create"]},
    # list: restart reasons; get, create, delete: the CPU preflight pod.
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "create", "delete"]},
    # Preflight: the PVC, Secrets (their keys) and Kueue LocalQueue a job names, before its Job exists.
    {"apiGroups": [""], "resources": ["persistentvolumeclaims", "secrets"], "verbs": ["get"]},
    {"apiGroups": ["kueue.x-k8s.io"], "resources": ["localqueues"], "verbs": ["get"]},
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]},
    {"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create"]},
    {"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["roles", "rolebindings"], "verbs": ["create"]},
    {"apiGroups": ["kopf.dev"], "resources": ["kopfpeerings"], "verbs": ["get", "list", "watch", "patch"]},
]
EXPECTED_CLUSTER_RULES = [
    {"apiGroups": ["apiextensions.k8s.io"], "resources": ["customresourcedefinitions"], "verbs": ["list", "watch"]},
    {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["list", "watch"]},
    {"apiGroups": ["scheduling.k8s.io"], "resources": ["priorityclasses"], "verbs": ["get"]},
    # The fit check reads the nvidia.com/gpu.memory label of the nodes a job can land on.
    {"apiGroups": [""], "resources": ["nodes"], "verbs": ["list"]},
    {"apiGroups": ["kopf.dev"], "resources": ["clusterkopfpeerings"], "verbs": ["get", "list", "watch", "patch"]},
]


def test_rbac_is_exactly_what_the_operator_uses() -> None:
    docs = template()
    (cluster_role,) = [d for d in docs if d["kind"] == "ClusterRole"]
    assert cluster_role["rules"] == EXPECTED_CLUSTER_RULES + EXPECTED_NAMESPACED_RULES
    assert not [d for d in docs if d["kind"] == "Role"]


def test_namespaced_mode_grants_only_in_the_watched_namespaces() -> None:
    docs = template("watchNamespaces={team-a,team-b}")
    (cluster_role,) = [d for d in docs if d["kind"] == "ClusterRole"]
    assert cluster_role["rules"] == EXPECTED_CLUSTER_RULES
    roles = [d for d in docs if d["kind"] == "Role"]
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    assert all(r["rules"] == EXPECTED_NAMESPACED_RULES for r in roles)
    (deploy,) = [d for d in docs if d["kind"] == "Deployment"]
    args = deploy["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--namespace=team-a" in args and "--namespace=team-b" in args and "--all-namespaces" not in args


def test_operator_pod_is_locked_down() -> None:
    (deploy,) = [d for d in template() if d["kind"] == "Deployment"]
    pod = deploy["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["resources"]["limits"]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("operator.replicas=0", "minimum"),
        ("watchNamespaces={Bad_NS}", "pattern"),
        ("s3.endpoint=minio:9000", "pattern"),
        ("operator.image.pullPolicy=Sometimes", "must be one of"),
        ("unknownKey=1", "additional properties"),
        ("metrics.grafanaDashboard.label=bad label", "pattern"),
    ],
)
def test_values_schema_refuses_bad_values(value: str, message: str) -> None:
    out = helm("template", "ftj", str(CHART), "--kube-version", "1.36.0", "--set", value, check=False)
    assert out.returncode != 0
    assert message in out.stderr.lower()


def test_chart_crd_is_the_generated_one() -> None:
    assert (CHART / "crds" / "finetunejob.yaml").read_text() == (ROOT / "crds" / "finetunejob.yaml").read_text()


def test_grafana_dashboard_is_a_configmap_the_sidecar_loads() -> None:
    assert not [d for d in template() if d["kind"] == "ConfigMap"]
    (cm,) = [d for d in template("metrics.grafanaDashboard.enabled=true") if d["kind"] == "ConfigMap"]
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["namespace"] == "finetune-system"
    (text,) = cm["data"].values()
    assert json.loads(text) == json.loads((CHART / "dashboards" / "finetune-jobs.json").read_text())
    moved = template(
        "metrics.grafanaDashboard.enabled=true",
        "metrics.grafanaDashboard.namespace=monitoring",
        "metrics.grafanaDashboard.label=dashboards",
        "metrics.grafanaDashboard.labelValue=finetune",
    )
    (cm,) = [d for d in moved if d["kind"] == "ConfigMap"]
    assert cm["metadata"]["namespace"] == "monitoring" and cm["metadata"]["labels"]["dashboards"] == "finetune"


def test_the_preflight_pods_placement_goes_from_the_values_to_the_pod() -> None:
    from finetune_operator.builders import build_job
    from finetune_operator.preflight_pod import build_preflight_pod
    from finetune_operator.settings import OperatorSettings
    from tests.unit.test_preflight import PARENT, spec_with

    def operator_env(*set_json: str) -> dict[str, str]:
        args = ["template", "ftj", str(CHART), "--kube-version", "1.36.0"]
        for s in set_json:
            args += ["--set-json", s]
        (deploy,) = [d for d in yaml.safe_load_all(helm(*args).stdout) if d and d["kind"] == "Deployment"]
        return {e["name"]: e["value"] for e in deploy["spec"]["template"]["spec"]["containers"][0]["env"]}

    gpu = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    cpu = {"key": "pool", "operator": "Equal", "value": "cpu", "effect": "NoSchedule"}
    job = build_job(
        PARENT, spec_with(resources={"nodeSelector": {"pool": "a100"}, "tolerations": [gpu]}), OperatorSettings()
    )
    default = OperatorSettings.from_env(operator_env())
    assert (default.preflight_node_selector, default.preflight_tolerations) == ({}, [])
    anywhere = build_preflight_pod(job, 1, default.preflight_node_selector, default.preflight_tolerations)["spec"]
    assert "nodeSelector" not in anywhere and anywhere["tolerations"] == [gpu]

    placed = OperatorSettings.from_env(
        operator_env(
            'preflight.nodeSelector={"pool": "cpu"}', f"preflight.tolerations=[{json.dumps(cpu)}, {json.dumps(gpu)}]"
        )
    )
    pod = build_preflight_pod(job, 1, placed.preflight_node_selector, placed.preflight_tolerations)["spec"]
    assert pod["nodeSelector"] == {"pool": "cpu"}  # the chart's, never the GPU pods' pool
    assert pod["tolerations"] == [gpu, cpu]  # the trainer's kept, the chart's added once
    bad = helm(
        "template", "ftj", str(CHART), "--set-json", 'preflight.tolerations=[{"operator": "Maybe"}]', check=False
    )
    assert bad.returncode != 0 and "/preflight/tolerations/0/operator" in bad.stderr
    with pytest.raises(ValueError, match=r"FTJ_PREFLIGHT_NODE_SELECTOR.*preflight\.nodeSelector"):
        OperatorSettings.from_env({"FTJ_PREFLIGHT_NODE_SELECTOR": "[1]"})
