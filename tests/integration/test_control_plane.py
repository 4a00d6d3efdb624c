"""The local test cluster is real: API server, controllers, scheduler, RBAC, S3 and Helm.

Each test pins one behaviour that a mock would not have.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import ssl
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cluster.fixture import CommandError, Kube, MinIO

pytestmark = pytest.mark.cluster

TESTDATA = Path(__file__).resolve().parent.parent / "cluster" / "testdata"
MiB = 1024 * 1024


def wait_until(what: str, check: Callable[[], bool], timeout: float = 60, interval: float = 0.25) -> None:
    """Poll ``check`` until it returns True; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def test_server_reports_the_pinned_release_and_kwok_gpu_nodes(kube: Kube) -> None:
    version = json.loads(kube.kubectl("version", "-o", "json").stdout)["serverVersion"]
    assert version["gitVersion"] == kube.env["FTJ_KUBERNETES_VERSION"]

    nodes = kube.kubectl_json("get", "nodes", "-l", "type=kwok")["items"]
    assert len(nodes) == kube.gpu_nodes
    for node in nodes:
        assert node["metadata"]["annotations"]["kwok.x-k8s.io/node"] == "fake"
        assert node["metadata"]["labels"]["nvidia.com/gpu.product"] == "NVIDIA-H100-80GB-HBM3"
        assert node["status"]["allocatable"]["nvidia.com/gpu"] == "8"
        ready = next(c for c in node["status"]["conditions"] if c["type"] == "Ready")
        assert ready["status"] == "True"


@pytest.fixture
def widget_crd(kube: Kube) -> Iterator[str]:
    """The test Widget CRD under a group of its own; yields the resource name to use with kubectl."""
    crd = yaml.safe_load((TESTDATA / "widget-crd.yaml").read_text())
    group = f"t{uuid.uuid4().hex[:8]}.test.ftj.dev"
    crd["spec"]["group"] = group
    crd["metadata"]["name"] = f"widgets.{group}"
    kube.kubectl("apply", "-f", "-", input=crd)
    kube.kubectl("wait", "--for=condition=Established", f"crd/widgets.{group}", "--timeout=30s")
    yield f"widgets.{group}"
    kube.kubectl("delete", "crd", f"widgets.{group}", "--wait=false", check=False)


def widget(resource: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    group = resource.split(".", 1)[1]
    return {"apiVersion": f"{group}/v1", "kind": "Widget", "metadata": {"name": name}, "spec": spec}


def test_crd_schema_refuses_invalid_object_with_api_server_error(
    kube: Kube, widget_crd: str, kube_namespace: str
) -> None:
    bad = widget(widget_crd, "bad", {"replicas": 0, "size": "medium"})
    result = kube.kubectl("apply", "-n", kube_namespace, "-f", "-", input=bad, check=False)

    assert result.returncode != 0
    assert 'The Widget "bad" is invalid' in result.stderr
    assert "spec.replicas: Invalid value: 0: spec.replicas in body should be greater than or equal to 1" in (
        result.stderr
    )
    assert 'spec.size: Unsupported value: "medium": supported values: "small", "large"' in result.stderr
    assert kube.kubectl("get", widget_crd, "bad", "-n", kube_namespace, check=False).returncode != 0


def test_crd_accepts_valid_object_and_serves_status_subresource(
    kube: Kube, widget_crd: str, kube_namespace: str
) -> None:
    kube.kubectl(
        "apply", "-n", kube_namespace, "-f", "-", input=widget(widget_crd, "good", {"replicas": 2, "size": "small"})
    )

    kube.kubectl(
        "patch",
        widget_crd,
        "good",
        "-n",
        kube_namespace,
        "--subresource=status",
        "--type=merge",
        "-p",
        '{"status": {"phase": "Ready"}}',
    )
    # With a status subresource, writes to the main resource ignore status.
    kube.kubectl(
        "patch",
        widget_crd,
        "good",
        "-n",
        kube_namespace,
        "--type=merge",
        "-p",
        '{"spec": {"replicas": 3}, "status": {"phase": "Overwritten"}}',
    )

    obj = kube.kubectl_json("get", widget_crd, "good", "-n", kube_namespace)
    assert obj["status"] == {"phase": "Ready"}
    assert obj["spec"] == {"replicas": 3, "size": "small"}
    assert obj["metadata"]["generation"] == 2


def gpu_job(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "completionMode": "Indexed",
            "completions": 2,
            "parallelism": 2,
            "backoffLimit": 0,
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [
                        {
                            "name": "trainer",
                            "image": "registry.local/ftj/trainer:test",
                            "command": ["python", "-m", "train"],
                            "resources": {"limits": {"nvidia.com/gpu": "1", "cpu": "1", "memory": "1Gi"}},
                        }
                    ],
                }
            },
        },
    }


