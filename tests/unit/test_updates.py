"""Spec changes: which fields may change when (the CRD's transition rules), and how the operator
brings an existing Job to a changed spec."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from finetune_api.changes import CHANGES, change_of, transition_rules
from finetune_api.spec import FineTuneJobSpec
from finetune_api.validation import parse_spec
from finetune_operator.builders import Parent, build_job
from finetune_operator.settings import OperatorSettings
from finetune_operator.updates import (
    PREVIOUS_FAILURES_ANNOTATION,
    config_map_patch,
    plan_job,
    replacement_job,
    updated_job,
    with_failures_carried,
)
from tests.invalid_specs import BASE

SETTINGS = OperatorSettings(trainer_image="registry.example/trainer:1.0")


def _job(generation: int, **sections: Any) -> dict[str, Any]:
    spec = copy.deepcopy(BASE)
    for key, value in sections.items():
        spec[key] = {**spec.get(key, {}), **value}
    return build_job(Parent("j", "ns", "uid-1", generation), parse_spec(spec), SETTINGS)


def _live(job: dict[str, Any], **status: Any) -> dict[str, Any]:
    """The Job as the API server returns it: a uid, defaults filled in, controller labels, a status."""
    live = copy.deepcopy(job)
    live["metadata"]["uid"] = "job-uid"
    live["metadata"]["resourceVersion"] = "7"
    template = live["spec"]["template"]
    template["metadata"]["labels"]["batch.kubernetes.io/controller-uid"] = "job-uid"
    template["spec"]["dnsPolicy"] = "ClusterFirst"
    live["spec"]["selector"] = {"matchLabels": {"batch.kubernetes.io/controller-uid": "job-uid"}}
    live["status"] = status
    return live


# --- the rules in the CRD ---------------------------------------------------------------------


def test_every_spec_section_is_classified_and_refused_unless_listed() -> None:
    rules = {field: cel for field, cel, _ in transition_rules()}
    for section in ("model", "task", "dataset", "method", "training", "distributed", "output"):
        assert change_of(section).when == "never"
        assert rules[section] == f"self.{section} == oldSelf.{section}"
    assert rules["resources"].startswith("oldSelf.runPolicy.suspend || ")
    assert "runPolicy.queueName" in rules and "runPolicy.suspend" not in rules
    assert "runPolicy" not in rules  # the section itself is free; its fields are judged one by one


def test_a_field_nobody_classified_is_immutable() -> None:
    assert change_of("runPolicy.somethingNew").when == "never"
    assert change_of("resources.somethingNew").when == "while suspended"
    listed = {path.split(".")[0] for path in CHANGES}
    spec_fields = {(info.alias or name) for name, info in FineTuneJobSpec.model_fields.items()}
    assert listed <= spec_fields  # no entry names a field that does not exist


def test_refusal_messages_name_the_field() -> None:
    for field, _, message in transition_rules():
        assert message.startswith(f"spec.{field} "), message


# --- the operator's plan ------------------------------------------------------------------------


def test_same_generation_needs_nothing() -> None:
    job = _job(1)
    assert plan_job(_live(job), job).action == "none"


def test_live_fields_are_updated_in_place_keeping_the_template() -> None:
    old, new = _job(1), _job(2, runPolicy={"backoffLimit": 7, "activeDeadlineSeconds": 600})
    live = _live(old, active=1)
    plan = plan_job(live, new)
    assert (plan.action, plan.template) == ("update", False)
    put = updated_job(live, new, template=False)
    assert put["spec"]["backoffLimit"] == 7 and put["spec"]["activeDeadlineSeconds"] == 600
    assert put["spec"]["template"] == live["spec"]["template"]  # untouched, server defaults and all
    assert put["metadata"]["annotations"]["finetune.dev/generation"] == "2"
    assert put["metadata"]["resourceVersion"] == "7"  # a concurrent change makes the PUT fail, not win


def test_a_removed_deadline_is_removed_from_the_job() -> None:
    old, new = _job(1, runPolicy={"activeDeadlineSeconds": 600}), _job(2)
    put = updated_job(_live(old), new, template=False)
    assert "activeDeadlineSeconds" not in put["spec"]


def test_resources_change_waits_for_the_job_to_be_suspended_and_its_pods_gone() -> None:
    old = _job(1, runPolicy={"suspend": True})
    new = _job(2, runPolicy={"suspend": False}, resources={"memory": "96Gi"})
    assert plan_job(_live(_job(1), active=1), new).action == "suspend"  # a running Job: suspend it first
    assert plan_job(_live(old, active=1), new).action == "wait"  # pods still stopping
    plan = plan_job(_live(old, active=0), new)
    assert (plan.action, plan.template) == ("update", True)
    put = updated_job(_live(old), new, template=True)
    container = put["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["memory"] == "96Gi"
    assert put["spec"]["suspend"] is False  # resumed in the same update
    labels = put["spec"]["template"]["metadata"]["labels"]
    assert labels["batch.kubernetes.io/controller-uid"] == "job-uid"  # the selector still matches


def test_queue_name_change_moves_the_kueue_label() -> None:
    old = _job(1, runPolicy={"suspend": True, "queueName": "a"})
    put = updated_job(_live(old), _job(2, runPolicy={"suspend": True, "queueName": "b"}), template=False)
    assert put["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "b"
    put = updated_job(_live(old), _job(2, runPolicy={"suspend": True}), template=False)
    assert "kueue.x-k8s.io/queue-name" not in put["metadata"]["labels"]


def test_a_queued_job_is_left_for_kueue_to_resume() -> None:
    queued = _live(_job(1, runPolicy={"queueName": "a"}))
    queued["spec"]["suspend"] = True  # Kueue's webhook suspended it until admission
    put = updated_job(queued, _job(2, runPolicy={"queueName": "a", "backoffLimit": 9}), template=False)
    assert put["spec"]["suspend"] is True and put["spec"]["backoffLimit"] == 9
    put = updated_job(
        _live(_job(1, runPolicy={"queueName": "a"})),
        _job(2, runPolicy={"queueName": "a", "suspend": True}),
        template=False,
    )
    assert put["spec"]["suspend"] is True  # suspending is the user's call


def test_a_finished_job_is_never_rerun() -> None:
    done = _live(_job(1), conditions=[{"type": "Complete", "status": "True"}])
    plan = plan_job(done, _job(2, runPolicy={"suspend": True}, resources={"memory": "96Gi"}))
    assert (plan.action, plan.template) == ("update", False)


def test_a_replacement_job_carries_the_failures_over() -> None:
    old = _live(_job(1, runPolicy={"suspend": True}), failed=2)
    old["metadata"]["annotations"][PREVIOUS_FAILURES_ANNOTATION] = "1"
    new = replacement_job(old, _job(2, resources={"nodes": 2}))
    assert new["metadata"]["annotations"][PREVIOUS_FAILURES_ANNOTATION] == "3"
    assert "uid" not in new["metadata"] and new["spec"]["completions"] == 2


@pytest.mark.parametrize(
    ("have", "want", "patch"),
    [
        ({"a": "1"}, {"a": "1"}, None),
        ({"a": "1"}, {"a": "2"}, {"data": {"a": "2"}}),
        ({"a": "1", "b": "x"}, {"a": "1"}, {"data": {"a": "1", "b": None}}),
    ],
)
def test_config_map_patch(have: dict[str, str], want: dict[str, str], patch: dict[str, Any] | None) -> None:
    assert config_map_patch({"data": have}, {"data": want}) == patch


def test_a_replacement_job_gets_what_is_left_of_the_retry_budget() -> None:
    old = _live(_job(1, runPolicy={"suspend": True, "backoffLimit": 5}), failed=2)
    old["metadata"]["annotations"][PREVIOUS_FAILURES_ANNOTATION] = "1"
    new = replacement_job(old, _job(2, runPolicy={"backoffLimit": 5}, resources={"nodes": 2}))
    assert new["spec"]["backoffLimit"] == 5 - 3
    spent = replacement_job(_live(_job(1), failed=9), _job(2))
    assert spent["spec"]["backoffLimit"] == 0


def test_a_job_created_again_carries_the_status_restarts_and_budget() -> None:
    # The old Job was already gone when the operator looked again: the status' count is all there is.
    desired = _job(2, runPolicy={"backoffLimit": 4})
    job = with_failures_carried(desired, 3)
    assert job["spec"]["backoffLimit"] == 1
    assert job["metadata"]["annotations"][PREVIOUS_FAILURES_ANNOTATION] == "3"
    assert with_failures_carried(desired, 0) == desired
    assert desired["spec"]["backoffLimit"] == 4  # not modified in place


def test_a_live_change_to_a_replaced_job_keeps_the_budget_spent() -> None:
    replaced = _live(with_failures_carried(_job(2, runPolicy={"backoffLimit": 4}), 3), active=1)
    put = updated_job(replaced, _job(3, runPolicy={"backoffLimit": 6, "activeDeadlineSeconds": 600}), template=False)
    assert put["spec"]["backoffLimit"] == 6 - 3
    assert put["metadata"]["annotations"][PREVIOUS_FAILURES_ANNOTATION] == "3"
