"""The operator against a real API server, controller-manager, scheduler and KWOK GPU nodes.

Pods on KWOK nodes do not run the trainer: KWOK moves them through their lifecycle (the
stages in tests/cluster/kwok/stages.yaml), steered per pod by test annotations:
kwok.ftj.test/delay (how long the pod runs), kwok.ftj.test/result=Failed and
kwok.ftj.test/exit-code (how it ends). The end-to-end tests run the real trainer.
"""

from __future__ import annotations

import copy
import json
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.fixture import Kube
from tests.integration.operator_process import OperatorProcess, wait_for
from tests.invalid_specs import BASE, INVALID_SPECS

pytestmark = pytest.mark.cluster


def ftj(name: str, **spec_changes: Any) -> dict[str, Any]:
    spec = copy.deepcopy(BASE)
    spec["resources"] = {"nodes": 2, "gpusPerNode": 1, "cpu": "1", "memory": "1Gi"}
    for key, value in spec_changes.items():
        spec[key] = {**spec.get(key, {}), **value} if isinstance(value, dict) else value
    return {"apiVersion": "finetune.dev/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": name}, "spec": spec}


def with_pods(manifest: dict[str, Any], **annotations: str) -> dict[str, Any]:
    manifest["spec"]["resources"]["podAnnotations"] = {
        f"kwok.ftj.test/{k.replace('_', '-')}": v for k, v in annotations.items()
    }
    return manifest


def get(kube: Kube, ns: str, kind: str, name: str) -> dict[str, Any]:
    return dict(kube.kubectl_json("get", kind, name, "-n", ns))


def phase(kube: Kube, ns: str, name: str) -> str | None:
    return (get(kube, ns, "ftj", name).get("status") or {}).get("phase")


def conditions(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in (obj.get("status") or {}).get("conditions") or []}


def events(kube: Kube, ns: str, name: str) -> list[str]:
    out = kube.kubectl_json("get", "events", "-n", ns, "--field-selector", f"involvedObject.name={name}")
    return [e["reason"] for e in out["items"] if e["involvedObject"]["kind"] == "FineTuneJob"]


# --- the CRD, on its own -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "path", "_fragment"), [c[1:] for c in INVALID_SPECS], ids=[c[0] for c in INVALID_SPECS]
)
def test_api_server_refuses_invalid_spec_naming_the_field(
    crds: Kube,
    spec: dict[str, Any],
    path: str,
    _fragment: str,
) -> None:
    manifest = {"apiVersion": "finetune.dev/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": "bad"}, "spec": spec}
    out = crds.kubectl("apply", "--dry-run=server", "-n", "default", "-f", "-", input=manifest, check=False)
    assert out.returncode != 0, f"the API server accepted {spec}"
    assert path in out.stderr, out.stderr


def test_api_server_accepts_every_example_and_fills_defaults(crds: Kube, kube_namespace: str) -> None:
    from tests.unit.test_spec import EXAMPLES

    for path in EXAMPLES:
        crds.kubectl("apply", "-n", kube_namespace, "-f", str(path))
    obj = get(crds, kube_namespace, "ftj", "bert-imdb-lora")
    assert obj["spec"]["training"]["precision"] == "auto"  # a default filled by the schema
    assert obj["spec"]["runPolicy"]["backoffLimit"] == 3


