"""The chart's optional dashboard: absent by default, and when enabled a read-only identity.

The RBAC is checked against the API server too, with ``kubectl auth can-i`` as the dashboard's
ServiceAccount (tests/integration/test_dashboard_rbac.py).
"""

from __future__ import annotations

from typing import Any

from tests.unit.test_chart import template

DASHBOARD_RULES = [
    {"apiGroups": ["finetune.dev"], "resources": ["finetunejobs"], "verbs": ["get", "list", "watch"]},
    {"apiGroups": [""], "resources": ["events", "pods"], "verbs": ["get", "list", "watch"]},
    {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]},
]
NAME = "ftj-finetune-operator-dashboard"


def _dashboard_docs(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d for d in docs if d["metadata"]["name"] == NAME]


def test_the_dashboard_is_off_by_default() -> None:
    docs = template()
    assert _dashboard_docs(docs) == []
    assert not any("dashboard" in yaml_text for yaml_text in map(str, docs))


def test_enabled_it_reads_jobs_events_and_logs_and_nothing_else_cluster_wide() -> None:
    docs = _dashboard_docs(template("dashboard.enabled=true"))
    assert sorted(d["kind"] for d in docs) == [
        "ClusterRole",
        "ClusterRoleBinding",
        "Deployment",
        "Service",
        "ServiceAccount",
    ]
    (role,) = [d for d in docs if d["kind"] == "ClusterRole"]
    assert role["rules"] == DASHBOARD_RULES
    (binding,) = [d for d in docs if d["kind"] == "ClusterRoleBinding"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": NAME, "namespace": "finetune-system"}]
    (deploy,) = [d for d in docs if d["kind"] == "Deployment"]
    pod = deploy["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == NAME
    container = pod["containers"][0]
    assert container["command"] == ["finetune-dashboard"]
    assert container["args"] == ["--all-namespaces", "--host=0.0.0.0", "--port=8090"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True
    (service,) = [d for d in docs if d["kind"] == "Service"]
    assert service["spec"]["type"] == "ClusterIP"


def test_no_rule_reads_secrets_or_writes_anything() -> None:
    for rule in DASHBOARD_RULES:
        assert "secrets" not in rule["resources"] and "*" not in rule["resources"]
        assert set(rule["verbs"]) <= {"get", "list", "watch"}


def test_its_selector_does_not_match_the_operator_pods() -> None:
    docs = template("dashboard.enabled=true")
    (operator,) = [d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] != NAME]
    (dashboard,) = [d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == NAME]
    operator_selector = operator["spec"]["selector"]["matchLabels"].items()
    dashboard_labels = dashboard["spec"]["template"]["metadata"]["labels"].items()
    assert not operator_selector <= dashboard_labels
    metrics = [d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] != NAME]
    assert all(not s["spec"]["selector"].items() <= dashboard_labels for s in metrics)


def test_namespaced_it_gets_a_role_in_each_watched_namespace_only() -> None:
    docs = _dashboard_docs(template("dashboard.enabled=true", "watchNamespaces={team-a,team-b}"))
    assert not [d for d in docs if d["kind"].startswith("Cluster")]
    roles = [d for d in docs if d["kind"] == "Role"]
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    assert all(r["rules"] == DASHBOARD_RULES for r in roles)
    (deploy,) = [d for d in docs if d["kind"] == "Deployment"]
    args = deploy["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[:2] == ["--namespace=team-a", "--namespace=team-b"]
