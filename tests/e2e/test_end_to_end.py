"""End to end on real containers: helm install (the operator image) -> S3 Secret -> kubectl apply ->
two trainer pods of the trainer image train on the real node (rendezvous through pod 0's name in
the headless Service's DNS, gloo, read-only root filesystems) -> checkpoints in MinIO -> progress on
the resource -> Succeeded with metrics and artifact URIs.

One job lives through two disruptions and still succeeds: a trainer container SIGKILLed mid-run
(a crash: the restart resumes from the last checkpoint in S3, retraining less than one save
interval), then ``kubectl delete pod`` with a grace period (SIGTERM: the trainers save and upload
a checkpoint at that step before they exit, and the restart resumes from exactly there). A second
job gets a memory limit too small: its container is OOM-killed and the job's status says so,
naming the field to change.

Steps are counted from the pods' logs: rank 0 logs every step (``loggingSteps: 1``), so an
attempt's ``{'loss': ...}`` lines are the steps it trained.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest

from tests.cluster.fixture import Kube, MinIO
from tests.e2e.demo import REAL_NODE_CPU, create_s3_secret, demo_manifest, install_operator, stage_inputs, watch_job
from tests.e2e.real_node import RealNode

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.containers]
BUCKET = "e2e"
MAX_STEPS, EVERY = 24, 4  # steps of the disrupted job, and its checkpoint interval
T = TypeVar("T")

RESUMED = re.compile(r"resuming from s3://\S+/checkpoint-(\d+)/? \(global step (\d+)\)")
STOPPING = re.compile(r"saving checkpoint-(\d+), then stopping")
STEP_LOG = re.compile(r"\{'loss': ")


@pytest.fixture(scope="module")
def e2e(kube: Kube, minio: MinIO, real_node: RealNode) -> Iterator[dict[str, Any]]:
    """A namespace watched by a Helm-installed operator (its image, on the real node), the S3 Secret, the inputs."""
    ns = f"e2e-{uuid.uuid4().hex[:6]}"
    release_ns = f"e2e-ops-{uuid.uuid4().hex[:6]}"
    # A release name of its own: the chart's ClusterRole is named after the release.
    release = f"ftj-{uuid.uuid4().hex[:6]}"
    kube.kubectl("create", "namespace", ns)
    images = {which: real_node.image(which) for which in ("operator", "trainer")}
    install_operator(kube, real_node.scheduling(), release_ns, ns, release, images=images)
    create_s3_secret(kube, ns, minio)
    inputs = stage_inputs(minio, BUCKET)
    yield {"ns": ns, "inputs": inputs}
    kube.helm("uninstall", release, "--namespace", release_ns, "--wait", check=False)
    for namespace in (ns, release_ns):
        kube.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def submit(
    kube: Kube,
    minio: MinIO,
    node: RealNode,
    e2e: dict[str, Any],
    name: str,
    resources: dict[str, Any] | None = None,
    run_policy: dict[str, Any] | None = None,
    **training: Any,
) -> None:
    """Apply the demo job on the real node, a short run: small batches, every step logged, no eval until the end."""
    manifest = demo_manifest(
        name,
        e2e["inputs"],
        minio,
        BUCKET,
        node.scheduling(),
        s3_endpoint=node.s3_endpoint,
        cpu=REAL_NODE_CPU,
        **{"batchSizePerDevice": 16, "loggingSteps": 1, "evalStrategy": "no", "loadBestModelAtEnd": False, **training},
    )
    manifest["spec"]["resources"].update(resources or {})
    manifest["spec"]["runPolicy"] = run_policy or {}
    kube.kubectl("apply", "-n", e2e["ns"], "-f", "-", input=manifest)


def wait_until(what: str, fn: Callable[[], T | None], timeout: float = 600, interval: float = 1.0) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


def checkpoints_in_s3(minio: MinIO, ns: str, name: str) -> list[int]:
    """Steps of the complete checkpoints (those with a manifest) of the job in MinIO."""
    pages = minio.client().get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=f"runs/{ns}/{name}/")
    keys = [o["Key"] for page in pages for o in page.get("Contents", [])]
    return sorted(int(m.group(1)) for k in keys if (m := re.search(r"/checkpoint-(\d+)/manifest\.json$", k)))


def pods(kube: Kube, ns: str, job: str, index: int | None = None) -> list[dict[str, Any]]:
    """The job's trainer pods (of one completion index), oldest first."""
    selector = [f"finetune.dev/job={job}"]
    if index is not None:
        selector.append(f"batch.kubernetes.io/job-completion-index={index}")
    items = kube.kubectl_json("get", "pods", "-n", ns, "-l", ",".join(selector))["items"]
    return sorted(items, key=lambda p: p["metadata"]["creationTimestamp"] + p["metadata"]["name"])