def test_spec_changes_are_refused_naming_the_field(crds: Kube, kube_namespace: str) -> None:
    ns = kube_namespace
    # Pods that keep running: the session operator (when started) must not finish the job on
    # KWOK before the suspend below, or the "running job" refusals would not be what's tested.
    crds.kubectl("apply", "-n", ns, "-f", "-", input=with_pods(ftj("imm"), delay="600s"))

    def patch(spec: dict[str, Any]) -> Any:
        body = json.dumps({"spec": spec})
        return crds.kubectl("patch", "ftj", "imm", "-n", ns, "--type=merge", "-p", body, check=False)

    # Never changeable: what the job trains, on what, how, and where the results go.
    for change, field in (
        ({"model": {"name": "roberta-base"}}, "spec.model"),
        ({"task": {"labels": ["a", "b", "c"]}}, "spec.task"),
        ({"method": {"type": "full"}}, "spec.method"),
        ({"training": {"learningRate": 0.001}}, "spec.training"),
        ({"output": {"uploadCheckpoints": False}}, "spec.output"),
    ):
        out = patch(change)
        assert out.returncode != 0 and f"{field} is immutable" in out.stderr, out.stderr
    # Changeable only while suspended: refused on a running job, with the way out in the message.
    for change, field in (
        ({"resources": {"memory": "2Gi"}}, "spec.resources"),
        ({"runPolicy": {"queueName": "team-a"}}, "spec.runPolicy.queueName"),
    ):
        out = patch(change)
        assert out.returncode != 0 and f"{field} can change only while the job is suspended" in out.stderr, out.stderr
    # Changeable at any time; and once suspended, resources and the queue may change too.
    assert patch({"runPolicy": {"backoffLimit": 5, "activeDeadlineSeconds": 600}}).returncode == 0
    assert patch({"runPolicy": {"suspend": True}}).returncode == 0
    out = patch({"resources": {"memory": "2Gi"}, "runPolicy": {"queueName": "team-a", "suspend": False}})
    assert out.returncode == 0, out.stderr
    assert get(crds, ns, "ftj", "imm")["spec"]["resources"]["memory"] == "2Gi"


# --- the operator ---------------------------------------------------------------------------


