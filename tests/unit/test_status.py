"""The status logic: phase, conditions, restarts, messages and events from a Job's state."""

from __future__ import annotations

from typing import Any

import pytest

from finetune_api.spec import wire
from finetune_operator.status import (
    desired_status,
    job_failed,
    merge_conditions,
    pod_failure_reason,
    status_patch,
    transition_events,
)
from finetune_operator.updates import GENERATION_ANNOTATION, PREVIOUS_FAILURES_ANNOTATION


def _job(generation: int = 4, **status: Any) -> dict[str, Any]:
    conditions = status.pop("conditions", [])
    suspend = status.pop("suspend", False)
    annotations = {GENERATION_ANNOTATION: str(generation), **status.pop("annotations", {})}
    return {
        "metadata": {"name": "j", "annotations": annotations},
        "spec": {"suspend": suspend},
        "status": {**status, "conditions": [{"status": "True", **c} for c in conditions]},
    }


def _status(job: dict[str, Any] | None, problems: list[str] | None = None, generation: int = 4) -> dict[str, Any]:
    typed = desired_status(
        name="j", generation=generation, nodes=2, gpus_per_node=8, job=job, problems=problems, timestamp="t0"
    )
    return wire(typed)


def _conds(status: dict[str, Any]) -> dict[str, str]:
    return {c["type"]: c["status"] for c in status["conditions"]}


@pytest.mark.parametrize(
    ("job", "phase", "true_conditions"),
    [
        (None, "Pending", {"Reconciling"}),
        (_job(active=2, ready=0), "Pending", {"Created", "Reconciling"}),
        (_job(active=2, ready=2, startTime="t0"), "Running", {"Created", "Running", "Reconciling"}),
        (
            _job(succeeded=2, completionTime="t1", conditions=[{"type": "Complete"}]),
            "Succeeded",
            {"Created", "Succeeded", "Ready"},
        ),
        (
            _job(failed=4, conditions=[{"type": "Failed", "reason": "BackoffLimitExceeded"}]),
            "Failed",
            {"Created", "Failed", "Stalled"},
        ),
        (_job(suspend=True, conditions=[{"type": "Suspended"}]), "Suspended", {"Created", "Suspended"}),
    ],
    ids=["no-job", "pods-pending", "running", "succeeded", "failed", "suspended"],
)
def test_phase_and_conditions_follow_the_job(job: Any, phase: str, true_conditions: set[str]) -> None:
    status = _status(job)
    assert status["phase"] == phase
    assert {t for t, s in _conds(status).items() if s == "True"} == true_conditions
    assert status["observedGeneration"] == 4
    assert status["topology"] == "2x8"


def test_invalid_spec_stalls_with_the_field_path() -> None:
    status = _status(None, problems=["spec.dataset.files.train: no such file"])
    assert status["phase"] == "Failed"
    assert _conds(status)["Stalled"] == "True"
    assert "spec.dataset.files.train" in status["message"]


def test_permanent_failure_message_tells_what_to_do() -> None:
    job = _job(failed=1, conditions=[{"type": "Failed", "reason": "PodFailurePolicy"}])
    status = _status(job)
    assert status["phase"] == "Failed"
    assert "permanent" in status["message"] and "kubectl logs" in status["message"]


def test_restarts_count_failed_pods_and_stay_running() -> None:
    status = _status(_job(active=2, ready=2, failed=1))
    assert status["restarts"] == 1 and status["phase"] == "Running"
    assert "after 1 restarts" in status["message"]


def _typed(job: dict[str, Any], timestamp: str) -> Any:
    return desired_status(name="j", generation=4, nodes=2, gpus_per_node=8, job=job, timestamp=timestamp)


