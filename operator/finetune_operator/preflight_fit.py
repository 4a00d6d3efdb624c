"""Which GPU memory a job will get, and whether it fits there: pure functions over nodes and the estimate.

The memory is the ``nvidia.com/gpu.memory`` label (MiB) that NVIDIA GPU Feature Discovery puts on
GPU nodes, read from the nodes the trainer pods can land on: those matching the pod's nodeSelector
and required node affinity, whose NoSchedule/NoExecute taints it tolerates, and with enough
``nvidia.com/gpu`` allocatable. The smallest such GPU decides (a pod may land on any of them).
Without a labelled node the spec's ``resources.gpuMemory`` and then the operator's default
(Helm value ``preflight.gpuMemory``) stand in.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from finetune_api.contract import API_GROUP
from finetune_api.estimate import parse_memory
from finetune_api.sizing import FitReport, with_changes
from finetune_api.spec import DistributedSpec, FineTuneJobSpec, wire

GPU_MEMORY_LABEL = "nvidia.com/gpu.memory"  # MiB, set by GPU Feature Discovery
GPU_RESOURCE = "nvidia.com/gpu"
MIB = 1024**2


def _selector_matches(labels: Mapping[str, str], selector: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def _expression_matches(labels: Mapping[str, str], expr: Mapping[str, Any]) -> bool:
    key, op, values = expr.get("key", ""), expr.get("operator", ""), expr.get("values") or []
    if op == "In":
        return labels.get(key) in values
    if op == "NotIn":
        return labels.get(key) not in values
    if op == "Exists":
        return key in labels
    if op == "DoesNotExist":
        return key not in labels
    if op in ("Gt", "Lt") and key in labels and values:
        try:
            have, bound = int(labels[key]), int(values[0])
        except ValueError:
            return False
        return have > bound if op == "Gt" else have < bound
    return False


def _affinity_matches(labels: Mapping[str, str], affinity: Mapping[str, Any]) -> bool:
    """requiredDuringSchedulingIgnoredDuringExecution: any term whose expressions all match."""
    required = ((affinity.get("nodeAffinity") or {}).get("requiredDuringSchedulingIgnoredDuringExecution")) or {}
    terms = required.get("nodeSelectorTerms") or []
    return not terms or any(
        all(_expression_matches(labels, e) for e in term.get("matchExpressions") or []) for term in terms
    )


def _tolerates(taint: Mapping[str, Any], tolerations: Sequence[Mapping[str, Any]]) -> bool:
    for t in tolerations:
        if t.get("effect") and t.get("effect") != taint.get("effect"):
            continue
        if t.get("operator") == "Exists" and (not t.get("key") or t.get("key") == taint.get("key")):
            return True
        if t.get("key") == taint.get("key") and (t.get("value") or "") == (taint.get("value") or ""):
            return True
    return False


def node_can_host(node: Mapping[str, Any], pod_spec: Mapping[str, Any], gpus: int) -> bool:
    """Whether the scheduler may put a pod of ``pod_spec`` asking for ``gpus`` GPUs on ``node``."""
    labels = (node.get("metadata") or {}).get("labels") or {}
    spec = node.get("spec") or {}
    if spec.get("unschedulable"):
        return False
    if not _selector_matches(labels, pod_spec.get("nodeSelector") or {}):
        return False
    if not _affinity_matches(labels, pod_spec.get("affinity") or {}):
        return False
    tolerations = pod_spec.get("tolerations") or []
    for taint in spec.get("taints") or []:
        if taint.get("effect") in ("NoSchedule", "NoExecute") and not _tolerates(taint, tolerations):
            return False
    allocatable = (node.get("status") or {}).get("allocatable") or {}
    return gpus == 0 or int(allocatable.get(GPU_RESOURCE) or 0) >= gpus


def _label_mib(node: Mapping[str, Any]) -> int | None:
    value = ((node.get("metadata") or {}).get("labels") or {}).get(GPU_MEMORY_LABEL, "")
    return int(value) if value.isdigit() and int(value) > 0 else None


def gpu_memory_for(
    spec: FineTuneJobSpec, job: Mapping[str, Any], nodes: Sequence[Mapping[str, Any]], default: str | None
) -> tuple[int, str] | None:
    """(bytes of one GPU the rendered trainer ``job`` will get, where that came from), or None when unknown."""
    pod_spec = job["spec"]["template"]["spec"]
    limits = (pod_spec["containers"][0].get("resources") or {}).get("limits") or {}
    gpus = int(limits.get(GPU_RESOURCE) or 0)
    labelled = sorted(
        (mib, node["metadata"]["name"])
        for node in nodes
        if node_can_host(node, pod_spec, gpus) and (mib := _label_mib(node)) is not None
    )
    if labelled:
        mib, name = labelled[0]
        where = f"node {name}" if len(labelled) == 1 else f"node {name}, the smallest of {len(labelled)} it can land on"
        return mib * MIB, f"label {GPU_MEMORY_LABEL}={mib} ({where})"
    if spec.resources.gpu_memory:
        return parse_memory(spec.resources.gpu_memory), "spec.resources.gpuMemory (no labelled node it can land on)"
    if default:
        return parse_memory(default), "the operator's default (Helm value preflight.gpuMemory)"
    return None


def fit_problem(report: FitReport) -> str:
    """The stall line of a job that does not fit: the fields to change and the computed alternatives."""
    return (
        f"spec.training / spec.method / spec.distributed: the job does not fit its GPUs: {report.message()}; "
        "apply one of these changes"
    )


def runs_as(report: FitReport) -> FineTuneJobSpec:
    """The spec the Job and the trainer's config get: with ``sizing: auto`` the resolved settings, sizing fixed.

    Fixed, so every trainer process runs exactly what the operator checked and put on the status.
    """
    if not report.resolved:
        return report.spec
    return with_changes(report.spec, training={"sizing": "fixed"})


RESOLVED_ANNOTATION = f"{API_GROUP}/resolved-sizing"  # on the Job: what training.sizing auto chose


def resolved_sizing(spec: FineTuneJobSpec) -> str:
    """The sized settings as the Job's annotation, so a later reconcile renders the same Job."""
    t = spec.training
    return json.dumps(
        {
            "batchSizePerDevice": t.batch_size_per_device,
            "gradientAccumulationSteps": t.gradient_accumulation_steps,
            "gradientCheckpointing": t.gradient_checkpointing,
            "distributed": wire(spec.distributed),
        },
        sort_keys=True,
    )


def with_resolved_sizing(spec: FineTuneJobSpec, job: Mapping[str, Any]) -> FineTuneJobSpec:
    """``spec`` with the sizing the existing Job was created with (itself when it was not auto-sized)."""
    text = ((job.get("metadata") or {}).get("annotations") or {}).get(RESOLVED_ANNOTATION)
    if not text or spec.training.sizing != "auto":
        return spec
    saved = json.loads(text)
    sized = with_changes(
        spec,
        training={
            "batch_size_per_device": saved["batchSizePerDevice"],
            "gradient_accumulation_steps": saved["gradientAccumulationSteps"],
            "gradient_checkpointing": saved["gradientCheckpointing"],
            "sizing": "fixed",
        },
    )
    return sized.model_copy(update={"distributed": DistributedSpec.model_validate(saved["distributed"])})
