"""The CPU preflight pod and the GPU fit check against a real API server and KWOK GPU nodes.

An operator of the test's own (preflight pod on) watches one namespace. KWOK runs no container, so the
test plays the preflight pod's part: it ends the pod through the pod status API with the verdict the
trainer's ``preflight`` command writes (that command itself is tested against MinIO and real files in
tests/storage/test_preflight_command.py). One KWOK node is labelled as a 40 GiB GPU node, and the jobs
select it: the operator reads its ``nvidia.com/gpu.memory`` label.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from finetune_api.estimate import estimate_memory
from finetune_api.preflight import PreflightResult
from finetune_api.sizing import with_changes
from finetune_api.validation import parse_spec
from tests.cluster.fixture import Kube
from tests.integration.operator_process import OperatorProcess, wait_for
from tests.integration.test_operator import conditions, get
from tests.unit.test_sizing import LLAMA_7B

pytestmark = pytest.mark.cluster

NODE = "kwok-gpu-1"
NODE_MIB = 40960  # an A100 40GB as GPU Feature Discovery labels it


@pytest.fixture(scope="module")
def preflight_operator(kube: Kube, crds: Kube, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Kube, str]]:
    """A namespace with its own operator (preflight pod on), and one KWOK node labelled as a 40 GiB GPU node."""
    ns = f"pf-{uuid.uuid4().hex[:8]}"
    kube.kubectl("create", "namespace", ns)
    old = get(kube, "", "node", NODE)["metadata"]["labels"]["nvidia.com/gpu.memory"]
    kube.kubectl("label", "node", NODE, f"nvidia.com/gpu.memory={NODE_MIB}", f"ftj.test/gpu={ns}", "--overwrite")
    log = tmp_path_factory.mktemp("preflight-operator") / "operator.log"
    proc = OperatorProcess(kube, log, [f"--namespace={ns}", "--standalone"], FTJ_PREFLIGHT_POD="true").start()
    try:
        yield kube, ns
    finally:
        proc.stop()
        kube.kubectl("label", "node", NODE, f"nvidia.com/gpu.memory={old}", "ftj.test/gpu-", "--overwrite")
        kube.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def llama_job(name: str, ns: str, method: dict[str, Any], **training: Any) -> dict[str, Any]:
    spec = {
        "model": {"name": "example/llama-7b"},
        "task": {"type": "causal-lm"},
        "dataset": {"name": "example/instructions"},
        "method": method,
        "training": {"precision": "bf16", "maxSeqLength": 2048, **training},
        "resources": {"nodes": 1, "gpusPerNode": 1, "cpu": "1", "memory": "1Gi", "nodeSelector": {"ftj.test/gpu": ns}},
    }
    return {"apiVersion": "finetune.dev/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": name}, "spec": spec}


def apply(kube: Kube, ns: str, manifest: dict[str, Any]) -> Any:
    kube.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(manifest))
    return parse_spec(manifest["spec"])


def no_job(kube: Kube, ns: str, name: str) -> bool:
    return kube.kubectl("get", "job", name, "-n", ns, check=False).returncode != 0


def end_preflight_pod(
    kube: Kube, ns: str, job: str, result: PreflightResult, after: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Wait for the preflight pod (a new one, ``after`` the given one) and end it as the trainer's command would:
    exit 0, the verdict as its termination message."""
    name = f"{job}-preflight"
    old = (after or {}).get("metadata", {}).get("uid")

    def fresh() -> dict[str, Any] | None:
        if _absent(kube, ns, name):
            return None
        pod = get(kube, ns, "pod", name)
        return pod if pod["metadata"]["uid"] != old and "deletionTimestamp" not in pod["metadata"] else None

    pod = wait_for(f"pod {name}", fresh, timeout=60)
    status = {
        "phase": "Succeeded",
        "containerStatuses": [
            {
                "name": "preflight",
                "image": pod["spec"]["containers"][0]["image"],
                "imageID": "",
                "ready": False,
                "restartCount": 0,
                "state": {"terminated": {"exitCode": 0, "reason": "Completed", "message": result.encode()}},
            }
        ],
    }
    kube.kubectl(
        "patch", "pod", name, "-n", ns, "--subresource=status", "--type=merge", "-p", json.dumps({"status": status})
    )
    return pod


def _absent(kube: Kube, ns: str, name: str) -> bool:
    return kube.kubectl("get", "pod", name, "-n", ns, check=False).returncode != 0


def stalled_message(kube: Kube, ns: str, name: str) -> str:
    def message() -> str | None:
        obj = get(kube, ns, "ftj", name)
        stalled = conditions(obj).get("Stalled") or {}
        return obj["status"].get("message") if stalled.get("status") == "True" else None

    return wait_for(f"ftj/{name} Stalled", message, timeout=90)