def running(kube: Kube, ns: str, job: str, index: int, exclude: set[str]) -> dict[str, Any] | None:
    """The pod of this index whose container runs, not one of ``exclude``."""
    for pod in pods(kube, ns, job, index):
        statuses = pod["status"].get("containerStatuses") or [{}]
        if pod["metadata"]["name"] not in exclude and "running" in (statuses[0].get("state") or {}):
            return pod
    return None


def logs(kube: Kube, ns: str, pod: str) -> str:
    return kube.kubectl("logs", "-n", ns, pod, check=False).stdout


def ended(kube: Kube, ns: str, pod: str) -> dict[str, Any] | None:
    """The pod's terminated container state, once it has one."""
    got = kube.kubectl("get", "pod", pod, "-n", ns, "-o", "json", check=False)
    if got.returncode != 0:
        return None
    statuses = json.loads(got.stdout)["status"].get("containerStatuses") or [{}]
    terminated = (statuses[0].get("state") or {}).get("terminated")
    return dict(terminated) if terminated else None


def resumed_step(log: str) -> int:
    match = RESUMED.search(log)
    assert match, f"the attempt did not resume from a checkpoint in S3:\n{log[-3000:]}"
    return int(match.group(2))


def resumed_pod0(kube: Kube, ns: str, job: str, exclude: set[str]) -> tuple[str, int] | None:
    """The newest pod 0 (not one of ``exclude``) that resumed from S3, and the step it resumed at."""
    for pod in reversed(pods(kube, ns, job, 0)):
        name = pod["metadata"]["name"]
        if name not in exclude and (match := RESUMED.search(logs(kube, ns, name))):
            return name, int(match.group(2))
    return None


