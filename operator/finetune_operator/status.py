"""Pure status logic: from what the cluster shows to the FineTuneJob's status and events.

The operator owns observedGeneration, phase, conditions, times, restarts, topology and
message. progress, metrics, parameters and artifacts belong to the trainer and are never
computed here, so a merge patch of this module's output leaves them alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from finetune_api.contract import JOB_LABEL

# Reasons a Job reports in its Failed condition, and what a person should read.
_JOB_FAILURE_MESSAGES = {
    "BackoffLimitExceeded": "the trainer failed {failed} times, more than runPolicy.backoffLimit allows; "
    f"see the pod logs (kubectl logs -l {JOB_LABEL}={{name}})",
    "DeadlineExceeded": "the job ran longer than runPolicy.activeDeadlineSeconds",
    "PodFailurePolicy": "the trainer exited with a permanent error (invalid spec or dataset); "
    f"see the pod logs (kubectl logs -l {JOB_LABEL}={{name}}), fix the spec or data and create a new job",
    "MaxFailedIndexesExceeded": "too many pods failed",
}


@dataclass(frozen=True)
class Event:
    """A Kubernetes Event to emit on the FineTuneJob."""

    type: str  # Normal | Warning
    reason: str
    message: str


def _job_condition(job: dict[str, Any], kind: str) -> dict[str, Any] | None:
    for cond in (job.get("status") or {}).get("conditions") or []:
        if cond.get("type") == kind and cond.get("status") == "True":
            return cond
    return None


def _condition(kind: str, status: bool, reason: str, message: str, generation: int | None) -> dict[str, Any]:
    return {
        "type": kind,
        "status": "True" if status else "False",
        "reason": reason,
        "message": message,
        "observedGeneration": generation,
    }


def merge_conditions(old: list[dict[str, Any]], new: list[dict[str, Any]], timestamp: str) -> list[dict[str, Any]]:
    """New conditions, keeping lastTransitionTime where a condition's status did not change."""
    previous = {c.get("type"): c for c in old or []}
    merged = []
    for cond in new:
        before = previous.get(cond["type"])
        changed = before is None or before.get("status") != cond["status"]
        last = timestamp if changed else before.get("lastTransitionTime", timestamp)  # type: ignore[union-attr]
        merged.append({**cond, "lastTransitionTime": last})
    return merged


def desired_status(
    *,
    name: str,
    generation: int | None,
    nodes: int,
    gpus_per_node: int,
    job: dict[str, Any] | None,
    problems: list[str] | None = None,
) -> dict[str, Any]:
    """Phase, conditions (without times), restarts, times and message for the current state.

    ``job`` is the batch/v1 Job (None before it exists); ``problems`` are spec problems
    the API server could not refuse, which stall the job with the field path and fix.
    """
    topology = f"{nodes}x{gpus_per_node}"
    status: dict[str, Any] = {"observedGeneration": generation, "topology": topology}
    g = generation

    if problems:
        message = "invalid spec: " + "; ".join(problems)
        status.update(phase="Failed", message=message)
        status["conditions"] = [
            _condition("Ready", False, "InvalidSpec", message, g),
            _condition("Reconciling", False, "InvalidSpec", "fix the spec to continue", g),
            _condition("Stalled", True, "InvalidSpec", message, g),
            _condition("Failed", True, "InvalidSpec", message, g),
        ]
        return status

    if job is None:
        message = "creating the trainer job"
        status.update(phase="Pending", message=message)
        status["conditions"] = [
            _condition("Created", False, "Creating", message, g),
            _condition("Ready", False, "Creating", message, g),
            _condition("Reconciling", True, "Creating", message, g),
            _condition("Stalled", False, "Creating", "", g),
        ]
        return status

    js = job.get("status") or {}
    failed = int(js.get("failed") or 0)
    active = int(js.get("active") or 0)
    ready = int(js.get("ready") or 0)
    status["restarts"] = failed
    if js.get("startTime"):
        status["startTime"] = js["startTime"]
    created = _condition("Created", True, "JobCreated", f"job {job['metadata']['name']} created", g)

    complete = _job_condition(job, "Complete")
    job_failed = _job_condition(job, "Failed")
    suspended = _job_condition(job, "Suspended")
    if complete is not None:
        message = "training finished"
        status.update(phase="Succeeded", message=message)
        status["completionTime"] = js.get("completionTime") or complete.get("lastTransitionTime")
        status["conditions"] = [
            created,
            _condition("Running", False, "Completed", message, g),
            _condition("Succeeded", True, "Completed", message, g),
            _condition("Ready", True, "Succeeded", message, g),
            _condition("Reconciling", False, "Succeeded", "", g),
            _condition("Stalled", False, "Succeeded", "", g),
        ]
        return status
    if job_failed is not None:
        reason = job_failed.get("reason") or "Failed"
        template = _JOB_FAILURE_MESSAGES.get(reason)
        detail = template.format(failed=failed, name=name) if template else job_failed.get("message", "")
        message = f"{reason}: {detail}"
        status.update(phase="Failed", message=message)
        status["completionTime"] = job_failed.get("lastTransitionTime")
        status["conditions"] = [
            created,
            _condition("Running", False, reason, message, g),
            _condition("Failed", True, reason, message, g),
            _condition("Ready", False, reason, message, g),
            _condition("Reconciling", False, reason, "", g),
            _condition("Stalled", True, reason, message, g),
        ]
        return status
    if suspended is not None or (job.get("spec") or {}).get("suspend"):
        message = "suspended (runPolicy.suspend); set it to false to resume from the last checkpoint"
        status.update(phase="Suspended", message=message)
        status["conditions"] = [
            created,
            _condition("Running", False, "Suspended", message, g),
            _condition("Suspended", True, "Suspended", message, g),
            _condition("Ready", False, "Suspended", message, g),
            _condition("Reconciling", False, "Suspended", "", g),
            _condition("Stalled", False, "Suspended", "", g),
        ]
        return status
    if ready > 0:
        message = f"training on {ready}/{nodes} pods" + (f" after {failed} restarts" if failed else "")
        phase, reason = "Running", "PodsRunning"
    else:
        message = f"waiting for {nodes} pods to be scheduled and started ({active} created)"
        phase, reason = "Pending", "PodsPending"
    status.update(phase=phase, message=message)
    status["conditions"] = [
        created,
        _condition("Running", phase == "Running", reason, message, g),
        _condition("Suspended", False, reason, "", g),
        _condition("Ready", False, reason, message, g),
        _condition("Reconciling", True, reason, message, g),
        _condition("Stalled", False, reason, "", g),
    ]
    return status


