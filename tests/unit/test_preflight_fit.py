"""The preflight pod and the fit check's pure parts: the pod built from the trainer Job, what its end means, which
nodes' GPU memory a job is sized for, and the auto-sized settings surviving a later reconcile."""

from __future__ import annotations

import json
from typing import Any

import pytest

from finetune_api.contract import JOB_LABEL
from finetune_api.preflight import PreflightResult
from finetune_operator.builders import build_job
from finetune_operator.preflight_fit import (
    RESOLVED_ANNOTATION,
    gpu_memory_for,
    resolved_sizing,
    with_resolved_sizing,
)
from finetune_operator.preflight_pod import build_preflight_pod, pod_generation, pod_outcome
from finetune_operator.settings import OperatorSettings
from tests.unit.test_preflight import PARENT, spec_with


def node(name: str, mib: int | None, gpus: int = 8, taints: list[Any] | None = None, **labels: str) -> dict[str, Any]:
    all_labels = {**labels, **({"nvidia.com/gpu.memory": str(mib)} if mib else {})}
    return {
        "metadata": {"name": name, "labels": all_labels},
        "spec": {"taints": taints or []},
        "status": {"allocatable": {"nvidia.com/gpu": str(gpus)}},
    }


def test_the_preflight_pod_has_the_trainers_identity_and_no_gpu() -> None:
    spec = spec_with(
        resources={
            "gpusPerNode": 4,
            "nodeSelector": {"pool": "a100"},
            "priorityClassName": "high",
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        },
        model={"tokenSecretRef": {"name": "hf", "key": "token"}},
    )
    job = build_job(PARENT, spec, OperatorSettings())
    pod = build_preflight_pod(job, generation=3)
    trainer, (container,) = job["spec"]["template"]["spec"]["containers"][0], pod["spec"]["containers"]
    assert container["env"] == trainer["env"]  # the same Secrets, by reference
    assert pod["spec"]["serviceAccountName"] == job["spec"]["template"]["spec"]["serviceAccountName"]
    assert "nvidia.com/gpu" not in json.dumps(container["resources"])
    assert not {"nodeSelector", "priorityClassName"} & set(pod["spec"])
    assert pod["spec"]["tolerations"] == job["spec"]["template"]["spec"]["tolerations"]
    assert JOB_LABEL not in pod["metadata"]["labels"]  # not counted among the trainer's pods
    assert pod["metadata"]["ownerReferences"] == job["metadata"]["ownerReferences"]
    assert pod_generation(pod) == 3
    # Read-only root filesystem like the trainer's: every mount has its volume, and /tmp stays writable.
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert set(mounts) <= {v["name"] for v in pod["spec"]["volumes"]}
    assert container["securityContext"]["readOnlyRootFilesystem"] and "/tmp" in mounts.values()


def _pod(phase: str, terminated: dict[str, Any] | None = None, waiting: str | None = None) -> dict[str, Any]:
    state = {"terminated": terminated} if terminated else {"waiting": {"reason": waiting}} if waiting else {}
    return {"status": {"phase": phase, "containerStatuses": [{"name": "preflight", "state": state}]}}


def test_pod_outcome_reads_the_verdict_and_tells_a_crash_from_a_result() -> None:
    assert pod_outcome(_pod("Pending", waiting="ContainerCreating")).waiting == "the preflight pod is ContainerCreating"
    assert not pod_outcome(_pod("Running")).done
    pulling = pod_outcome(_pod("Pending", waiting="ImagePullBackOff"))
    assert pulling.stuck and not pulling.done
    unschedulable = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/3 nodes"}
    stuck = pod_outcome({"status": {"phase": "Pending", "conditions": [unschedulable]}})
    assert stuck.stuck and stuck.waiting == "the preflight pod cannot be scheduled: 0/3 nodes"
    verdict = PreflightResult(problems=["dataset.files.train: no such file"])
    done = pod_outcome(_pod("Succeeded", {"exitCode": 0, "message": verdict.encode()}))
    assert done.done and done.result == verdict
    crashed = pod_outcome(_pod("Failed", {"exitCode": 1, "message": "Traceback...\nKeyError: 'x'"}))
    assert crashed.done and crashed.result is None
    assert crashed.waiting == "the preflight pod ended with exit code 1: KeyError: 'x'"


def test_the_verdict_fits_the_termination_message_with_a_large_config() -> None:
    config = {f"field_{i}": i for i in range(400)} | {"id2label": {str(i): "x" * 50 for i in range(100)}}
    config |= {"model_type": "llama", "hidden_size": 4096, "num_hidden_layers": 32}
    text = PreflightResult(problems=["p" * 5000] * 5, model_config=config, checked=["a"]).encode()
    assert len(text.encode()) <= 4096
    decoded = PreflightResult.decode(text)
    assert decoded.model_config == {"model_type": "llama", "hidden_size": 4096, "num_hidden_layers": 32}
    assert decoded.problems and len(decoded.problems[0]) <= 1000


SELECTED = {"nodeSelector": {"pool": "a100"}, "tolerations": [{"key": "gpu", "operator": "Exists"}]}


