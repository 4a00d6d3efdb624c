"""Pure status logic: from what the cluster shows to the FineTuneJob's status and events.

The operator owns observedGeneration, phase, conditions, times, restarts, topology and
message. progress, metrics, parameters and artifacts belong to the trainer and are never
computed here. Every write is a typed :class:`FineTuneJobStatus` (so a misspelt field fails
validation instead of being pruned by the API server), sent as a merge patch of the
operator's fields only, and only when one of them changed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from finetune_api.contract import JOB_LABEL, exit_code
from finetune_api.status import Condition, FineTuneJobStatus, Phase
from finetune_api.status import status_patch as wire_status
from finetune_operator.updates import is_finished, previous_failures, reflected_generation

# Reasons a Job reports in its Failed condition, and what a person should read.
_JOB_FAILURE_MESSAGES = {
    "BackoffLimitExceeded": "the trainer failed {failed} times, more than runPolicy.backoffLimit allows; "
    f"see the pod logs (kubectl logs -l {JOB_LABEL}={{name}})",
    "DeadlineExceeded": "the job ran longer than runPolicy.activeDeadlineSeconds",
    "PodFailurePolicy": "the trainer exited with a permanent error (invalid spec or dataset); "
    f"see the pod logs (kubectl logs -l {JOB_LABEL}={{name}}), fix the spec or data and create a new job",
    "MaxFailedIndexesExceeded": "too many pods failed",
}

# For each state: the conditions it sets True, and those it sets False.
_CONDITIONS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "InvalidSpec": (("Stalled", "Failed"), ("Ready", "Reconciling")),
    # A referenced object is missing: stalled until someone creates it, but not failed (checked again).
    "PreflightFailed": (("Stalled",), ("Ready", "Reconciling", "Failed")),
    "Creating": (("Reconciling",), ("Created", "Ready", "Stalled")),
    # The CPU preflight pod is checking the job; no Job (no GPU request) yet.
    "Preflight": (("Reconciling",), ("Created", "Ready", "Stalled")),
    "Succeeded": (("Created", "Succeeded", "Ready"), ("Running", "Reconciling", "Stalled")),
    "Failed": (("Created", "Failed", "Stalled"), ("Running", "Ready", "Reconciling")),
    "Suspended": (("Created", "Suspended"), ("Running", "Ready", "Reconciling", "Stalled")),
    "Running": (("Created", "Running", "Reconciling"), ("Suspended", "Ready", "Stalled")),
    "Pending": (("Created", "Reconciling"), ("Running", "Suspended", "Ready", "Stalled")),
}


@dataclass(frozen=True)
class Event:
    """A Kubernetes Event to emit on the FineTuneJob."""

    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass(frozen=True)
class _State:
    key: str  # a key of _CONDITIONS
    phase: Phase
    reason: str
    message: str


def _job_condition(job: dict[str, Any], kind: str) -> dict[str, Any] | None:
    for cond in (job.get("status") or {}).get("conditions") or []:
        if cond.get("type") == kind and cond.get("status") == "True":
            return cond
    return None


def job_failed(job: dict[str, Any] | None) -> bool:
    """Whether the Job has given up (its Failed condition is True)."""
    return job is not None and _job_condition(job, "Failed") is not None


def _job_state(
    name: str, nodes: int, job: dict[str, Any], restarts: int, last_failure: str | None, was_running: bool = False
) -> _State:
    """What the Job shows, as one of the states of _CONDITIONS (``last_failure``: pod_failure_reason's;
    ``was_running``: the status read Running before, with no restart since)."""
    js = job.get("status") or {}
    if _job_condition(job, "Complete") is not None:
        return _State("Succeeded", "Succeeded", "Completed", "training finished")
    # FailureTarget / SuccessCriteriaMet: the Job controller has decided, and adds Failed / Complete once
    # the pods have terminated. Until then no pod is ready, which must not read as Pending.
    failed = _job_condition(job, "Failed") or _job_condition(job, "FailureTarget")
    if failed is not None:
        reason = failed.get("reason") or "Failed"
        template = _JOB_FAILURE_MESSAGES.get(reason)
        detail = template.format(failed=restarts, name=name) if template else failed.get("message", "")
        if last_failure:
            detail += f"; the last failure: {last_failure}"
        return _State("Failed", "Failed", reason, f"{reason}: {detail}")
    if _job_condition(job, "Suspended") is not None or (job.get("spec") or {}).get("suspend"):
        message = "suspended (runPolicy.suspend); set it to false to resume from the last checkpoint"
        return _State("Suspended", "Suspended", "Suspended", message)
    ready = int(js.get("ready") or 0)
    succeeded = int(js.get("succeeded") or 0) + len((js.get("uncountedTerminatedPods") or {}).get("succeeded") or [])
    # A rank succeeds only once training has finished for every rank: with one pod done and the others
    # no longer ready (their trainers exiting), the job is completing, not waiting for pods.
    if _job_condition(job, "SuccessCriteriaMet") is not None or (ready == 0 and succeeded > 0):
        done = min(succeeded, nodes) if _job_condition(job, "SuccessCriteriaMet") is None else nodes
        return _State("Running", "Running", "Completing", f"training finished on {done}/{nodes} pods; completing")
    if ready > 0:
        after = f" after {restarts} restarts" if restarts else ""
        return _State("Running", "Running", "PodsRunning", f"training on {ready}/{nodes} pods{after}")
    active = int(js.get("active") or 0)
    if was_running and active > 0:
        # The trainers exited and the kubelet marked the pods not ready before the Job controller counted
        # them (seen on the real node at the end of the demo): still running, not waiting for pods again.
        return _State("Running", "Running", "PodsNotReady", f"{active}/{nodes} pods running, none ready (finishing)")
    # No pod count here: each count would be one more status write (and watch event) per job.
    message = f"waiting for {nodes} pods to be scheduled and started"
    return _State("Pending", "Pending", "PodsPending", message)


def desired_status(
    *,
    name: str,
    generation: int | None,
    nodes: int,
    gpus_per_node: int,
    job: dict[str, Any] | None,
    problems: list[str] | None = None,
    waiting_for: list[str] | None = None,
    timestamp: str = "",
    last_failure: str | None = None,
    preflight: str | None = None,
    previous: dict[str, Any] | None = None,
) -> FineTuneJobStatus:
    """The operator's part of the status for the current state (condition times set to ``timestamp``).

    ``job`` is the batch/v1 Job (None before it exists); ``problems`` are spec problems
    the API server could not refuse, which stall the job with the field path and fix; ``waiting_for``
    are objects the preflight found missing, which stall it until they exist (phase stays Pending);
    ``last_failure`` (:func:`pod_failure_reason`) is why the last pod failed, told in a failed job's message;
    ``preflight`` is what the preflight pod is checking while it runs (phase Pending, reason Preflight);
    ``previous`` is the status as last written (a running job whose pods turn not ready as they exit stays
    Running unless a pod failed since).
    observedGeneration is the generation the Job reflects: it moves once a spec change is
    applied to the Job, not when the change is made.
    """
    observed = generation
    restarts: int | None = None  # known only from a Job: without one, the status keeps its count
    start_time: str | None = None
    completion_time: str | None = None
    if problems:
        message = "invalid spec: " + "; ".join(problems)
        state = _State("InvalidSpec", "Failed", "InvalidSpec", message)
    elif waiting_for:
        message = "preflight: " + "; ".join(waiting_for) + " (checked again with backoff; no GPU is held)"
        state = _State("PreflightFailed", "Pending", "PreflightFailed", message)
    elif preflight:
        state = _State("Preflight", "Pending", "Preflight", f"preflight: {preflight}")
    elif job is None:
        state = _State("Creating", "Pending", "Creating", "creating the trainer job")
    else:
        observed = reflected_generation(job) or generation
        js = job.get("status") or {}
        # Failed pods the Job controller has seen but not yet counted are failures too: it may already
        # have decided (FailureTarget) before the count catches up, and the count must not lag the phase.
        uncounted = len((js.get("uncountedTerminatedPods") or {}).get("failed") or [])
        restarts = previous_failures(job) + int(js.get("failed") or 0) + uncounted
        prev = previous or {}
        was_running = prev.get("phase") == "Running" and restarts <= int(prev.get("restarts") or 0)
        state = _job_state(name, nodes, job, restarts, last_failure, was_running)
        start_time = js.get("startTime")
        if state.phase == "Succeeded":
            complete = _job_condition(job, "Complete") or {}
            completion_time = js.get("completionTime") or complete.get("lastTransitionTime")
        elif state.phase == "Failed":
            completion_time = (_job_condition(job, "Failed") or {}).get("lastTransitionTime")

    def condition(kind: str, status: bool) -> Condition:
        if kind == "Created" and status:
            reason, message = "JobCreated", f"job {name} created"
        else:
            reason, message = state.reason, state.message if status or kind in ("Ready", "Running") else ""
        return Condition(
            type=kind,
            status="True" if status else "False",
            reason=reason,
            message=message,
            last_transition_time=timestamp,
            observed_generation=observed,
        )

    true, false = _CONDITIONS[state.key]
    conditions = [condition(k, True) for k in true] + [condition(k, False) for k in false]
    if job is not None and not is_finished(job) and observed != generation:
        # A spec change is on its way to the Job (kstatus: InProgress until observedGeneration moves).
        conditions = [c for c in conditions if c.type != "Reconciling"] + [
            condition("Reconciling", True).model_copy(
                update={"reason": "SpecChanging", "message": f"applying spec generation {generation} to the Job"}
            )
        ]
    status = FineTuneJobStatus(
        observed_generation=observed,
        phase=state.phase,
        conditions=conditions,
        topology=f"{nodes}x{gpus_per_node}",
        message=state.message,
        start_time=start_time,
        completion_time=completion_time,
    )
    return status if restarts is None else status.model_copy(update={"restarts": restarts})


def merge_conditions(old: list[dict[str, Any]], new: list[Condition]) -> list[Condition]:
    """New conditions, keeping lastTransitionTime where a condition's status did not change."""
    previous = {c.get("type"): c for c in old or []}
    merged = []
    for cond in new:
        before = previous.get(cond.type)
        if before is not None and before.get("status") == cond.status and before.get("lastTransitionTime"):
            cond = cond.model_copy(update={"last_transition_time": before["lastTransitionTime"]})
        merged.append(cond)
    return merged