def test_indexed_gpu_job_runs_on_kwok_nodes_completes_and_is_garbage_collected(kube: Kube, kube_namespace: str) -> None:
    ns = kube_namespace
    kube.kubectl("apply", "-n", ns, "-f", "-", input=gpu_job("train"))

    kube.kubectl("wait", "-n", ns, "--for=condition=Complete", "job/train", "--timeout=60s")

    job = kube.kubectl_json("get", "job", "train", "-n", ns)
    assert job["status"]["succeeded"] == 2
    assert job["status"]["completedIndexes"] == "0,1"
    pods = kube.kubectl_json("get", "pods", "-n", ns, "-l", "batch.kubernetes.io/job-name=train")["items"]
    assert len(pods) == 2
    assert {p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"] for p in pods} == {"0", "1"}
    for pod in pods:
        assert pod["spec"]["nodeName"].startswith("kwok-gpu-")
        assert pod["status"]["phase"] == "Succeeded"
        assert pod["spec"]["containers"][0]["resources"]["requests"]["nvidia.com/gpu"] == "1"

    kube.kubectl("delete", "job", "train", "-n", ns, "--cascade=background")

    def pods_gone() -> bool:
        left = kube.kubectl_json("get", "pods", "-n", ns, "-l", "batch.kubernetes.io/job-name=train")
        return not left["items"]

    wait_until("the garbage collector to delete the Job's pods", pods_gone)


def test_kwok_fails_job_pod_annotated_to_fail_with_its_exit_code(kube: Kube, kube_namespace: str) -> None:
    job = gpu_job("doomed")
    job["spec"]["completions"] = job["spec"]["parallelism"] = 1
    job["spec"]["template"]["metadata"] = {
        "annotations": {"kwok.ftj.test/result": "Failed", "kwok.ftj.test/exit-code": "3"}
    }
    kube.kubectl("apply", "-n", kube_namespace, "-f", "-", input=job)

    kube.kubectl("wait", "-n", kube_namespace, "--for=condition=Failed", "job/doomed", "--timeout=60s")

    failed = kube.kubectl_json("get", "job", "doomed", "-n", kube_namespace)["status"]
    assert failed["failed"] == 1
    [pod] = kube.kubectl_json("get", "pods", "-n", kube_namespace, "-l", "batch.kubernetes.io/job-name=doomed")["items"]
    assert pod["status"]["phase"] == "Failed"
    assert pod["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 3


def test_kwok_leaves_nodes_without_its_annotation_and_their_pods_alone(kube: Kube, kube_namespace: str) -> None:
    ns = kube_namespace
    agent_node = f"agent-{uuid.uuid4().hex[:8]}"
    node = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": agent_node, "labels": {"type": "test-agent"}},
        "spec": {"taints": [{"key": "ftj.test/agent", "effect": "NoSchedule"}]},
    }
    kube.kubectl("apply", "-f", "-", input=node)
    try:

        def pod(name: str, node_name: str) -> dict[str, Any]:
            return {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": name},
                "spec": {"nodeName": node_name, "containers": [{"name": "c", "image": "registry.local/x:1"}]},
            }

        kube.kubectl("apply", "-n", ns, "-f", "-", input=pod("on-agent", agent_node))
        kube.kubectl("apply", "-n", ns, "-f", "-", input=pod("on-kwok", "kwok-gpu-0"))

        kube.kubectl("wait", "-n", ns, "--for=condition=Ready", "pod/on-kwok", "--timeout=30s")
        time.sleep(2)  # KWOK is live (it just ran on-kwok); give it time to wrongly touch the other pod

        unmanaged = kube.kubectl_json("get", "pod", "on-agent", "-n", ns)["status"]
        assert unmanaged["phase"] == "Pending"
        assert "containerStatuses" not in unmanaged
        conditions = kube.kubectl_json("get", "node", agent_node)["status"].get("conditions", [])
        assert not any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)
        kube.kubectl("delete", "pod", "on-agent", "-n", ns, "--grace-period=0", "--force")
    finally:
        kube.kubectl("delete", "node", agent_node, "--wait=false", check=False)


