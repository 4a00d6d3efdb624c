"""Operator preflight: what the rendered trainer Job refers to must exist, each problem named by its spec field.

The references are read from the Job the builders render (as the pods would use them); the cluster is a
table of what exists. The same checks run against a real API server in tests/integration.
"""

from __future__ import annotations

import copy
from typing import Any

from finetune_api.validation import parse_spec
from finetune_operator.builders import Parent, build_job
from finetune_operator.preflight import ClusterView, preflight_problems
from finetune_operator.settings import OperatorSettings
from tests.invalid_specs import BASE

PARENT = Parent(name="llama-sft", namespace="team-a", uid="0b7c3f4e-1111-2222-3333-444455556666")


def spec_with(**sections: Any) -> Any:
    data = copy.deepcopy(BASE)
    for name, value in sections.items():
        data[name] = {**data.get(name, {}), **value}
    return parse_spec(data)


def cluster(
    secrets: dict[str, set[str]] | None = None,
    claims: tuple[str, ...] = (),
    queues: tuple[str, ...] = (),
    priorities: tuple[str, ...] = (),
) -> ClusterView:
    known = secrets or {}
    return ClusterView(
        secret_keys=lambda name: known.get(name),
        pvc_exists=lambda name: name in claims,
        local_queue_exists=lambda name: name in queues,
        priority_class_exists=lambda name: name in priorities,
    )


def problems(spec: Any, view: ClusterView, settings: OperatorSettings | None = None) -> list[str]:
    job = build_job(PARENT, spec, settings or OperatorSettings())
    return preflight_problems(spec, PARENT.namespace, job, view)


REFERRING = {
    "model": {"tokenSecretRef": {"name": "hf", "key": "token"}},
    "output": {"s3": {"bucket": "models", "credentialsSecretRef": {"name": "s3-creds"}}},
    "resources": {"volumeClaimName": "cache", "priorityClassName": "high"},
    "runPolicy": {"queueName": "gpu-queue"},
}
ALL_THERE = cluster(
    secrets={"hf": {"token"}, "s3-creds": {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}},
    claims=("cache",),
    queues=("gpu-queue",),
    priorities=("high",),
)


def test_a_job_whose_references_all_exist_passes() -> None:
    assert problems(spec_with(**REFERRING), ALL_THERE) == []


def test_each_missing_object_is_named_by_its_spec_field() -> None:
    found = problems(spec_with(**REFERRING), cluster())
    assert [p.split(":")[0] for p in found] == [
        "spec.model.tokenSecretRef",
        "spec.output.s3.credentialsSecretRef",
        "spec.resources.volumeClaimName",
        "spec.resources.priorityClassName",
        "spec.runPolicy.queueName",
    ]
    assert "Secret 'hf' not found in namespace 'team-a'" in found[0]
    assert "kubectl create secret generic hf --from-literal=token=" in found[0]
    assert "PersistentVolumeClaim 'cache'" in found[2]
    assert "PriorityClass 'high' does not exist" in found[3]
    assert "LocalQueue 'gpu-queue' not found" in found[4]


def test_only_a_missing_volume_claim_is_reported_when_the_rest_exists() -> None:
    spec = spec_with(resources={"volumeClaimName": "models"})
    (problem,) = problems(spec, cluster())
    assert problem.startswith("spec.resources.volumeClaimName:") and "'models'" in problem
    assert problems(spec, cluster(claims=("models",))) == []


def test_a_missing_key_lists_the_keys_the_secret_has() -> None:
    view = cluster(secrets={"hf": {"token"}, "s3-creds": {"AWS_ACCESS_KEY_ID", "access"}})
    spec = spec_with(model=REFERRING["model"], output=REFERRING["output"])
    (problem,) = problems(spec, view)
    assert problem.startswith("spec.output.s3.credentialsSecretRef: Secret 's3-creds' has no key")
    assert "'AWS_SECRET_ACCESS_KEY'" in problem and "(it has: AWS_ACCESS_KEY_ID, access)" in problem


def test_the_operator_default_s3_secret_is_checked_and_named_as_such() -> None:
    spec = spec_with(output={"s3": {"bucket": "models"}})
    settings = OperatorSettings(default_s3_credentials_secret="cluster-s3")
    (problem,) = problems(spec, cluster(), settings)
    assert problem.startswith("the operator's default S3 credentials Secret")
    assert "'cluster-s3'" in problem


def test_a_preflight_stall_is_pending_not_failed() -> None:
    from finetune_operator.status import desired_status

    status = desired_status(
        name="llama-sft",
        generation=1,
        nodes=1,
        gpus_per_node=8,
        job=None,
        waiting_for=["spec.model.tokenSecretRef: Secret 'hf' not found in namespace 'team-a'"],
        timestamp="2026-01-01T00:00:00Z",
    )
    assert status.phase == "Pending"
    conditions = {c.type: (c.status, c.reason) for c in status.conditions}
    assert conditions["Stalled"] == ("True", "PreflightFailed")
    assert conditions.get("Failed", ("False",))[0] == "False"
    assert status.message is not None and status.message.startswith("preflight: spec.model.tokenSecretRef")