def test_a_job_survives_a_crash_and_a_graceful_delete_resuming_from_s3_and_succeeds(
    kube: Kube, minio: MinIO, real_node: RealNode, e2e: dict[str, Any]
) -> None:
    ns, name = e2e["ns"], "disrupted"
    run_policy = {"backoffLimit": 8}  # each disruption fails both pods of the attempt
    submit(
        kube,
        minio,
        real_node,
        e2e,
        name,
        run_policy=run_policy,
        maxSteps=MAX_STEPS,
        saveStrategy="steps",
        saveSteps=EVERY,
    )
    seen: list[dict[str, Any]] = []

    def watching(fn: Callable[[], T | None]) -> Callable[[], T | None]:
        """fn, noting the job's status each time (the progress shown while it runs)."""

        def poll() -> T | None:
            seen.append(kube.kubectl_json("get", "ftj", name, "-n", ns).get("status") or {})
            return fn()

        return poll

    # 1. A crash: once a checkpoint is in S3, SIGKILL rank 1's container through containerd.
    first_pod0 = wait_until("pod 0", lambda: running(kube, ns, name, 0, set()))["metadata"]["name"]
    first_saved = wait_until("a checkpoint in S3", watching(lambda: checkpoints_in_s3(minio, ns, name)))[-1]
    victim = running(kube, ns, name, 1, set())
    assert victim is not None
    real_node.kill_container(victim["status"]["containerStatuses"][0]["containerID"].removeprefix("containerd://"))
    wait_until("attempt 1's pod 0 to end", lambda: ended(kube, ns, first_pod0), timeout=180)
    trained_first = len(STEP_LOG.findall(logs(kube, ns, first_pod0)))  # steps 1..trained_first

    # The replacement pods resume from the newest complete checkpoint in S3.
    second_pod0, resumed_second_step = wait_until(
        "attempt 2 to resume", lambda: resumed_pod0(kube, ns, name, {first_pod0}), interval=2
    )
    assert first_saved <= resumed_second_step <= trained_first
    assert trained_first - resumed_second_step <= EVERY  # retrained: less than one save interval

    # 2. A graceful delete (SIGTERM, 30 s grace) of rank 1 once attempt 2 has trained two steps.
    wait_until("attempt 2 to train", watching(lambda: len(STEP_LOG.findall(logs(kube, ns, second_pod0))) >= 2))
    second_pod1 = running(kube, ns, name, 1, {victim["metadata"]["name"]})
    assert second_pod1 is not None
    kube.kubectl("delete", "pod", second_pod1["metadata"]["name"], "-n", ns, "--grace-period=30", "--wait=false")
    stopped = wait_until("attempt 2's pod 0 to end", lambda: ended(kube, ns, second_pod0), timeout=120)
    second_log = logs(kube, ns, second_pod0)
    saving = STOPPING.search(second_log)
    assert saving, second_log[-3000:]
    saved_at = int(saving.group(1))
    trained_second = resumed_second_step + len(STEP_LOG.findall(second_log))
    assert saved_at == trained_second  # the checkpoint is of the last step trained
    assert f"checkpoint-{saved_at} uploaded to s3://" in second_log  # before the pod exited
    assert stopped["exitCode"] == 75 and "training stopped on SIGTERM" in stopped.get("message", "")
    assert saved_at in checkpoints_in_s3(minio, ns, name)

    # 3. The last attempt resumes from the SIGTERM's checkpoint and finishes.
    final = watch_job(kube, ns, name, timeout=900, on_status=seen.append)
    status = final["status"]
    last_pod0 = pods(kube, ns, name, 0)[-1]["metadata"]["name"]
    last_log = logs(kube, ns, last_pod0)
    assert status["phase"] == "Succeeded", json.dumps(status, indent=2) + last_log[-4000:]
    assert resumed_step(last_log) == saved_at  # nothing retrained after a graceful stop
    assert saved_at + len(STEP_LOG.findall(last_log)) == MAX_STEPS
    assert status["restarts"] >= 2

    # What the job reports.
    steps = sorted({s["progress"]["step"] for s in seen if s.get("progress") and s.get("phase") == "Running"})
    assert len(steps) >= 2 and steps[0] < MAX_STEPS, f"progress did not move while running: {steps}"
    assert status["progress"]["step"] == MAX_STEPS and status["progress"]["percent"] == 100.0
    assert status["metrics"]["eval_accuracy"] > 0.5
    assert status["parameters"]["trainable"] < status["parameters"]["total"]
    artifacts = status["artifacts"]
    assert artifacts["model"].startswith(f"s3://{BUCKET}/") and artifacts["latestCheckpoint"]
    client = minio.client()
    final_manifest = json.loads(
        client.get_object(Bucket=BUCKET, Key=artifacts["model"].removeprefix(f"s3://{BUCKET}/") + "manifest.json")[
            "Body"
        ].read()
    )
    assert final_manifest["resumedFrom"]["globalStep"] == saved_at and final_manifest["globalStep"] == MAX_STEPS
    assert "adapter_model.safetensors" in final_manifest["files"]
    table = kube.kubectl("get", "ftj", name, "-n", ns).stdout
    assert "Succeeded" in table and "2x0" in table

    # The last attempt's pods ran the trainer image as containers on the real node, read-only root included.
    done = [p for p in pods(kube, ns, name) if p["status"]["phase"] == "Succeeded"]
    assert sorted(p["metadata"]["labels"]["batch.kubernetes.io/job-completion-index"] for p in done) == ["0", "1"]
    for pod in done:
        assert pod["spec"]["nodeName"] == real_node.name
        (container,) = pod["spec"]["containers"]
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        (state,) = pod["status"]["containerStatuses"]
        assert state["imageID"] and state["containerID"].startswith("containerd://")
        assert state["image"].endswith(real_node.images["trainer"].split("/", 1)[1])

    # `kubectl finetune logs --all` reads the same logs from the kubelet, each line under its rank.
    argv = ["--kubeconfig", str(kube.kubeconfig), "logs", name, "-n", ns, "--all"]
    plugin = subprocess.run(
        [sys.executable, "-m", "kubectl_finetune", *argv],
        capture_output=True,
        text=True,
        env=kube.env,
        timeout=120,
    )
    assert plugin.returncode == 0, plugin.stderr
    by_rank: dict[str, list[str]] = {}
    for line in plugin.stdout.splitlines():
        rank, _, rest = line.partition("] ")
        by_rank.setdefault(rank + "]", []).append(rest)
    assert sorted(by_rank) == ["[rank 0]", "[rank 1]"], plugin.stdout[-2000:]
    assert by_rank["[rank 0]"] == last_log.splitlines()  # the newest rank-0 pod's log, line for line


def test_a_memory_limit_too_small_fails_the_job_saying_so(
    kube: Kube, minio: MinIO, real_node: RealNode, e2e: dict[str, Any]
) -> None:
    ns, name = e2e["ns"], "oom"
    resources = {"nodes": 1, "memory": "400Mi", "shmSize": "64Mi"}
    submit(kube, minio, real_node, e2e, name, resources=resources, run_policy={"backoffLimit": 0}, maxSteps=4)
    final = watch_job(kube, ns, name, timeout=300)
    status = final["status"]
    (pod,) = pods(kube, ns, name)
    terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert terminated["reason"] == "OOMKilled" and terminated["exitCode"] == 137, terminated
    assert status["phase"] == "Failed", json.dumps(status, indent=2)
    message = status["message"]
    assert message.startswith("BackoffLimitExceeded: "), message
    assert "OOMKilled (exit code 137): out of memory" in message and "limit of 400Mi" in message, message
    assert "raise spec.resources.memory" in message, message
    # The chart's default preflight pod ran (on the real node, by the chart's preflight.nodeSelector) and passed.
    job = kube.kubectl_json("get", "job", name, "-n", ns)
    assert job["metadata"]["annotations"]["finetune.dev/preflight"] == "passed", job["metadata"]
