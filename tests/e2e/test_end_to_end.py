"""End to end: helm install -> S3 Secret -> kubectl apply -> two trainer pods train for real
(rendezvous through pod 0, gloo) -> checkpoints in MinIO -> progress on the resource ->
Succeeded with metrics and artifact URIs. A second run loses a pod mid-training and still
succeeds by resuming from S3.
"""

from __future__ import annotations

import json
import signal
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.cluster.fixture import Kube, MinIO
from tests.e2e.demo import create_s3_secret, demo_manifest, install_operator, stage_inputs, watch_job
from tests.e2e.node_agent import NodeAgent

pytestmark = [pytest.mark.cluster, pytest.mark.slow]
BUCKET = "e2e"


@pytest.fixture(scope="module")
def e2e(kube: Kube, minio: MinIO, node_agent: NodeAgent) -> Iterator[dict[str, Any]]:
    """A namespace watched by a Helm-installed operator, the S3 Secret and the staged inputs."""
    ns = f"e2e-{uuid.uuid4().hex[:6]}"
    release_ns = f"e2e-ops-{uuid.uuid4().hex[:6]}"
    # A release name of its own: the chart's ClusterRole is named after the release.
    release = f"ftj-{uuid.uuid4().hex[:6]}"
    kube.kubectl("create", "namespace", ns)
    install_operator(kube, node_agent.scheduling(), release_ns, ns, release)
    create_s3_secret(kube, ns, minio)
    inputs = stage_inputs(minio, BUCKET)
    yield {"ns": ns, "inputs": inputs}
    kube.helm("uninstall", release, "--namespace", release_ns, "--wait", check=False)
    for namespace in (ns, release_ns):
        kube.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def _keys(minio: MinIO, prefix: str) -> list[str]:
    pages = minio.client().get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def submit(
    kube: Kube, minio: MinIO, agent: NodeAgent, e2e: dict[str, Any], name: str, *, max_steps: int, every: int
) -> None:
    """Apply the demo job on the agent's node: max_steps steps, evaluating and checkpointing every `every`."""
    manifest = demo_manifest(
        name,
        e2e["inputs"],
        minio,
        BUCKET,
        agent.scheduling(),
        maxSteps=max_steps,
        evalStrategy="steps",
        evalSteps=every,
        saveStrategy="steps",
        saveSteps=every,
        loggingSteps=2,
    )
    kube.kubectl("apply", "-n", e2e["ns"], "-f", "-", input=manifest)


def test_helm_installed_operator_trains_a_job_to_succeeded(
    kube: Kube, minio: MinIO, node_agent: NodeAgent, e2e: dict[str, Any]
) -> None:
    ns, name = e2e["ns"], "sentiment"
    submit(kube, minio, node_agent, e2e, name, max_steps=24, every=8)
    seen: list[dict[str, Any]] = []
    final = watch_job(kube, ns, name, timeout=900, on_status=lambda s: seen.append(s))
    status = final["status"]
    assert status["phase"] == "Succeeded", json.dumps(status, indent=2) + node_agent.log_of(ns, name)[-4000:]

    steps = sorted({s["progress"]["step"] for s in seen if s.get("progress") and s.get("phase") == "Running"})
    assert len(steps) >= 2, f"progress did not move while running: {steps}"
    assert status["progress"]["step"] == 24 and status["progress"]["percent"] == 100.0
    assert status["metrics"]["eval_accuracy"] > 0.5
    assert status["parameters"]["trainable"] < status["parameters"]["total"]
    artifacts = status["artifacts"]
    assert artifacts["model"].startswith(f"s3://{BUCKET}/") and artifacts["latestCheckpoint"]
    model_prefix = artifacts["model"].removeprefix(f"s3://{BUCKET}/")
    assert any(k.endswith("manifest.json") for k in _keys(minio, model_prefix))
    assert any(k.endswith("adapter_model.safetensors") for k in _keys(minio, model_prefix))
    table = kube.kubectl("get", "ftj", name, "-n", ns).stdout
    assert "Succeeded" in table and "2x0" in table
    # Both pods ran the real trainer as one 2-process job and exited 0.
    pods = kube.kubectl_json("get", "pods", "-n", ns, "-l", f"finetune.dev/job={name}")["items"]
    assert sorted(p["status"]["phase"] for p in pods) == ["Succeeded", "Succeeded"]
    assert all(p["spec"]["nodeName"] == node_agent.node_name for p in pods)


def test_losing_a_pod_mid_run_resumes_from_s3_and_succeeds(
    kube: Kube, minio: MinIO, node_agent: NodeAgent, e2e: dict[str, Any]
) -> None:
    ns, name = e2e["ns"], "preempted"
    submit(kube, minio, node_agent, e2e, name, max_steps=30, every=6)

    # Wait for the first complete checkpoint in S3, then kill pod 1's processes (a node crash).
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if any(k.endswith("manifest.json") and "/checkpoint-" in k for k in _keys(minio, f"runs/{ns}/{name}/")):
            break
        time.sleep(1)
    else:
        pytest.fail("no complete checkpoint appeared in S3")
    victim = node_agent.wait_for_process(ns, f"{name}-1-")
    node_agent.kill_pod(ns, victim.name, signal.SIGKILL)

    final = watch_job(kube, ns, name, timeout=900)
    status = final["status"]
    assert status["phase"] == "Succeeded", json.dumps(status, indent=2)
    assert status["restarts"] >= 1
    assert status["progress"]["step"] == 30
    logs = "".join(node_agent.log_of(ns, f"{name}-{i}-") for i in (0, 1))
    assert "resum" in logs.lower(), "the restarted trainer did not resume from the S3 checkpoint"
