"""Pure decisions: how to bring existing children to a changed spec.

The CRD's transition rules (:mod:`finetune_api.changes`) let only two kinds of change
through: fields applied at any time (suspend, backoffLimit, deadlines, TTL) and fields that
change only while the job is suspended (resources, the queue name). Each rendered Job
carries the FineTuneJob generation it reflects and a hash of its pod template, so the
operator can tell what changed without comparing against the API server's defaults.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass
from typing import Any, Literal

from finetune_api.contract import API_GROUP, KUEUE_QUEUE_LABEL

GENERATION_ANNOTATION = f"{API_GROUP}/generation"
TEMPLATE_HASH_ANNOTATION = f"{API_GROUP}/template-hash"
PREVIOUS_FAILURES_ANNOTATION = f"{API_GROUP}/previous-failures"
# Labels the Job controller adds to the pod template; its selector needs them.
_CONTROLLER_LABELS = (
    "batch.kubernetes.io/controller-uid",
    "batch.kubernetes.io/job-name",
    "controller-uid",
    "job-name",
)
# Job spec fields the operator sets that the API server lets change on a live Job.
_LIVE_FIELDS = ("suspend", "backoffLimit", "activeDeadlineSeconds", "ttlSecondsAfterFinished")

Action = Literal["none", "update", "suspend", "wait", "recreate"]


@dataclass(frozen=True)
class JobPlan:
    """What to do with the existing Job, and why (for logs and the status message)."""

    action: Action
    reason: str
    template: bool = False  # whether the pod template changes (only on a suspended Job)


def template_hash(template: dict[str, Any]) -> str:
    """A short, stable digest of a pod template as rendered (before the API server's defaults)."""
    return hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:16]


def _annotation(obj: dict[str, Any], key: str) -> str | None:
    return ((obj.get("metadata") or {}).get("annotations") or {}).get(key)


def reflected_generation(job: dict[str, Any]) -> int | None:
    """The FineTuneJob generation a Job was last brought up to date with (None: unknown)."""
    value = _annotation(job, GENERATION_ANNOTATION)
    return int(value) if value and value.isdigit() else None


def previous_failures(job: dict[str, Any]) -> int:
    """Pod failures of the Jobs this one replaced (they count as restarts too)."""
    value = _annotation(job, PREVIOUS_FAILURES_ANNOTATION)
    return int(value) if value and value.isdigit() else 0


def is_finished(job: dict[str, Any]) -> bool:
    """Whether the Job completed or failed for good."""
    return any(
        c.get("type") in ("Complete", "Failed") and c.get("status") == "True"
        for c in (job.get("status") or {}).get("conditions") or []
    )


def plan_job(actual: dict[str, Any], desired: dict[str, Any]) -> JobPlan:
    """How to bring the existing Job to the desired one (both dicts; ``desired`` as rendered)."""
    if reflected_generation(actual) == reflected_generation(desired):
        return JobPlan("none", "the Job reflects this generation")
    old_hash = _annotation(actual, TEMPLATE_HASH_ANNOTATION)
    # A finished Job runs nothing more; a Job from an older operator has no hash to compare.
    if is_finished(actual) or old_hash is None or old_hash == _annotation(desired, TEMPLATE_HASH_ANNOTATION):
        return JobPlan("update", "job settings changed")
    if not (actual.get("spec") or {}).get("suspend"):
        return JobPlan("suspend", "the pod template changed: suspending the Job to apply it")
    if int((actual.get("status") or {}).get("active") or 0) > 0:
        return JobPlan("wait", "the pod template changed: waiting for the suspended Job's pods to stop")
    return JobPlan("update", "the pod template changed on a suspended Job", template=True)


def updated_job(actual: dict[str, Any], desired: dict[str, Any], *, template: bool) -> dict[str, Any]:
    """The Job to PUT: ``actual`` with the operator's labels, annotations, live fields and (optionally)
    pod template taken from ``desired``; what others added (labels, annotations) stays."""
    job = copy.deepcopy(actual)
    meta, want_meta = job["metadata"], desired["metadata"]
    ours = set(want_meta.get("labels") or {}) | {KUEUE_QUEUE_LABEL}
    meta["labels"] = {
        **{k: v for k, v in (meta.get("labels") or {}).items() if k not in ours},
        **(want_meta.get("labels") or {}),
    }
    meta["annotations"] = {**(meta.get("annotations") or {}), **(want_meta.get("annotations") or {})}
    spec, want = job["spec"], desired["spec"]
    # A queued job's Job is resumed by Kueue when it admits it: only suspending is ours to do.
    queued = KUEUE_QUEUE_LABEL in (want_meta.get("labels") or {})
    for field in _LIVE_FIELDS:
        if field == "suspend" and queued and not want.get("suspend"):
            continue
        if field == "backoffLimit" and field in want:
            spec[field] = remaining_backoff(int(want[field]), previous_failures(actual))
        elif field in want:
            spec[field] = want[field]
        else:
            spec.pop(field, None)
    if template:
        new_template = copy.deepcopy(want["template"])
        old_labels = (spec["template"].get("metadata") or {}).get("labels") or {}
        controller = {k: old_labels[k] for k in _CONTROLLER_LABELS if k in old_labels}
        template_meta = new_template.setdefault("metadata", {})
        template_meta["labels"] = {**(template_meta.get("labels") or {}), **controller}
        spec["template"] = new_template
        spec["completions"] = want["completions"]
        spec["parallelism"] = want["parallelism"]
    return job


def remaining_backoff(backoff_limit: int, failed_before: int) -> int:
    """The Job's backoffLimit when earlier Jobs of the same FineTuneJob already failed ``failed_before``
    times: runPolicy.backoffLimit is the budget of the whole job, not of each Job the operator creates."""
    return max(0, backoff_limit - failed_before)


def with_failures_carried(desired: dict[str, Any], failed_before: int) -> dict[str, Any]:
    """The Job manifest ``desired`` for a job whose earlier Jobs failed ``failed_before`` times: the count
    as an annotation (restarts keep counting from it) and the retry budget reduced by it."""
    job = copy.deepcopy(desired)
    if failed_before > 0:
        job["metadata"].setdefault("annotations", {})[PREVIOUS_FAILURES_ANNOTATION] = str(failed_before)
        if "backoffLimit" in job["spec"]:
            job["spec"]["backoffLimit"] = remaining_backoff(int(job["spec"]["backoffLimit"]), failed_before)
    return job


def replacement_job(actual: dict[str, Any], desired: dict[str, Any]) -> dict[str, Any]:
    """The Job to create in place of ``actual``, carrying its pod failures over as restarts."""
    failed = previous_failures(actual) + int((actual.get("status") or {}).get("failed") or 0)
    return with_failures_carried(desired, failed)


def config_map_patch(actual: dict[str, Any], desired: dict[str, Any]) -> dict[str, Any] | None:
    """A merge patch bringing the ConfigMap's data to the desired data, or None when equal."""
    have, want = actual.get("data") or {}, desired.get("data") or {}
    if have == want:
        return None
    return {"data": {**dict.fromkeys(have), **want}}
