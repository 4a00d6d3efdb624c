"""The Helm chart against the local API server: install, upgrade and uninstall.

The operator's pod lands on a KWOK node here (it is not run; the end-to-end tests run
it for real on the real node): this checks what Helm and the API server make of the
chart - objects accepted, the Deployment available, an upgrade rolled out, nothing left
behind but the CRDs.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from tests.cluster.fixture import Kube
from tests.integration.operator_process import wait_for

pytestmark = pytest.mark.cluster
CHART = Path(__file__).resolve().parents[2] / "charts" / "finetune-operator"


def test_install_upgrade_uninstall(kube: Kube) -> None:
    release = f"ftj-{uuid.uuid4().hex[:6]}"
    ns = f"chart-{uuid.uuid4().hex[:6]}"
    watched = f"chart-team-{uuid.uuid4().hex[:6]}"
    kube.kubectl("create", "namespace", watched)
    deploy = f"{release}-finetune-operator"
    try:
        kube.helm(
            "install",
            release,
            str(CHART),
            "-n",
            ns,
            "--create-namespace",
            "--set",
            f"watchNamespaces={{{watched}}}",
            "--wait",
            "--timeout",
            "120s",
        )
        obj = kube.kubectl_json("get", "deployment", deploy, "-n", ns)
        assert obj["status"]["availableReplicas"] == 1
        role = kube.kubectl_json("get", "role", deploy, "-n", watched)
        assert {"finetunejobs"} <= {r for rule in role["rules"] for r in rule["resources"]}
        assert kube.kubectl("get", "kopfpeering", deploy, "-n", watched).returncode == 0
        assert kube.kubectl("get", "crd", "finetunejobs.finetune.dev").returncode == 0

        kube.helm(
            "upgrade",
            release,
            str(CHART),
            "-n",
            ns,
            "--reuse-values",
            "--set",
            "operator.replicas=2",
            "--wait",
            "--timeout",
            "120s",
        )
        obj = kube.kubectl_json("get", "deployment", deploy, "-n", ns)
        assert obj["spec"]["replicas"] == 2 and obj["status"]["availableReplicas"] == 2
        history = kube.helm("history", release, "-n", ns, "-o", "json").stdout
        assert '"revision":2' in history.replace(" ", "")

        kube.helm("uninstall", release, "-n", ns, "--wait")
        wait_for(
            "the release's objects to go",
            lambda: (
                kube.kubectl("get", "deployment", deploy, "-n", ns, check=False).returncode != 0
                and kube.kubectl("get", "role", deploy, "-n", watched, check=False).returncode != 0
                and kube.kubectl("get", "clusterrole", f"{deploy}-cluster", check=False).returncode != 0
            ),
            timeout=60,
        )
        # CRDs outlive the release (Helm never deletes crds/), so FineTuneJobs are not lost.
        assert kube.kubectl("get", "crd", "finetunejobs.finetune.dev").returncode == 0
    finally:
        kube.helm("uninstall", release, "-n", ns, check=False)
        for namespace in (ns, watched):
            kube.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