def test_last_transition_time_kept_while_status_unchanged() -> None:
    first = [wire(c) for c in merge_conditions([], _typed(_job(active=2, ready=2), "t1").conditions)]
    again = [wire(c) for c in merge_conditions(first, _typed(_job(active=2, ready=2), "t2").conditions)]
    assert {c["lastTransitionTime"] for c in again} == {"t1"}
    done = _typed(_job(conditions=[{"type": "Complete"}]), "t3")
    final = {c.type: c for c in merge_conditions(again, done.conditions)}
    assert final["Running"].last_transition_time == "t3"  # True -> False
    assert final["Created"].last_transition_time == "t1"  # unchanged


def test_status_is_patched_only_when_the_operators_fields_change() -> None:
    running = _typed(_job(active=2, ready=2), "t1")
    patch = status_patch({}, running)
    assert patch is not None and patch["phase"] == "Running" and patch["observedGeneration"] == 4
    # The trainer's fields are never part of the operator's patch.
    assert not {"progress", "metrics", "parameters", "artifacts"} & set(patch)
    written = {**patch, "progress": {"step": 5}}
    assert status_patch(written, _typed(_job(active=2, ready=2), "t2")) is None
    restarted = status_patch(written, _typed(_job(active=2, ready=2, failed=1), "t3"))
    assert restarted is not None and restarted["restarts"] == 1 and "after 1 restarts" in restarted["message"]


def test_a_misspelt_status_field_fails_validation() -> None:
    import pydantic

    running = _typed(_job(active=2, ready=2), "t1")
    bad = running.model_copy(update={"phase": "Runing"})
    with pytest.raises(pydantic.ValidationError):
        status_patch({}, bad)


def test_observed_generation_moves_only_when_the_job_reflects_the_spec() -> None:
    behind = _status(_job(generation=3, active=2, ready=2), generation=4)
    assert behind["observedGeneration"] == 3
    reconciling = next(c for c in behind["conditions"] if c["type"] == "Reconciling")
    assert reconciling["status"] == "True" and reconciling["reason"] == "SpecChanging"
    caught_up = _status(_job(generation=4, active=2, ready=2), generation=4)
    assert caught_up["observedGeneration"] == 4
    assert all(c["observedGeneration"] == 4 for c in caught_up["conditions"])


def test_restarts_include_the_failures_of_a_replaced_job() -> None:
    job = _job(active=2, ready=2, failed=1, annotations={PREVIOUS_FAILURES_ANNOTATION: "2"})
    assert _status(job)["restarts"] == 3


def test_events_for_each_transition() -> None:
    pending = _status(None)
    running = _status(_job(active=2, ready=2))
    restarted = _status(_job(active=2, ready=2, failed=1))
    done = _status(_job(conditions=[{"type": "Complete"}]))
    failed = _status(_job(failed=4, conditions=[{"type": "Failed", "reason": "BackoffLimitExceeded"}]))
    assert [e.reason for e in transition_events({}, pending)] == []
    assert [e.reason for e in transition_events(pending, running)] == ["Created", "Started"]
    (restart,) = transition_events(running, restarted, "OOMKilled (exit code 137)")
    assert restart.reason == "Restarted" and "OOMKilled (exit code 137)" in restart.message
    assert [e.reason for e in transition_events(restarted, done)] == ["Succeeded"]
    assert [(e.type, e.reason) for e in transition_events(running, failed)] == [("Warning", "BackoffLimitExceeded")]
    assert transition_events(done, done) == []


def test_pod_failure_reason_reads_the_latest_terminated_container() -> None:
    def pod(reason: str, code: int, when: str) -> dict[str, Any]:
        term = {"reason": reason, "exitCode": code, "finishedAt": when}
        return {"status": {"phase": "Failed", "containerStatuses": [{"state": {"terminated": term}}]}}

    pods = [pod("Error", 1, "2026-01-01T00:00:00Z"), pod("OOMKilled", 137, "2026-01-01T00:05:00Z")]
    assert (pod_failure_reason(pods) or "").startswith("OOMKilled (exit code 137): out of memory")
    assert pod_failure_reason([{"status": {"phase": "Running"}}]) is None