@pytest.mark.parametrize(
    ("nodes", "expected"),
    [
        # The smallest GPU among the nodes the job can land on decides.
        ([node("a", 40960, pool="a100"), node("b", 81920, pool="a100")], (40960, "the smallest of 2")),
        # Not selected, a taint not tolerated, too few GPUs, unlabelled: none count.
        (
            [
                node("x", 10000, pool="h100"),
                node("y", 10000, taints=[{"key": "other", "effect": "NoSchedule"}], pool="a100"),
                node("z", 10000, gpus=1, pool="a100"),
                node("w", None, pool="a100"),
                node("a", 40960, taints=[{"key": "gpu", "value": "x", "effect": "NoSchedule"}], pool="a100"),
            ],
            (40960, "node a)"),
        ),
    ],
)
def test_gpu_memory_comes_from_the_nodes_the_job_can_land_on(nodes: list[Any], expected: tuple[int, str]) -> None:
    spec = spec_with(resources={"gpusPerNode": 2, **SELECTED})
    memory = gpu_memory_for(spec, build_job(PARENT, spec, OperatorSettings()), nodes, None)
    assert memory is not None
    assert memory[0] == expected[0] * 2**20
    assert expected[1] in memory[1] and "nvidia.com/gpu.memory" in memory[1]


def test_without_a_labelled_node_the_spec_then_the_operator_default_stand_in() -> None:
    spec = spec_with(resources={"gpusPerNode": 1})
    job = build_job(PARENT, spec, OperatorSettings())
    unlabelled = [node("a", None)]
    assert gpu_memory_for(spec, job, unlabelled, None) is None
    assert gpu_memory_for(spec, job, unlabelled, "24Gi") == (
        24 * 2**30,
        "the operator's default (Helm value preflight.gpuMemory)",
    )
    sized = spec_with(resources={"gpusPerNode": 1, "gpuMemory": "80Gi"})
    assert gpu_memory_for(sized, job, unlabelled, "24Gi")[0] == 80 * 2**30  # type: ignore[index]


def test_a_later_reconcile_renders_the_auto_sized_job_again() -> None:
    spec = spec_with(training={"sizing": "auto", "batchSizePerDevice": 32})
    sized = spec.model_copy(
        update={
            "training": spec.training.model_copy(update={"batch_size_per_device": 8, "gradient_accumulation_steps": 4})
        }
    )
    job = {"metadata": {"annotations": {RESOLVED_ANNOTATION: resolved_sizing(sized)}}}
    again = with_resolved_sizing(spec, job)
    assert (again.training.batch_size_per_device, again.training.gradient_accumulation_steps) == (8, 4)
    assert again.training.sizing == "fixed" and again.distributed == spec.distributed
    assert with_resolved_sizing(spec, {"metadata": {}}) == spec


def test_the_estimate_patch_removes_what_an_earlier_estimate_had() -> None:
    from finetune_api.status import MemoryEstimate
    from finetune_operator.preflight_run import estimate_patch

    patch = estimate_patch(MemoryEstimate(verdict="FitsGPU", gpu_memory_bytes=2**30))["memoryEstimate"]
    assert patch["verdict"] == "FitsGPU" and patch["gpuMemoryBytes"] == 2**30
    assert patch["resolved"] is None and patch["perGpu"] is None  # merge-patch null: dropped from the status


@pytest.mark.parametrize("run_policy", [{}, {"queueName": "gpus"}], ids=["plain", "queued"])
def test_a_job_waits_for_its_preflight_pod_before_the_job_exists_queued_or_not(
    run_policy: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from finetune_operator import kube
    from finetune_operator.builders import build_children
    from finetune_operator.preflight_run import CHECKING, before_job

    settings = OperatorSettings(preflight_pod=True)
    spec = spec_with(runPolicy=run_policy)
    children = build_children(PARENT, spec, settings)
    pod = build_preflight_pod(children[-1], PARENT.generation) | {"status": {"phase": "Running"}}
    monkeypatch.setattr(kube, "read_pod", lambda namespace, name: pod)
    step = before_job(PARENT, spec, children, settings, lambda s: build_children(PARENT, s, settings))
    assert step.children is None  # no Job (and no queue entry) until the verdict
    assert step.reason == f"{CHECKING} (the preflight pod is running)"
    assert "kueue.x-k8s.io/queue-name" not in pod["metadata"]["labels"]
    # A suspended job, queued or not, owes the preflight: its Job is created suspended at once.
    suspended = spec_with(runPolicy={**run_policy, "suspend": True})
    owed = before_job(PARENT, suspended, build_children(PARENT, suspended, settings), settings, lambda s: [])
    assert owed.children is not None
    assert owed.children[-1]["metadata"]["annotations"]["finetune.dev/preflight"] == "pending"


def test_unreachable_backoff_is_per_job_reset_by_a_new_generation_and_forgotten_on_delete() -> None:
    from finetune_operator import preflight_run

    ns, name = "team-a", "backoff-job"
    preflight_run.forget(ns, name)
    attempts = [preflight_run.count_unreachable(ns, name, 3) for _ in range(4)]
    assert attempts == [0, 1, 2, 3]
    assert [preflight_run.unreachable_delay(a) for a in attempts] == [10.0, 20.0, 40.0, 80.0]
    assert preflight_run.unreachable_delay(10) == 300.0  # capped at 5 min
    # A spec change (new generation) starts the backoff again and keeps one entry per job, not one per generation.
    assert preflight_run.count_unreachable(ns, name, 4) == 0
    assert [k for k in preflight_run._unreachable if k == (ns, name)] == [(ns, name)]
    assert preflight_run._unreachable[(ns, name)] == (4, 1)
    # Deleting the job (the operator's DELETED handler) leaves nothing behind.
    preflight_run.forget(ns, name)
    assert (ns, name) not in preflight_run._unreachable
    assert preflight_run.count_unreachable(ns, name, 4) == 0
    preflight_run.forget(ns, name)