def test_the_preflight_pod_runs_with_the_jobs_identity_and_no_gpu(preflight_operator: tuple[Kube, str]) -> None:
    kube, ns = preflight_operator
    apply(kube, ns, llama_job("identity", ns, {"type": "lora"}))
    pod = end_preflight_pod(kube, ns, "identity", PreflightResult(problems=["dataset.name: not found on the hub"]))
    spec = pod["spec"]
    container = spec["containers"][0]
    assert container["command"][3:] == ["preflight", "--config", "/etc/finetune/job.yaml"]
    assert "nvidia.com/gpu" not in json.dumps(container["resources"])
    assert "nodeSelector" not in spec  # a CPU pod: it may run anywhere
    assert spec["serviceAccountName"] == "identity-trainer"
    assert pod["metadata"]["ownerReferences"][0]["kind"] == "FineTuneJob"
    message = stalled_message(kube, ns, "identity")
    assert "preflight: dataset.name: not found on the hub" in message
    assert get(kube, ns, "ftj", "identity")["status"]["phase"] == "Pending"
    assert no_job(kube, ns, "identity")


def test_a_job_that_does_not_fit_the_nodes_gpus_is_stalled_with_computed_alternatives(
    preflight_operator: tuple[Kube, str],
) -> None:
    kube, ns = preflight_operator
    spec = apply(kube, ns, llama_job("too-big", ns, {"type": "full"}, batchSizePerDevice=4))
    end_preflight_pod(kube, ns, "too-big", PreflightResult(model_config=LLAMA_7B, checked=["model config.json"]))
    message = stalled_message(kube, ns, "too-big")
    estimate = get(kube, ns, "ftj", "too-big")["status"]["memoryEstimate"]
    need = estimate_memory(spec, LLAMA_7B).per_gpu.total
    assert estimate["verdict"] == "DoesNotFit"
    assert estimate["perGpu"]["total"] == need
    assert estimate["gpuMemoryBytes"] == NODE_MIB * 2**20
    assert f"label nvidia.com/gpu.memory={NODE_MIB} (node {NODE})" == estimate["gpuMemorySource"]
    assert f"needs {need / 2**30:.1f} GiB per GPU, GPUs have 40.0 GiB: " in message
    changes = {a["change"]: a["perGpuBytes"] for a in estimate["alternatives"]}
    assert "method qlora" in " ".join(changes), changes
    assert all(per_gpu <= NODE_MIB * 2**20 for per_gpu in changes.values())
    qlora = next(c for c in changes if c.startswith("method qlora"))
    assert f"{qlora} -> {changes[qlora] / 2**30:.1f} GiB" in message
    assert no_job(kube, ns, "too-big")


def test_an_auto_sized_job_runs_with_the_largest_batch_that_fits_the_node(preflight_operator: tuple[Kube, str]) -> None:
    kube, ns = preflight_operator
    spec = apply(kube, ns, llama_job("auto", ns, {"type": "lora"}, batchSizePerDevice=64, sizing="auto"))
    end_preflight_pod(kube, ns, "auto", PreflightResult(model_config=LLAMA_7B))
    wait_for("the Job", lambda: None if no_job(kube, ns, "auto") else True, timeout=90)
    status = get(kube, ns, "ftj", "auto")["status"]["memoryEstimate"]
    resolved = status["resolved"]
    batch = resolved["batchSizePerDevice"]
    assert status["verdict"] == "FitsGPU"
    assert batch * resolved["gradientAccumulationSteps"] == 64  # the effective batch is kept
    config = get(kube, ns, "configmap", "auto-config")["data"]["job.yaml"]
    training = yaml.safe_load(config)["spec"]["training"]
    assert (training["batchSizePerDevice"], training["gradientAccumulationSteps"]) == (
        batch,
        resolved["gradientAccumulationSteps"],
    )
    assert training["sizing"] == "fixed"  # the trainer runs what was checked
    # Independently: the resolved settings fit the node's label, and doubling the micro-batch would not.
    limit = NODE_MIB * 2**20
    sized = with_changes(
        spec,
        training={
            "batch_size_per_device": batch,
            "gradient_accumulation_steps": 64 // batch,
            "gradient_checkpointing": resolved["gradientCheckpointing"],
        },
    )
    assert estimate_memory(sized, LLAMA_7B).per_gpu.total <= limit
    bigger = with_changes(sized, training={"batch_size_per_device": batch * 2, "gradient_accumulation_steps": 1})
    if batch < 64:
        assert estimate_memory(bigger, LLAMA_7B).per_gpu.total > limit


def test_an_unreachable_service_is_retried_and_the_job_recovers(preflight_operator: tuple[Kube, str]) -> None:
    kube, ns = preflight_operator
    apply(kube, ns, llama_job("flaky", ns, {"type": "lora"}, batchSizePerDevice=1))
    down = "the S3 endpoint http://minio:9000 did not answer (connection refused)"
    first = end_preflight_pod(kube, ns, "flaky", PreflightResult(unreachable=down))
    message = stalled_message(kube, ns, "flaky")
    assert f"could not finish ({down}); not a failure of the job: checked again in 10s" in message
    obj = get(kube, ns, "ftj", "flaky")
    assert obj["status"]["phase"] == "Pending"
    assert conditions(obj).get("Failed", {}).get("status") != "True"
    # The store is back: the next preflight pod passes and the Job is created.
    end_preflight_pod(kube, ns, "flaky", PreflightResult(model_config=LLAMA_7B), after=first)
    wait_for("the Job", lambda: None if no_job(kube, ns, "flaky") else True, timeout=90)
    assert get(kube, ns, "ftj", "flaky")["status"]["phase"] != "Failed"