def test_pod_failure_reason_carries_the_last_line_of_the_termination_message() -> None:
    term = {"reason": "Error", "exitCode": 75, "finishedAt": "t", "message": "loading data\nS3 503: SlowDown\n"}
    pod = {"status": {"phase": "Failed", "containerStatuses": [{"state": {"terminated": term}}]}}
    assert pod_failure_reason([pod]) == "Error (exit code 75, TemporaryFailure): S3 503: SlowDown"


def test_an_out_of_memory_kill_fails_the_job_with_the_field_to_change() -> None:
    term = {"reason": "OOMKilled", "exitCode": 137, "finishedAt": "t", "message": "step 3 loss 0.69\n"}
    pod = {
        "spec": {"containers": [{"name": "trainer", "resources": {"limits": {"memory": "300Mi"}}}]},
        "status": {"phase": "Failed", "containerStatuses": [{"name": "trainer", "state": {"terminated": term}}]},
    }
    reason = pod_failure_reason([pod])
    assert reason is not None and reason.startswith("OOMKilled (exit code 137): out of memory")
    assert "limit of 300Mi" in reason and "raise spec.resources.memory" in reason
    failed = _job(failed=1, conditions=[{"type": "Failed", "reason": "BackoffLimitExceeded"}])
    assert job_failed(failed) and not job_failed(_job(active=2, ready=2)) and not job_failed(None)
    status = wire(desired_status(name="j", generation=1, nodes=2, gpus_per_node=0, job=failed, last_failure=reason))
    assert status["phase"] == "Failed"
    assert status["message"].startswith("BackoffLimitExceeded: the trainer failed 1 times")
    assert status["message"].endswith(f"; the last failure: {reason}")


def test_phase_gauge_counts_each_job_once_in_its_current_phase() -> None:
    from prometheus_client import REGISTRY

    from finetune_operator import metrics

    def gauge(phase: str) -> float:
        return REGISTRY.get_sample_value("finetune_jobs", {"phase": phase}) or 0.0

    before = {p: gauge(p) for p in metrics.PHASES}
    metrics.observe_phase("gauge-test", "a", "Pending")
    metrics.observe_phase("gauge-test", "b", "Pending")
    metrics.observe_phase("gauge-test", "a", "Running")
    metrics.observe_phase("gauge-test", "a", "Running")
    assert gauge("Pending") - before["Pending"] == 1 and gauge("Running") - before["Running"] == 1
    metrics.forget("gauge-test", "a")
    metrics.forget("gauge-test", "b")
    assert {p: gauge(p) for p in metrics.PHASES} == before


def test_the_last_pod_finishing_goes_from_running_to_succeeded_without_pending() -> None:
    # The Job as the Job controller writes it after the trainer's last step, one update at a time.
    updates = [
        _job(active=2, ready=2, startTime="t0"),
        _job(active=1, ready=1, succeeded=1, startTime="t0"),
        _job(active=1, ready=0, succeeded=1, startTime="t0"),  # rank 1's trainer exiting (seen on the real node)
        _job(active=0, ready=0, succeeded=1, uncountedTerminatedPods={"succeeded": ["uid-0"]}, startTime="t0"),
        _job(active=0, ready=0, succeeded=2, startTime="t0", conditions=[{"type": "SuccessCriteriaMet"}]),
        _job(succeeded=2, completionTime="t1", conditions=[{"type": "SuccessCriteriaMet"}, {"type": "Complete"}]),
    ]
    statuses = [_status(job) for job in updates]
    assert [s["phase"] for s in statuses] == ["Running", "Running", "Running", "Running", "Running", "Succeeded"]
    reasons = [
        e.reason for old, new in zip([{}, *statuses], statuses, strict=False) for e in transition_events(old, new)
    ]
    assert reasons == ["Created", "Started", "Succeeded"]


