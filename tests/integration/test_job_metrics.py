"""The per-job Prometheus gauges, scraped from a running operator while a job's status changes."""

from __future__ import annotations

import json
import subprocess

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.operator_process import OperatorProcess, wait_for
from tests.integration.test_operator import ftj, get

pytestmark = pytest.mark.cluster


def job_series(operator: OperatorProcess, ns: str, name: str) -> dict[tuple[str, str], float]:
    """The finetune_job_* samples of one job: (metric, extra label value or '') -> value."""
    found = {}
    for family in text_string_to_metric_families(operator.metrics()):
        for s in family.samples:
            if s.name.startswith("finetune_job_") and s.labels.get("namespace") == ns and s.labels.get("name") == name:
                extra = s.labels.get("phase") or s.labels.get("metric") or ""
                found[(s.name, extra)] = s.value
    return found


def test_job_gauges_follow_the_status_and_go_with_the_job(operator: OperatorProcess, kube_namespace: str) -> None:
    kube, ns = operator.kube, kube_namespace
    # Suspended: no pod holds a KWOK GPU, the job's status is the operator's and the trainer's to write.
    kube.kubectl("apply", "-n", ns, "-f", "-", input=ftj("gauged", runPolicy={"suspend": True}))
    wait_for("the trainer RoleBinding", lambda: get(kube, ns, "rolebinding", "gauged-trainer"))
    token = kube.kubectl("create", "token", "gauged-trainer", "-n", ns).stdout.strip()

    def report(status: dict[str, object]) -> None:
        """Patch the status with the trainer's own token, as its rank 0 does."""
        argv = [kube.kubectl_path, "--kubeconfig=/dev/null", f"--server={kube.server}"]
        argv += [f"--certificate-authority={kube.ca_file}", f"--token={token}", "patch", "ftj", "gauged", "-n", ns]
        argv += ["--subresource=status", "--type=merge", "-p", json.dumps({"status": status})]
        out = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr

    wait_for(
        "phase Suspended in the gauges",
        lambda: job_series(operator, ns, "gauged").get(("finetune_job_phase", "Suspended")),
    )
    series = job_series(operator, ns, "gauged")
    assert [p for (m, p), v in series.items() if m == "finetune_job_phase" and v == 1] == ["Suspended"]
    assert series[("finetune_job_restarts", "")] == 0

    progress = {"step": 10, "totalSteps": 40, "percent": 25.0, "loss": 0.9, "samplesPerSecond": 12.5, "etaSeconds": 90}
    report({"progress": progress})
    wait_for("step 10", lambda: job_series(operator, ns, "gauged").get(("finetune_job_step", "")) == 10)
    series = job_series(operator, ns, "gauged")
    assert series[("finetune_job_progress_ratio", "")] == 0.25
    assert series[("finetune_job_train_loss", "")] == 0.9
    assert series[("finetune_job_samples_per_second", "")] == 12.5
    assert series[("finetune_job_eta_seconds", "")] == 90

    report({"progress": {**progress, "step": 20, "percent": 50.0, "loss": 0.4}, "metrics": {"eval_accuracy": 0.75}})
    wait_for("step 20", lambda: job_series(operator, ns, "gauged").get(("finetune_job_step", "")) == 20)
    series = job_series(operator, ns, "gauged")
    assert series[("finetune_job_train_loss", "")] == 0.4
    assert series[("finetune_job_eval_metric", "eval_accuracy")] == 0.75

    kube.kubectl("delete", "ftj", "gauged", "-n", ns, "--wait=true", "--timeout=60s")
    wait_for("the job's series to go", lambda: job_series(operator, ns, "gauged") == {}, timeout=20)