def test_a_job_created_suspended_runs_the_preflight_when_resumed(preflight_operator: tuple[Kube, str]) -> None:
    kube, ns = preflight_operator
    manifest = llama_job("later", ns, {"type": "lora"}, batchSizePerDevice=1)
    manifest["spec"]["runPolicy"] = {"suspend": True}
    apply(kube, ns, manifest)
    job = wait_for("the suspended Job", lambda: None if no_job(kube, ns, "later") else get(kube, ns, "job", "later"))
    assert job["spec"]["suspend"] is True
    assert _absent(kube, ns, "later-preflight")  # nothing of the job runs while it is suspended

    kube.kubectl("patch", "ftj", "later", "-n", ns, "--type=merge", "-p", '{"spec": {"runPolicy": {"suspend": false}}}')
    end_preflight_pod(kube, ns, "later", PreflightResult(model_config=LLAMA_7B))

    def resumed_job() -> dict[str, Any] | None:
        job = get(kube, ns, "job", "later")
        return job if job["spec"]["suspend"] is False else None

    resumed = wait_for("the Job resumed after the preflight", resumed_job, timeout=90)
    assert resumed["metadata"]["annotations"]["finetune.dev/preflight"] == "passed"
    assert get(kube, ns, "ftj", "later")["status"]["memoryEstimate"]["verdict"] == "FitsGPU"


# Kueue is not installed in the test cluster: a stand-in LocalQueue CRD (group, version and plural the operator reads).
LOCAL_QUEUE_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "localqueues.kueue.x-k8s.io"},
    "spec": {
        "group": "kueue.x-k8s.io",
        "scope": "Namespaced",
        "names": {"plural": "localqueues", "singular": "localqueue", "kind": "LocalQueue"},
        "versions": [
            {
                "name": "v1beta1",
                "served": True,
                "storage": True,
                "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}},
            }
        ],
    },
}


def test_a_queued_job_runs_the_preflight_before_its_job_enters_the_queue(preflight_operator: tuple[Kube, str]) -> None:
    kube, ns = preflight_operator
    kube.kubectl("apply", "-f", "-", input=LOCAL_QUEUE_CRD)
    try:
        _queued_case(kube, ns)
    finally:
        kube.kubectl("delete", "crd", "localqueues.kueue.x-k8s.io", "--wait=false", check=False)


def _queued_case(kube: Kube, ns: str) -> None:
    kube.kubectl("wait", "--for=condition=Established", "crd/localqueues.kueue.x-k8s.io", "--timeout=60s")
    queue = {"apiVersion": "kueue.x-k8s.io/v1beta1", "kind": "LocalQueue", "metadata": {"name": "gpus"}, "spec": {}}
    kube.kubectl("apply", "-n", ns, "-f", "-", input=queue)
    for name in ("queued", "queued-bad"):
        manifest = llama_job(name, ns, {"type": "lora"}, batchSizePerDevice=1)
        manifest["spec"]["runPolicy"] = {"queueName": "gpus"}
        apply(kube, ns, manifest)

    def checking() -> dict[str, Any] | None:
        obj = get(kube, ns, "ftj", "queued")
        return obj if conditions(obj).get("Reconciling", {}).get("reason") == "Preflight" else None

    obj = wait_for("the preflight status", checking, timeout=60)
    assert obj["status"]["phase"] == "Pending"
    assert "preflight: a CPU pod is checking model access, the data and the S3 output" in obj["status"]["message"]
    assert no_job(kube, ns, "queued")  # nothing in the queue while the preflight runs
    pod = end_preflight_pod(kube, ns, "queued-bad", PreflightResult(problems=["dataset.name: not found on the hub"]))
    assert "kueue.x-k8s.io/queue-name" not in pod["metadata"]["labels"]  # not the job's workload: holds no quota
    assert "nvidia.com/gpu" not in json.dumps(pod["spec"]["containers"][0]["resources"])
    end_preflight_pod(kube, ns, "queued", PreflightResult(model_config=LLAMA_7B))
    assert "preflight: dataset.name: not found on the hub" in stalled_message(kube, ns, "queued-bad")
    # Only after a pass does the Job exist, with its queue label (Kueue admits it from there).
    job = wait_for(
        "the Job", lambda: None if no_job(kube, ns, "queued") else get(kube, ns, "job", "queued"), timeout=90
    )
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpus"
    assert job["metadata"]["annotations"]["finetune.dev/preflight"] == "passed"
    assert no_job(kube, ns, "queued-bad")  # refused before it waits in the queue