def status_patch(old: dict[str, Any], new: FineTuneJobStatus) -> dict[str, Any] | None:
    """The operator's fields of ``new`` (conditions merged with ``old``'s times) as a merge patch,
    or None when the status already says all of it."""
    merged = new.model_copy(update={"conditions": merge_conditions(old.get("conditions") or [], new.conditions)})
    # Validate again (model_copy does not): a patch never carries a value the schema refuses.
    checked = FineTuneJobStatus.model_validate(merged.model_dump(exclude_unset=True))
    patch = wire_status(checked, "operator")
    if all(old.get(k) == v for k, v in patch.items()):
        return None
    return patch


def _memory_limit(pod: dict[str, Any], container: str | None) -> str:
    for c in (pod.get("spec") or {}).get("containers") or []:
        if c.get("name") == container:
            return str(((c.get("resources") or {}).get("limits") or {}).get("memory") or "")
    return ""


def pod_failure_reason(pods: list[dict[str, Any]]) -> str | None:
    """Why the most recently failed trainer pod stopped, e.g. 'OOMKilled (exit code 137)', with the
    last line of its termination message (the trainer's reason, or its last log line); for an
    out-of-memory kill, the memory limit and the fields to change instead."""
    latest: tuple[str, str] | None = None
    for pod in pods:
        if (pod.get("status") or {}).get("phase") != "Failed":
            continue
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            term = (cs.get("state") or {}).get("terminated")
            if term:
                when = term.get("finishedAt") or ""
                code = term.get("exitCode")
                declared = exit_code(code) if isinstance(code, int) and code else None
                meaning = f", {declared.name}" if declared else ""
                text = f"{term.get('reason') or 'Error'} (exit code {code}{meaning})"
                lines = [line.strip() for line in (term.get("message") or "").splitlines() if line.strip()]
                if term.get("reason") == "OOMKilled":
                    limit = _memory_limit(pod, cs.get("name"))
                    text += (
                        f": out of memory, the trainer needed more than its container's limit"
                        f"{f' of {limit}' if limit else ''}; raise spec.resources.memory, or lower "
                        "training.batchSizePerDevice or training.maxSeqLength"
                    )
                elif lines:
                    text += f": {lines[-1][:300]}"
                if latest is None or when >= latest[0]:
                    latest = (when, text)
        if latest is None:
            reason = (pod.get("status") or {}).get("reason")
            if reason:
                latest = ("", reason)
    return latest[1] if latest else None


def transition_events(old: dict[str, Any], new: dict[str, Any], restart_reason: str | None = None) -> list[Event]:
    """Events for what changed between the old and new status (wire dicts): created, started,
    restarted, finished."""
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