def test_job_runs_to_succeeded_with_children_conditions_and_events(
    operator: OperatorProcess,
    kube_namespace: str,
) -> None:
    kube, ns = operator.kube, kube_namespace
    kube.kubectl("apply", "-n", ns, "-f", "-", input=with_pods(ftj("ok"), delay="6s"))
    # Every phase the status goes through, from a watch (polling could miss a short one).
    argv = [kube.kubectl_path, "--kubeconfig", str(kube.kubeconfig), "get", "ftj", "ok", "-n", ns, "-w"]
    argv += ["-o", 'jsonpath={.status.phase}{"\\n"}']
    watch = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=kube.env)
    parent = get(kube, ns, "ftj", "ok")
    job = wait_for("the trainer Job", lambda: get(kube, ns, "job", "ok"))
    for kind, name in (
        ("configmap", "ok-config"),
        ("service", "ok"),
        ("serviceaccount", "ok-trainer"),
        ("role", "ok-trainer"),
        ("rolebinding", "ok-trainer"),
    ):
        owner = get(kube, ns, kind, name)["metadata"]["ownerReferences"][0]
        assert owner["uid"] == parent["metadata"]["uid"] and owner["kind"] == "FineTuneJob"
    assert job["spec"]["completionMode"] == "Indexed" and job["spec"]["completions"] == 2
    assert job["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"

    # Both pods land on KWOK GPU nodes and run; the job is Running while they do.
    def scheduled() -> list[str]:
        items = kube.kubectl_json("get", "pods", "-n", ns, "-l", "finetune.dev/job=ok")["items"]
        return [p["spec"]["nodeName"] for p in items if p["spec"].get("nodeName")]

    wait_for("2 scheduled pods", lambda: len(scheduled()) == 2)
    wait_for("phase Running", lambda: phase(kube, ns, "ok") == "Running", timeout=30)

    kube.kubectl("wait", "--for=condition=Succeeded", "ftj/ok", "-n", ns, "--timeout=90s")
    watch.terminate()
    seen = [p for p in (watch.communicate(timeout=10)[0] or "").split() if p]
    phases = [p for i, p in enumerate(seen) if i == 0 or p != seen[i - 1]]
    # Pending before the pods run, never again after: the last pod finishing is not "pods pending".
    assert phases[phases.index("Running") :] == ["Running", "Succeeded"], seen
    final = get(kube, ns, "ftj", "ok")
    status = final["status"]
    assert status["phase"] == "Succeeded" and status["observedGeneration"] == final["metadata"]["generation"]
    conds = conditions(final)
    assert conds["Ready"]["status"] == "True" and conds["Reconciling"]["status"] == "False"
    assert conds["Created"]["status"] == "True" and conds["Running"]["status"] == "False"
    assert status["topology"] == "2x1" and status["startTime"] and status["completionTime"]
    nodes = {
        p["spec"]["nodeName"] for p in kube.kubectl_json("get", "pods", "-n", ns, "-l", "finetune.dev/job=ok")["items"]
    }
    assert all(n.startswith("gpu-") or "gpu" in n for n in nodes), nodes
    wait_for("events", lambda: {"Created", "Started", "Succeeded"} <= set(events(kube, ns, "ok")), timeout=20)
    # Only what a user should read: kopf's log lines ("Handler 'reconcile' succeeded.") stay in the operator's
    # log, not in Events (kopf's settings.posting.loggers stays off).
    assert "Logging" not in events(kube, ns, "ok"), events(kube, ns, "ok")
    table = kube.kubectl("get", "ftj", "ok", "-n", ns).stdout
    header = table.splitlines()[0].split()
    assert header[:6] == ["NAME", "PHASE", "PROGRESS", "TASK", "METHOD", "NODES×GPUS"], table
    assert "Succeeded" in table and "2x1" in table and "sequence-classification" in table
    # A finished job runs nothing more: a spec change could not be applied, so it is refused.
    change = json.dumps({"spec": {"runPolicy": {"backoffLimit": 5}}})
    out = kube.kubectl("patch", "ftj", "ok", "-n", ns, "--type=merge", "-p", change, check=False)
    assert out.returncode != 0 and "spec cannot change once the job has finished" in out.stderr, out.stderr


def test_permanent_exit_code_fails_at_once_with_a_clear_message(operator: OperatorProcess, kube_namespace: str) -> None:
    kube, ns = operator.kube, kube_namespace
    manifest = with_pods(ftj("perm", resources={"nodes": 1}), result="Failed", exit_code="3", delay="1s")
    kube.kubectl("apply", "-n", ns, "-f", "-", input=manifest)
    kube.kubectl("wait", "--for=condition=Failed", "ftj/perm", "-n", ns, "--timeout=90s")
    obj = get(kube, ns, "ftj", "perm")
    assert obj["status"]["phase"] == "Failed"
    assert "permanent" in obj["status"]["message"] and "PodFailurePolicy" in obj["status"]["message"]
    assert conditions(obj)["Stalled"]["status"] == "True"
    assert get(kube, ns, "job", "perm")["status"].get("failed", 0) == 1  # no retry
    wait_for("a Warning event", lambda: "PodFailurePolicy" in events(kube, ns, "perm"), timeout=20)


def test_retryable_failure_restarts_and_counts(operator: OperatorProcess, kube_namespace: str) -> None:
    kube, ns = operator.kube, kube_namespace
    manifest = with_pods(
        ftj("retry", resources={"nodes": 1}, runPolicy={"backoffLimit": 1}), result="Failed", delay="1s"
    )
    kube.kubectl("apply", "-n", ns, "-f", "-", input=manifest)
    kube.kubectl("wait", "--for=condition=Failed", "ftj/retry", "-n", ns, "--timeout=120s")
    obj = get(kube, ns, "ftj", "retry")
    assert obj["status"]["restarts"] == 2
    assert obj["status"]["message"].startswith("BackoffLimitExceeded")
    reasons = wait_for("events", lambda: (r := events(kube, ns, "retry")) and "BackoffLimitExceeded" in r and r)
    assert "Restarted" in reasons


def test_retryable_exit_code_is_counted_with_the_reason_in_the_restarted_event(
    operator: OperatorProcess, kube_namespace: str
) -> None:
    kube, ns = operator.kube, kube_namespace
    manifest = with_pods(
        ftj("transient", resources={"nodes": 1}, runPolicy={"backoffLimit": 1}),
        result="Failed",
        exit_code="75",
        message="loading data\nS3 GetObject failed after 5 attempts: 503 SlowDown",
        delay="1s",
    )
    kube.kubectl("apply", "-n", ns, "-f", "-", input=manifest)
    kube.kubectl("wait", "--for=condition=Failed", "ftj/transient", "-n", ns, "--timeout=120s")
    obj = get(kube, ns, "ftj", "transient")
    assert obj["status"]["restarts"] == 2  # retried once (backoffLimit 1), not failed at once
    assert obj["status"]["message"].startswith("BackoffLimitExceeded")

    def restarted() -> list[str]:
        out = kube.kubectl_json("get", "events", "-n", ns, "--field-selector", "involvedObject.name=transient")
        return [e["message"] for e in out["items"] if e["reason"] == "Restarted"]

    messages = wait_for("the Restarted event", restarted, timeout=20)
    assert any("exit code 75, TemporaryFailure" in m and "503 SlowDown" in m for m in messages), messages


def test_suspend_and_resume(operator: OperatorProcess, kube_namespace: str) -> None:
    kube, ns = operator.kube, kube_namespace
    kube.kubectl("apply", "-n", ns, "-f", "-", input=with_pods(ftj("sus", runPolicy={"suspend": True}), delay="60s"))
    wait_for("phase Suspended", lambda: phase(kube, ns, "sus") == "Suspended")
    assert get(kube, ns, "job", "sus")["spec"]["suspend"] is True
    assert kube.kubectl_json("get", "pods", "-n", ns, "-l", "finetune.dev/job=sus")["items"] == []
    kube.kubectl("patch", "ftj", "sus", "-n", ns, "--type=merge", "-p", '{"spec":{"runPolicy":{"suspend":false}}}')
    wait_for("phase Running", lambda: phase(kube, ns, "sus") == "Running", timeout=60)
    assert get(kube, ns, "job", "sus")["spec"]["suspend"] is False
    kube.kubectl("patch", "ftj", "sus", "-n", ns, "--type=merge", "-p", '{"spec":{"runPolicy":{"suspend":true}}}')
    wait_for("phase Suspended again", lambda: phase(kube, ns, "sus") == "Suspended", timeout=60)


def _merge_patch(kube: Kube, ns: str, name: str, spec: dict[str, Any]) -> None:
    kube.kubectl("patch", "ftj", name, "-n", ns, "--type=merge", "-p", json.dumps({"spec": spec}))


def _delete_and_wait(kube: Kube, ns: str, name: str) -> None:
    """Delete a job whose pods still run, and wait until they are gone: pods left running when the
    test's namespace is deleted can keep their Job finalizer, and their GPUs, on the KWOK nodes."""
    kube.kubectl("delete", "ftj", name, "-n", ns, "--wait=true", "--timeout=60s")
    pods = lambda: kube.kubectl_json("get", "pods", "-n", ns, "-l", f"finetune.dev/job={name}")["items"]  # noqa: E731
    wait_for(f"the pods of {name} to go", lambda: pods() == [], timeout=60)


def _observed(kube: Kube, ns: str, name: str) -> bool:
    obj = get(kube, ns, "ftj", name)
    return bool((obj.get("status") or {}).get("observedGeneration") == obj["metadata"]["generation"])


def test_live_change_is_applied_to_the_running_job(operator: OperatorProcess, kube_namespace: str) -> None:
    kube, ns = operator.kube, kube_namespace
    kube.kubectl("apply", "-n", ns, "-f", "-", input=with_pods(ftj("live", resources={"nodes": 1}), delay="120s"))
    wait_for("phase Running", lambda: phase(kube, ns, "live") == "Running", timeout=60)
    pod_uids = {
        p["metadata"]["uid"] for p in kube.kubectl_json("get", "pods", "-n", ns, "-l", "finetune.dev/job=live")["items"]
    }
    _merge_patch(kube, ns, "live", {"runPolicy": {"backoffLimit": 6, "activeDeadlineSeconds": 3600}})
    job = wait_for(
        "the Job to take the change", lambda: (j := get(kube, ns, "job", "live"))["spec"]["backoffLimit"] == 6 and j
    )
    assert job["spec"]["activeDeadlineSeconds"] == 3600
    assert job["metadata"]["annotations"]["finetune.dev/generation"] == "2"
    wait_for("observedGeneration 2", lambda: _observed(kube, ns, "live"), timeout=30)
    # Nothing restarted: the same pod runs on.
    after = {
        p["metadata"]["uid"] for p in kube.kubectl_json("get", "pods", "-n", ns, "-l", "finetune.dev/job=live")["items"]
    }
    assert after == pod_uids and phase(kube, ns, "live") == "Running"
    _delete_and_wait(kube, ns, "live")


def test_resources_change_while_suspended_is_applied_on_resume(operator: OperatorProcess, kube_namespace: str) -> None:
    kube, ns = operator.kube, kube_namespace
    manifest = with_pods(ftj("grow", resources={"nodes": 1}, runPolicy={"suspend": True}), delay="120s")
    kube.kubectl("apply", "-n", ns, "-f", "-", input=manifest)
    wait_for("phase Suspended", lambda: phase(kube, ns, "grow") == "Suspended")
    first = get(kube, ns, "job", "grow")

    # Memory: Kubernetes lets a suspended Job's pod resources change, so the same Job is updated.
    _merge_patch(kube, ns, "grow", {"resources": {"memory": "2Gi"}})
    wait_for("observedGeneration 2", lambda: _observed(kube, ns, "grow"), timeout=30)
    job = get(kube, ns, "job", "grow")
    assert job["metadata"]["uid"] == first["metadata"]["uid"]
    assert job["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"] == "2Gi"
    assert phase(kube, ns, "grow") == "Suspended"

    # Nodes, in the same apply as the resume: the pod template changes beyond what Kubernetes updates in
    # place, so the Job is recreated (with the Service a multi-node job needs), and runs 2 pods.
    _merge_patch(kube, ns, "grow", {"resources": {"nodes": 2}, "runPolicy": {"suspend": False}})
    wait_for("observedGeneration 3", lambda: _observed(kube, ns, "grow"), timeout=60)
    job = get(kube, ns, "job", "grow")
    assert job["metadata"]["uid"] != first["metadata"]["uid"]
    assert job["spec"]["completions"] == 2 and job["spec"]["suspend"] is False
    assert job["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"] == "2Gi"
    assert get(kube, ns, "service", "grow")["spec"]["clusterIP"] == "None"
    wait_for("phase Running", lambda: phase(kube, ns, "grow") == "Running", timeout=60)
    config = get(kube, ns, "configmap", "grow-config")["data"]["job.yaml"]
    assert "nodes: 2" in config  # the trainer reads the new topology
    _delete_and_wait(kube, ns, "grow")


def test_restarts_and_the_retry_budget_span_a_recreated_job(operator: OperatorProcess, kube_namespace: str) -> None:
    kube, ns = operator.kube, kube_namespace
    manifest = with_pods(
        ftj("budget", resources={"nodes": 1}, runPolicy={"backoffLimit": 2}), result="Failed", delay="1s"
    )
    kube.kubectl("apply", "-n", ns, "-f", "-", input=manifest)
    first = wait_for("a first failure", lambda: (j := get(kube, ns, "job", "budget"))["status"].get("failed") and j)
    _merge_patch(kube, ns, "budget", {"runPolicy": {"suspend": True}})  # within the Job's 10 s retry backoff
    wait_for("phase Suspended", lambda: phase(kube, ns, "budget") == "Suspended")
    failed_before = int(get(kube, ns, "job", "budget")["status"].get("failed") or 0)
    wait_for("restarts counted", lambda: get(kube, ns, "ftj", "budget")["status"].get("restarts") == failed_before)

    # More nodes: the Job is recreated; it gets what is left of runPolicy.backoffLimit, not all of it again.
    _merge_patch(kube, ns, "budget", {"resources": {"nodes": 2}, "runPolicy": {"suspend": False}})
    uid = first["metadata"]["uid"]
    job = wait_for("the new Job", lambda: (j := get(kube, ns, "job", "budget"))["metadata"]["uid"] != uid and j)
    assert job["spec"]["backoffLimit"] == 2 - failed_before
    kube.kubectl("wait", "--for=condition=Failed", "ftj/budget", "-n", ns, "--timeout=120s")
    final = get(kube, ns, "job", "budget")
    status = get(kube, ns, "ftj", "budget")["status"]
    assert status["restarts"] == failed_before + int(final["status"]["failed"]) > failed_before
    assert status["message"].startswith("BackoffLimitExceeded")


def test_delete_garbage_collects_children(operator: OperatorProcess, kube_namespace: str) -> None:
    kube, ns = operator.kube, kube_namespace
    kube.kubectl("apply", "-n", ns, "-f", "-", input=with_pods(ftj("gone"), delay="60s"))
    wait_for("the Job", lambda: get(kube, ns, "job", "gone"))
    kube.kubectl("delete", "ftj", "gone", "-n", ns, "--wait=true", "--timeout=60s")

    def children() -> list[str]:
        out = kube.kubectl(
            "get",
            "configmap,service,serviceaccount,role,rolebinding,job,pod",
            "-n",
            ns,
            "-l",
            "finetune.dev/job=gone",
            "-o",
            "name",
        ).stdout.split()
        return out

    wait_for("garbage collection", lambda: children() == [], timeout=60)


def test_missing_volume_claim_stalls_with_the_field_path(operator: OperatorProcess, kube_namespace: str) -> None:
    kube, ns = operator.kube, kube_namespace
    kube.kubectl("apply", "-n", ns, "-f", "-", input=ftj("pvc", resources={"volumeClaimName": "nope"}))
    kube.kubectl("wait", "--for=condition=Stalled", "ftj/pvc", "-n", ns, "--timeout=60s")
    obj = get(kube, ns, "ftj", "pvc")
    assert "spec.resources.volumeClaimName" in obj["status"]["message"]
    assert kube.kubectl("get", "job", "pvc", "-n", ns, check=False).returncode != 0  # nothing created


def test_operator_restart_creates_nothing_twice(operator: OperatorProcess, kube_namespace: str) -> None:
    kube, ns = operator.kube, kube_namespace
    kube.kubectl("apply", "-n", ns, "-f", "-", input=with_pods(ftj("again"), delay="8s"))
    wait_for("the Job", lambda: get(kube, ns, "job", "again"))
    operator.kill()
    operator.start()
    kube.kubectl("wait", "--for=condition=Succeeded", "ftj/again", "-n", ns, "--timeout=90s")
    for kind in ("configmap", "service", "serviceaccount", "role", "rolebinding", "job"):
        items = kube.kubectl_json("get", kind, "-n", ns, "-l", "finetune.dev/job=again")["items"]
        assert len(items) == 1, (kind, [i["metadata"]["name"] for i in items])


def test_trainer_token_patches_its_own_status_only(operator: OperatorProcess, kube_namespace: str) -> None:
    kube, ns = operator.kube, kube_namespace
    for name in ("mine", "theirs"):
        kube.kubectl("apply", "-n", ns, "-f", "-", input=with_pods(ftj(name), delay="60s"))
    wait_for("the trainer RoleBinding", lambda: get(kube, ns, "rolebinding", "mine-trainer"))
    token = kube.kubectl("create", "token", "mine-trainer", "-n", ns).stdout.strip()
    patch = json.dumps({"status": {"progress": {"step": 5, "totalSteps": 10, "percent": 50.0}}})

    def as_trainer(name: str) -> Any:
        # A kubeconfig-free call: only the token authenticates (no admin client certificate).
        argv = [
            kube.kubectl_path,
            "--kubeconfig=/dev/null",
            f"--server={kube.server}",
            f"--certificate-authority={kube.ca_file}",
            f"--token={token}",
            "patch",
            "ftj",
            name,
            "-n",
            ns,
            "--subresource=status",
            "--type=merge",
            "-p",
            patch,
        ]
        return subprocess.run(argv, capture_output=True, text=True, timeout=60)

    ok = as_trainer("mine")
    assert ok.returncode == 0, ok.stderr
    denied = as_trainer("theirs")
    assert denied.returncode != 0 and "forbidden" in denied.stderr.lower()
    # The operator's next status update leaves the trainer's fields alone.
    kube.kubectl("patch", "ftj", "mine", "-n", ns, "--type=merge", "-p", '{"spec":{"runPolicy":{"suspend":true}}}')
    wait_for("phase Suspended", lambda: phase(kube, ns, "mine") == "Suspended")
    assert get(kube, ns, "ftj", "mine")["status"]["progress"]["step"] == 5
    _delete_and_wait(kube, ns, "theirs")


def test_metrics_count_jobs_by_phase_and_reconciles(operator: OperatorProcess, kube_namespace: str) -> None:
    import re

    kube, ns = operator.kube, kube_namespace
    kube.kubectl("apply", "-n", ns, "-f", "-", input=with_pods(ftj("counted", resources={"nodes": 1}), delay="1s"))
    kube.kubectl("wait", "--for=condition=Succeeded", "ftj/counted", "-n", ns, "--timeout=90s")

    def gauge() -> float:
        found = re.search(r'^finetune_jobs\{phase="Succeeded"\} (\S+)$', operator.metrics(), re.M)
        return float(found.group(1)) if found else 0.0

    wait_for("the Succeeded gauge", lambda: gauge() >= 1, timeout=20)
    text = operator.metrics()
    assert re.search(r"^finetune_reconcile_seconds_count [1-9]", text, re.M), text
    assert 'finetune_children_created_total{kind="Job"}' in text


def test_replicas_with_peering_let_exactly_one_act(crds: Kube, tmp_path: Path) -> None:
    kube = crds
    ns = f"peer-{uuid.uuid4().hex[:6]}"
    kube.kubectl("create", "namespace", ns)
    peering = {"apiVersion": "kopf.dev/v1", "kind": "KopfPeering", "metadata": {"name": "finetune-operator"}}
    kube.kubectl("apply", "-n", ns, "-f", "-", input=peering)
    replicas = [
        OperatorProcess(kube, tmp_path / f"replica-{i}.log", [f"--namespace={ns}", "--peering=finetune-operator"])
        for i in range(2)
    ]
    try:
        for replica in replicas:
            replica.start()
        # Replicas start paused; only the one with the highest priority resumes.
        wait_for(
            "one replica to take the lead",
            lambda: any("Resuming operations after the pause" in r.log() for r in replicas),
            timeout=60,
        )
        kube.kubectl("apply", "-n", ns, "-f", "-", input=with_pods(ftj("peered", resources={"nodes": 1}), delay="2s"))
        kube.kubectl("wait", "--for=condition=Succeeded", "ftj/peered", "-n", ns, "--timeout=90s")
        acted = [r for r in replicas if "Handler 'reconcile' succeeded" in r.log()]
        assert len(acted) == 1, [r.log()[-2000:] for r in replicas]
    finally:
        for replica in replicas:
            replica.stop()
        kube.kubectl("delete", "namespace", ns, "--wait=false", check=False)