def test_scheduler_leaves_pod_pending_when_no_node_has_enough_gpus(kube: Kube, kube_namespace: str) -> None:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "too-big"},
        "spec": {
            "containers": [
                {"name": "c", "image": "registry.local/x:1", "resources": {"limits": {"nvidia.com/gpu": "9"}}}
            ]
        },
    }
    kube.kubectl("apply", "-n", kube_namespace, "-f", "-", input=pod)

    def unschedulable() -> bool:
        status = kube.kubectl_json("get", "pod", "too-big", "-n", kube_namespace)["status"]
        return any(
            c["type"] == "PodScheduled" and c.get("reason") == "Unschedulable" for c in status.get("conditions", [])
        )

    wait_until("the scheduler to mark the pod Unschedulable", unschedulable, timeout=30)
    status = kube.kubectl_json("get", "pod", "too-big", "-n", kube_namespace)["status"]
    message = next(c["message"] for c in status["conditions"] if c["type"] == "PodScheduled")
    assert "Insufficient nvidia.com/gpu" in message
    assert status["phase"] == "Pending"


def test_deployment_becomes_available_on_kwok_nodes(kube: Kube, kube_namespace: str) -> None:
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "web", "image": "registry.local/web:1"}]},
            },
        },
    }
    kube.kubectl("apply", "-n", kube_namespace, "-f", "-", input=deployment)

    kube.kubectl("wait", "-n", kube_namespace, "--for=condition=Available", "deployment/web", "--timeout=60s")

    status = kube.kubectl_json("get", "deployment", "web", "-n", kube_namespace)["status"]
    assert status["readyReplicas"] == 2
    assert status["availableReplicas"] == 2


