"""The dashboard's RBAC, as the API server enforces it: ``kubectl auth can-i`` as its ServiceAccount.

The chart's dashboard objects are rendered with ``helm template`` and only the identity (the
ServiceAccount, the Role or ClusterRole and its binding) is applied: nothing runs.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import yaml

from tests.cluster.fixture import Kube

pytestmark = pytest.mark.cluster
CHART = Path(__file__).resolve().parents[2] / "charts" / "finetune-operator"
IDENTITY = {"ServiceAccount", "Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"}


def _apply_identity(kube: Kube, release: str, namespace: str, *sets: str) -> list[dict[str, object]]:
    args = ["template", release, str(CHART), "-n", namespace, "--kube-version", "1.36.0"]
    args += ["--show-only", "templates/dashboard.yaml"]
    for s in ("dashboard.enabled=true", *sets):
        args += ["--set", s]
    docs = [d for d in yaml.safe_load_all(kube.helm(*args).stdout) if d and d["kind"] in IDENTITY]
    kube.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(docs))
    return docs


def _can(kube: Kube, sa: str, verb: str, resource: str, *where: str) -> bool:
    out = kube.kubectl("auth", "can-i", "--as", sa, verb, resource, *where, check=False)
    assert out.stdout.strip() in {"yes", "no"}, out.stderr
    return out.stdout.strip() == "yes"


@pytest.mark.parametrize("scope", ["namespaced", "cluster-wide"])
def test_the_dashboard_account_reads_jobs_events_and_logs_but_never_secrets(kube: Kube, scope: str) -> None:
    suffix = uuid.uuid4().hex[:6]
    release, home, watched, other = f"d{suffix}", f"dash-home-{suffix}", f"dash-team-{suffix}", f"dash-other-{suffix}"
    for ns in (home, watched, other):
        kube.kubectl("create", "namespace", ns)
    sets = (f"watchNamespaces={{{watched}}}",) if scope == "namespaced" else ()
    docs = _apply_identity(kube, release, home, *sets)
    sa = f"system:serviceaccount:{home}:{release}-finetune-operator-dashboard"
    try:
        for verb in ("get", "list", "watch"):
            assert _can(kube, sa, verb, "finetunejobs.finetune.dev", "-n", watched)
            assert _can(kube, sa, verb, "events", "-n", watched)
            assert _can(kube, sa, verb, "pods", "-n", watched)
        assert _can(kube, sa, "get", "pods", "--subresource=log", "-n", watched)
        for ns in (watched, home, other):
            for verb in ("get", "list", "watch"):
                assert not _can(kube, sa, verb, "secrets", "-n", ns)
        for verb in ("create", "patch", "update", "delete"):
            assert not _can(kube, sa, verb, "finetunejobs.finetune.dev", "-n", watched)
            assert not _can(kube, sa, verb, "finetunejobs.finetune.dev", "--subresource=status", "-n", watched)
        assert not _can(kube, sa, "create", "pods", "--subresource=exec", "-n", watched)
        assert not _can(kube, sa, "get", "configmaps", "-n", watched)
        # Namespaced, it sees nothing outside the watched namespaces.
        assert _can(kube, sa, "list", "finetunejobs.finetune.dev", "-n", other) is (scope == "cluster-wide")
    finally:
        cluster_scoped = [d for d in docs if str(d["kind"]).startswith("Cluster")]
        if cluster_scoped:
            kube.kubectl("delete", "-f", "-", "--wait=false", input=yaml.safe_dump_all(cluster_scoped), check=False)
        for ns in (home, watched, other):
            kube.kubectl("delete", "namespace", ns, "--wait=false", check=False)
