"""The CPU preflight pod: built from the trainer Job's own pod template, and what its end means.

The pod runs ``python -m finetune_trainer preflight`` in the trainer image with everything a trainer
pod has that decides access (ServiceAccount, Secret-backed env, the job's ConfigMap and volumes,
security context, tolerations), and nothing that holds a GPU: no GPU request, no nodeSelector, affinity or
priority class of the GPU pods, no Kueue label (it is not the job's workload). Its placement is the operator's
(Helm ``preflight.nodeSelector`` and ``preflight.tolerations``), for clusters whose CPU nodes differ from GPU
nodes. Its verdict comes back in the container's termination message (:class:`finetune_api.preflight.PreflightResult`).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from finetune_api.contract import COMPONENT_LABEL, CONFIG_DIR, JOB_CONFIG_FILE, JOB_LABEL, TRAINER_MODULE
from finetune_api.preflight import PreflightResult
from finetune_operator.updates import GENERATION_ANNOTATION

PREFLIGHT_CONTAINER = "preflight"
PREFLIGHT_COMPONENT = "preflight"
RESOURCES = {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"memory": "4Gi"}}
# Long enough for a hub or S3 round trip and a sample to tokenize; then the pod is deleted and retried.
ACTIVE_DEADLINE_SECONDS = 600
# Container waiting reasons that last until someone fixes the image, its pull secret or the pod's config.
STUCK_REASONS = frozenset(
    {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "CreateContainerConfigError", "CreateContainerError"}
)


def preflight_pod_name(job_name: str) -> str:
    """The pod's name, beside the Job's."""
    return f"{job_name}-preflight"


def build_preflight_pod(
    job: Mapping[str, Any],
    generation: int,
    node_selector: Mapping[str, str] | None = None,
    tolerations: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The preflight pod for the rendered trainer ``job`` of spec ``generation``, placed by the operator's
    ``node_selector`` and ``tolerations`` (Helm preflight.*; the latter added to the trainer's)."""
    meta = job["metadata"]
    template = copy.deepcopy(job["spec"]["template"])
    pod = template["spec"]
    trainer = pod["containers"][0]
    container = {
        "name": PREFLIGHT_CONTAINER,
        "image": trainer["image"],
        "imagePullPolicy": trainer.get("imagePullPolicy", "IfNotPresent"),
        "command": ["python", "-m", TRAINER_MODULE, "preflight", "--config", f"{CONFIG_DIR}/{JOB_CONFIG_FILE}"],
        "env": trainer.get("env", []),
        "resources": RESOURCES,
        "securityContext": trainer.get("securityContext", {}),
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [m for m in trainer.get("volumeMounts", []) if m["mountPath"] != "/dev/shm"],
    }
    # Tolerations stay: where every node is tainted (GPU pools), the pod may go where the trainer may.
    for key in ("nodeSelector", "priorityClassName", "subdomain", "affinity"):
        pod.pop(key, None)
    if node_selector:
        pod["nodeSelector"] = dict(node_selector)
    extra = [t for t in tolerations or [] if t not in pod.get("tolerations", [])]
    if extra:
        pod["tolerations"] = [*pod.get("tolerations", []), *extra]
    pod["containers"] = [container]
    pod["volumes"] = [v for v in pod.get("volumes", []) if v["name"] != "dshm"]
    pod["restartPolicy"] = "Never"
    pod["activeDeadlineSeconds"] = ACTIVE_DEADLINE_SECONDS
    # Not a trainer pod: the operator's restart accounting lists pods by the job label.
    labels = {k: v for k, v in (template.get("metadata") or {}).get("labels", {}).items() if k != JOB_LABEL}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": preflight_pod_name(meta["name"]),
            "namespace": meta["namespace"],
            "labels": {**labels, COMPONENT_LABEL: PREFLIGHT_COMPONENT},
            "annotations": {GENERATION_ANNOTATION: str(generation)},
            "ownerReferences": meta["ownerReferences"],
        },
        "spec": pod,
    }


@dataclass(frozen=True)
class PodOutcome:
    """What the preflight pod says now: still running, a result, or a failure of the pod itself."""

    done: bool
    result: PreflightResult | None = None
    waiting: str = ""  # why it is not done, or why it ended without a result
    stuck: bool = False  # not done and will not be without someone's help (unschedulable, image not pulled)


def pod_generation(pod: Mapping[str, Any]) -> int | None:
    """The spec generation the pod checked."""
    value = ((pod.get("metadata") or {}).get("annotations") or {}).get(GENERATION_ANNOTATION, "")
    return int(value) if value.isdigit() else None


def pod_outcome(pod: Mapping[str, Any]) -> PodOutcome:
    """The preflight pod's verdict from its status."""
    status = pod.get("status") or {}
    phase = status.get("phase") or "Pending"
    terminated = next(
        (
            (c.get("state") or {}).get("terminated")
            for c in status.get("containerStatuses") or []
            if c.get("name") == PREFLIGHT_CONTAINER and (c.get("state") or {}).get("terminated")
        ),
        None,
    )
    if phase not in ("Succeeded", "Failed") or terminated is None:
        if phase == "Failed":  # evicted or past its deadline before the container ended
            return PodOutcome(True, waiting=f"the preflight pod failed: {status.get('reason') or 'no reason given'}")
        scheduled: dict[str, Any] = next(
            (c for c in status.get("conditions") or [] if c.get("type") == "PodScheduled"), {}
        )
        if scheduled.get("status") == "False" and scheduled.get("reason") == "Unschedulable":
            message = scheduled.get("message") or "no node fits it"
            return PodOutcome(False, waiting=f"the preflight pod cannot be scheduled: {message}", stuck=True)
        waiting = next(
            (
                (c.get("state") or {}).get("waiting") or {}
                for c in status.get("containerStatuses") or []
                if (c.get("state") or {}).get("waiting")
            ),
            {},
        )
        reason = waiting.get("reason")
        if reason in STUCK_REASONS:
            detail = f": {waiting['message']}" if waiting.get("message") else ""
            return PodOutcome(False, waiting=f"the preflight pod is {reason}{detail}", stuck=True)
        return PodOutcome(False, waiting=f"the preflight pod is {reason or phase.lower()}")
    message = terminated.get("message") or ""
    if terminated.get("exitCode") == 0:
        try:
            return PodOutcome(True, PreflightResult.decode(message))
        except ValueError:
            pass
    tail = message.strip().splitlines()[-1][:300] if message.strip() else "no message"
    return PodOutcome(True, waiting=f"the preflight pod ended with exit code {terminated.get('exitCode')}: {tail}")
