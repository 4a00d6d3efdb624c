"""The status logic: phase, conditions, restarts, messages and events from a Job's state."""

from __future__ import annotations

from typing import Any

import pytest

from finetune_operator.status import desired_status, merge_conditions, pod_failure_reason, transition_events


def _job(**status: Any) -> dict[str, Any]:
    conditions = status.pop("conditions", [])
    suspend = status.pop("suspend", False)
    return {
        "metadata": {"name": "j"},
        "spec": {"suspend": suspend},
        "status": {**status, "conditions": [{"status": "True", **c} for c in conditions]},
    }


def _status(job: dict[str, Any] | None, problems: list[str] | None = None) -> dict[str, Any]:
    return desired_status(name="j", generation=4, nodes=2, gpus_per_node=8, job=job, problems=problems)


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


def test_last_transition_time_kept_while_status_unchanged() -> None:
    first = merge_conditions([], _status(_job(active=2, ready=2))["conditions"], "t1")
    again = merge_conditions(first, _status(_job(active=2, ready=2))["conditions"], "t2")
    assert {c["lastTransitionTime"] for c in again} == {"t1"}
    done = _status(_job(conditions=[{"type": "Complete"}]))
    final = {c["type"]: c for c in merge_conditions(again, done["conditions"], "t3")}
    assert final["Running"]["lastTransitionTime"] == "t3"  # True -> False
    assert final["Created"]["lastTransitionTime"] == "t1"  # unchanged


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
    assert pod_failure_reason(pods) == "OOMKilled (exit code 137)"
    assert pod_failure_reason([{"status": {"phase": "Running"}}]) is None


def test_preflight_names_a_missing_volume_claim() -> None:
    from finetune_api.validation import parse_spec
    from finetune_operator.preflight import preflight_problems
    from tests.invalid_specs import with_changes

    spec = parse_spec(with_changes(resources={"volumeClaimName": "models"}))
    (problem,) = preflight_problems(spec, "team-a", lambda name: False)
    assert problem.startswith("spec.resources.volumeClaimName:") and "'models'" in problem
    assert preflight_problems(spec, "team-a", lambda name: name == "models") == []