def test_pods_turning_not_ready_as_their_trainers_exit_keep_the_job_running() -> None:
    """Seen on the real node at the end of the demo: both trainers exited, the kubelet marked the pods not ready,
    and the Job controller had counted neither yet (active 2, ready 0). That read Pending between Running and
    Succeeded; with the status as last written it stays Running. A job never seen running still reads Pending,
    and so does one whose pod failed since (its replacement waits to be scheduled)."""

    def status(job: dict[str, Any], previous: dict[str, Any] | None) -> dict[str, Any]:
        typed = desired_status(
            name="j", generation=4, nodes=2, gpus_per_node=8, job=job, timestamp="t0", previous=previous
        )
        return wire(typed)

    updates = [
        _job(active=2, ready=2, startTime="t0"),
        _job(active=2, ready=0, startTime="t0"),  # both trainers exited, not counted yet
        _job(active=0, ready=0, succeeded=2, startTime="t0", conditions=[{"type": "SuccessCriteriaMet"}]),
        _job(succeeded=2, completionTime="t1", conditions=[{"type": "SuccessCriteriaMet"}, {"type": "Complete"}]),
    ]
    previous: dict[str, Any] = {}
    phases = []
    for job in updates:
        previous = status(job, previous)
        phases.append(previous["phase"])
    assert phases == ["Running", "Running", "Running", "Succeeded"]
    assert status(_job(active=2, ready=0, startTime="t0"), None)["phase"] == "Pending"  # never seen running
    restarted = _job(active=2, ready=0, failed=1, startTime="t0")
    assert status(restarted, {"phase": "Running", "restarts": 0})["phase"] == "Pending"  # a pod failed since


def test_a_job_the_controller_marked_to_fail_is_failed_while_its_pods_terminate() -> None:
    job = _job(active=0, ready=0, failed=4, conditions=[{"type": "FailureTarget", "reason": "BackoffLimitExceeded"}])
    status = _status(job)
    assert status["phase"] == "Failed" and status["message"].startswith("BackoffLimitExceeded")


def test_failures_the_job_controller_has_not_counted_yet_are_restarts_already() -> None:
    # Seen against the API server: FailureTarget is set while the second failure is still uncounted.
    job = _job(
        active=0,
        ready=0,
        failed=1,
        uncountedTerminatedPods={"failed": ["uid-1"]},
        conditions=[{"type": "FailureTarget", "reason": "BackoffLimitExceeded"}],
    )
    status = _status(job)
    assert status["phase"] == "Failed" and status["restarts"] == 2


def test_a_pod_being_replaced_after_a_failure_is_pending() -> None:
    assert _status(_job(active=2, ready=0, failed=1, startTime="t0"))["phase"] == "Pending"


def test_without_a_job_the_status_keeps_its_restart_count() -> None:
    # Between a Job's deletion and its replacement's creation nothing may write restarts 0.
    typed = desired_status(name="j", generation=4, nodes=2, gpus_per_node=8, job=None, timestamp="t0")
    patch = status_patch({"restarts": 3, "phase": "Running"}, typed)
    assert patch is not None and "restarts" not in patch


def test_while_the_preflight_pod_runs_the_job_is_pending_with_what_is_checked() -> None:
    from finetune_operator.preflight_run import CHECKING

    checking = f"{CHECKING} (the preflight pod is Running)"
    typed = desired_status(
        name="j", generation=4, nodes=2, gpus_per_node=8, job=None, timestamp="t0", preflight=checking
    )
    status = wire(typed)
    conds = {c["type"]: c for c in status["conditions"]}
    assert status["phase"] == "Pending"
    assert status["message"] == f"preflight: {checking}"
    assert "model access, the data and the S3 output" in status["message"]
    assert "creating the trainer job" not in status["message"]
    assert (conds["Reconciling"]["status"], conds["Reconciling"]["reason"]) == ("True", "Preflight")
    assert conds["Stalled"]["status"] == conds["Created"]["status"] == "False"
    # A verdict that stalls the job wins over the wording of a running check.
    stalled = desired_status(
        name="j", generation=4, nodes=2, gpus_per_node=8, job=None, waiting_for=["dataset.name: x"], preflight=checking
    )
    assert stalled.phase == "Pending" and stalled.message.startswith("preflight: dataset.name: x")
    assert {c.type: c.status for c in stalled.conditions}["Stalled"] == "True"