def pod_failure_reason(pods: list[dict[str, Any]]) -> str | None:
    """Why the most recently failed trainer pod stopped, e.g. 'OOMKilled (exit code 137)'."""
    latest: tuple[str, str] | None = None
    for pod in pods:
        if (pod.get("status") or {}).get("phase") != "Failed":
            continue
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            term = (cs.get("state") or {}).get("terminated")
            if term:
                when = term.get("finishedAt") or ""
                text = f"{term.get('reason') or 'Error'} (exit code {term.get('exitCode')})"
                if latest is None or when >= latest[0]:
                    latest = (when, text)
        if latest is None:
            reason = (pod.get("status") or {}).get("reason")
            if reason:
                latest = ("", reason)
    return latest[1] if latest else None


def transition_events(old: dict[str, Any], new: dict[str, Any], restart_reason: str | None = None) -> list[Event]:
    """Events for what changed between the old and new status: created, started, restarted, finished."""
    events: list[Event] = []
    old_phase, new_phase = old.get("phase"), new.get("phase")
    old_conds = {c["type"]: c.get("status") for c in old.get("conditions") or []}
    new_conds = {c["type"]: c for c in new.get("conditions") or []}
    created = new_conds.get("Created")
    if created and created["status"] == "True" and old_conds.get("Created") != "True":
        events.append(Event("Normal", "Created", created["message"]))
    if new_phase != old_phase:
        if new_phase == "Running":
            events.append(Event("Normal", "Started", new.get("message", "")))
        elif new_phase == "Succeeded":
            events.append(Event("Normal", "Succeeded", new.get("message", "")))
        elif new_phase == "Failed":
            reason = new_conds["Failed"]["reason"] if "Failed" in new_conds else "Failed"
            events.append(Event("Warning", reason, new.get("message", "")))
        elif new_phase == "Suspended":
            events.append(Event("Normal", "Suspended", new.get("message", "")))
    old_restarts, new_restarts = int(old.get("restarts") or 0), int(new.get("restarts") or 0)
    if new_restarts > old_restarts and new_phase != "Failed":
        events.append(
            Event(
                "Warning",
                "Restarted",
                f"a trainer pod failed: {restart_reason or 'unknown reason'} ({new_restarts} failures so far); "
                "the job restarts it and it resumes from the last checkpoint",
            )
        )
    return events
