"""Operator preflight against a real API server: a job whose references are missing stalls before any Job exists.

Each case names the spec field; creating the missing object lets the job start without touching it
(the operator looks again with backoff).
"""

from __future__ import annotations

import json

import pytest

from tests.integration.operator_process import OperatorProcess, wait_for
from tests.integration.test_operator import conditions, ftj, get

pytestmark = pytest.mark.cluster


def _no_job(operator: OperatorProcess, ns: str, name: str) -> bool:
    return operator.kube.kubectl("get", "job", name, "-n", ns, check=False).returncode != 0


def test_missing_token_secret_stalls_then_starts_once_created(operator: OperatorProcess, kube_namespace: str) -> None:
    kube, ns = operator.kube, kube_namespace
    manifest = ftj("gated", model={"tokenSecretRef": {"name": "hf-token", "key": "token"}})
    kube.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(manifest))
    kube.kubectl("wait", "--for=condition=Stalled", "ftj/gated", "-n", ns, "--timeout=60s")
    obj = get(kube, ns, "ftj", "gated")
    assert "spec.model.tokenSecretRef: Secret 'hf-token' not found" in obj["status"]["message"]
    assert obj["status"]["phase"] == "Pending"  # stalled, not failed: it starts once the Secret exists
    assert conditions(obj)["Stalled"]["reason"] == "PreflightFailed"
    assert _no_job(operator, ns, "gated")

    kube.kubectl("create", "secret", "generic", "hf-token", "-n", ns, "--from-literal=token=hf_x")
    wait_for("the Job after the Secret exists", lambda: get(kube, ns, "job", "gated"), timeout=90)
    wait_for(
        "Stalled cleared", lambda: conditions(get(kube, ns, "ftj", "gated"))["Stalled"]["status"] == "False" or None
    )


def test_a_secret_without_the_key_lists_the_keys_it_has(operator: OperatorProcess, kube_namespace: str) -> None:
    kube, ns = operator.kube, kube_namespace
    kube.kubectl("create", "secret", "generic", "s3", "-n", ns, "--from-literal=AWS_ACCESS_KEY_ID=a")
    manifest = ftj("keys", output={"s3": {"bucket": "models", "credentialsSecretRef": {"name": "s3"}}})
    kube.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(manifest))
    kube.kubectl("wait", "--for=condition=Stalled", "ftj/keys", "-n", ns, "--timeout=60s")
    message = get(kube, ns, "ftj", "keys")["status"]["message"]
    assert "spec.output.s3.credentialsSecretRef: Secret 's3' has no key 'AWS_SECRET_ACCESS_KEY'" in message
    assert "(it has: AWS_ACCESS_KEY_ID)" in message
    assert _no_job(operator, ns, "keys")


def test_missing_priority_class_and_queue_are_both_named(operator: OperatorProcess, kube_namespace: str) -> None:
    kube, ns = operator.kube, kube_namespace
    manifest = ftj("queued", resources={"priorityClassName": "urgent"}, runPolicy={"queueName": "gpus"})
    kube.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(manifest))
    kube.kubectl("wait", "--for=condition=Stalled", "ftj/queued", "-n", ns, "--timeout=60s")
    message = get(kube, ns, "ftj", "queued")["status"]["message"]
    assert "spec.resources.priorityClassName: PriorityClass 'urgent' does not exist" in message
    assert "spec.runPolicy.queueName: Kueue LocalQueue 'gpus' not found" in message
    assert _no_job(operator, ns, "queued")