def api_get(kube: Kube, path: str, token: str) -> int:
    """GET an API path with a bearer token; return the HTTP status code."""
    request = urllib.request.Request(f"{kube.server}{path}", headers={"Authorization": f"Bearer {token}"})
    context = ssl.create_default_context(cafile=str(kube.ca_file))
    try:
        with urllib.request.urlopen(request, context=context, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return error.code


def kubectl_with_token(kube: Kube, token: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """kubectl authenticated by ``token`` alone (no admin kubeconfig)."""
    env = {k: v for k, v in kube.env.items() if k != "KUBECONFIG"}
    argv = [
        kube.kubectl_path,
        "--kubeconfig=/dev/null",
        f"--server={kube.server}",
        f"--certificate-authority={kube.ca_file}",
        f"--token={token}",
        *args,
    ]
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise CommandError(proc.returncode, argv, proc.stdout, proc.stderr)
    return proc


def test_service_account_token_is_authorized_only_by_its_role(kube: Kube, kube_namespace: str) -> None:
    ns = kube_namespace
    kube.kubectl("create", "serviceaccount", "reader", "-n", ns)
    kube.kubectl("create", "configmap", "allowed", "-n", ns, "--from-literal=k=v")
    kube.kubectl("create", "configmap", "other", "-n", ns, "--from-literal=k=v")
    kube.kubectl(
        "create", "role", "read-allowed", "-n", ns, "--verb=get", "--resource=configmaps", "--resource-name=allowed"
    )
    kube.kubectl("create", "rolebinding", "reader", "-n", ns, "--role=read-allowed", f"--serviceaccount={ns}:reader")
    token = kube.kubectl("create", "token", "reader", "-n", ns, "--duration=10m").stdout.strip()
    allowed_path = f"/api/v1/namespaces/{ns}/configmaps/allowed"
    # The RBAC authorizer reads bindings from an informer cache: wait until it has the new one.
    wait_until("the RoleBinding to take effect", lambda: api_get(kube, allowed_path, token) == 200, timeout=15)

    whoami = json.loads(kubectl_with_token(kube, token, "auth", "whoami", "-o", "json").stdout)
    assert whoami["status"]["userInfo"]["username"] == f"system:serviceaccount:{ns}:reader"
    got = kubectl_with_token(kube, token, "get", "configmap", "allowed", "-n", ns, "-o", "json")
    assert json.loads(got.stdout)["data"] == {"k": "v"}

    refused = kubectl_with_token(kube, token, "get", "configmap", "other", "-n", ns, check=False)
    assert refused.returncode != 0
    assert (
        f'configmaps "other" is forbidden: User "system:serviceaccount:{ns}:reader" cannot get resource "configmaps"'
        in refused.stderr
    )
    assert api_get(kube, f"/api/v1/namespaces/{ns}/configmaps/other", token) == 403
    assert api_get(kube, f"/api/v1/namespaces/{ns}/configmaps", token) == 403  # list is not granted either
    assert api_get(kube, allowed_path, token[:-8] + "AAAAAAAA") == 401  # a forged signature does not authenticate


def test_token_controller_fills_legacy_service_account_token_secret(kube: Kube, kube_namespace: str) -> None:
    ns = kube_namespace
    kube.kubectl("create", "serviceaccount", "legacy", "-n", ns)
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/service-account-token",
        "metadata": {"name": "legacy-token", "annotations": {"kubernetes.io/service-account.name": "legacy"}},
    }
    kube.kubectl("apply", "-n", ns, "-f", "-", input=secret)

    def token_filled() -> bool:
        data = kube.kubectl_json("get", "secret", "legacy-token", "-n", ns).get("data") or {}
        return "token" in data and "ca.crt" in data

    wait_until("the token controller to fill the Secret", token_filled, timeout=30)
    data = kube.kubectl_json("get", "secret", "legacy-token", "-n", ns)["data"]
    token = base64.b64decode(data["token"]).decode()
    assert base64.b64decode(data["ca.crt"]).decode() == kube.ca_file.read_text()
    whoami = json.loads(kubectl_with_token(kube, token, "auth", "whoami", "-o", "json").stdout)
    assert whoami["status"]["userInfo"]["username"] == f"system:serviceaccount:{ns}:legacy"


def test_deleting_a_namespace_removes_it_and_its_contents(kube: Kube) -> None:
    name = f"doomed-{uuid.uuid4().hex[:8]}"
    kube.kubectl("create", "namespace", name)
    kube.kubectl("create", "configmap", "c", "-n", name, "--from-literal=k=v")

    kube.kubectl("delete", "namespace", name, "--wait=true", "--timeout=60s")

    assert kube.kubectl("get", "namespace", name, check=False).returncode != 0


@pytest.fixture
def bucket(minio: MinIO) -> Iterator[str]:
    name = f"test-{uuid.uuid4().hex[:8]}"
    s3 = minio.client()
    s3.create_bucket(Bucket=name)
    yield name
    for obj in s3.list_objects_v2(Bucket=name).get("Contents", []):
        s3.delete_object(Bucket=name, Key=obj["Key"])
    s3.delete_bucket(Bucket=name)


def test_minio_put_and_get_object(minio: MinIO, bucket: str) -> None:
    s3 = minio.client()
    s3.put_object(Bucket=bucket, Key="runs/a/hello.txt", Body=b"hello, s3")

    assert s3.get_object(Bucket=bucket, Key="runs/a/hello.txt")["Body"].read() == b"hello, s3"
    listed = s3.list_objects_v2(Bucket=bucket, Prefix="runs/a/")
    assert [o["Key"] for o in listed["Contents"]] == ["runs/a/hello.txt"]


def test_minio_multipart_upload_round_trips(minio: MinIO, bucket: str, tmp_path: Path) -> None:
    from boto3.s3.transfer import TransferConfig

    source = tmp_path / "checkpoint.bin"
    source.write_bytes(os.urandom(15 * MiB))
    config = TransferConfig(multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB, max_concurrency=2)
    s3 = minio.client()

    s3.upload_file(str(source), bucket, "ckpt/model.bin", Config=config)
    target = tmp_path / "downloaded.bin"
    s3.download_file(bucket, "ckpt/model.bin", str(target), Config=config)

    head = s3.head_object(Bucket=bucket, Key="ckpt/model.bin")
    assert head["ContentLength"] == 15 * MiB
    assert head["ETag"].strip('"').endswith("-3"), "expected a 3-part multipart upload"
    assert hashlib.sha256(target.read_bytes()).hexdigest() == hashlib.sha256(source.read_bytes()).hexdigest()


def test_helm_lints_installs_and_uninstalls_test_chart(kube: Kube, kube_namespace: str) -> None:
    chart = str(TESTDATA / "testchart")
    ns = kube_namespace

    lint = kube.helm("lint", chart)
    assert "1 chart(s) linted, 0 chart(s) failed" in lint.stdout

    kube.helm("install", "demo", chart, "-n", ns, "--set", "message=hi from helm", "--wait", "--timeout", "90s")

    releases = json.loads(kube.helm("list", "-n", ns, "-o", "json").stdout)
    assert [(r["name"], r["status"]) for r in releases] == [("demo", "deployed")]
    configmap = kube.kubectl_json("get", "configmap", "demo-greeting", "-n", ns)
    assert configmap["data"] == {"message": "hi from helm"}
    deployment = kube.kubectl_json("get", "deployment", "demo-web", "-n", ns)
    assert deployment["status"]["readyReplicas"] == 1

    kube.helm("uninstall", "demo", "-n", ns, "--wait", "--timeout", "60s")

    assert kube.kubectl("get", "configmap", "demo-greeting", "-n", ns, check=False).returncode != 0
    assert json.loads(kube.helm("list", "-n", ns, "-o", "json").stdout) == []
