"""The real node: a kubelet built from the pinned release, containerd + runc, CNI, CoreDNS, kube-proxy.

It reports this machine's CPU and memory and no GPU, beside the KWOK GPU nodes, and runs the
trainer image as a container, as the operator's pods run it: non-root, read-only root
filesystem, /workspace and /dev/shm as emptyDirs; ``kubectl logs`` shows the training log.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cluster.fixture import Kube
from tests.e2e.real_node import REAL_NODE_TAINT, ROOT, RealNode, wait_pod_done
from tests.trainer import tiny

pytestmark = [pytest.mark.cluster, pytest.mark.containers]


def mem_total_bytes() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no MemTotal in /proc/meminfo")


def quantity_bytes(q: str) -> int:
    units = {"Ki": 1024, "Mi": 1024**2, "Gi": 1024**3}
    for suffix, factor in units.items():
        if q.endswith(suffix):
            return int(q[: -len(suffix)]) * factor
    return int(q)


def test_node_reports_this_machines_cpu_and_memory_and_no_gpu(kube: Kube, real_node: RealNode) -> None:
    node = kube.kubectl_json("get", "node", real_node.name)
    capacity = node["status"]["capacity"]
    assert int(capacity["cpu"]) == os.cpu_count()
    assert abs(quantity_bytes(capacity["memory"]) - mem_total_bytes()) < 64 * 1024**2
    assert "nvidia.com/gpu" not in capacity
    ready = {c["type"]: c["status"] for c in node["status"]["conditions"]}
    assert ready["Ready"] == "True"
    assert node["status"]["nodeInfo"]["containerRuntimeVersion"].startswith("containerd://")
    assert node["status"]["nodeInfo"]["kubeletVersion"] == kube.env["FTJ_KUBERNETES_VERSION"]
    # Only pods that tolerate it land here: other tests' Deployments and releases stay on KWOK nodes.
    assert {"key": REAL_NODE_TAINT, "value": "true", "effect": "NoSchedule"} in node["spec"].get("taints", [])
    # The KWOK GPU nodes stay for the scheduling tests.
    kwok = kube.kubectl_json("get", "nodes", "-l", "type=kwok")["items"]
    assert len(kwok) == int(kube.env["FTJ_KWOK_GPU_NODES"])


def test_no_image_import_leaves_the_registry_lock_held(real_node: RealNode) -> None:
    """The node's daemons must not inherit the import lock (they held it for ever on a fresh machine)."""
    lock = Path(os.environ.get("FTJ_NODE_REGISTRY_ROOT", "/var/lib/kube-finetune/registry")) / "lock"
    holders = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if str(lock) in [os.readlink(fd) for fd in (proc / "fd").iterdir()]:
                holders.append((proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
        except OSError:  # gone, or not ours to read
            continue
    assert holders == []
    if lock.exists():
        with lock.open("w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)  # BlockingIOError if anything holds it


@pytest.fixture
def job_dir() -> Iterator[Path]:
    """A folder the trainer's uid can read through a hostPath volume (pytest's tmp dirs are 0700)."""
    path = ROOT / ".cache" / "e2e" / uuid.uuid4().hex[:8]
    path.mkdir(parents=True)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def trainer_pod(name: str, image: str, node: RealNode, job: Path, args: list[str]) -> dict[str, Any]:
    """A pod shaped like the operator's trainer pod, with the job's files on a read-only hostPath."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": "Never",
            **node.scheduling(),  # nodeSelector and the real node's toleration
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": 1000,
                "runAsGroup": 1000,
                "fsGroup": 1000,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [
                {
                    "name": "trainer",
                    "image": image,
                    "imagePullPolicy": "Never",
                    "args": args,
                    "env": [{"name": "HF_HUB_OFFLINE", "value": "1"}, {"name": "HF_DATASETS_OFFLINE", "value": "1"}],
                    "resources": {"limits": {"cpu": "2", "memory": "3Gi"}},
                    "securityContext": {
                        "allowPrivilegeEscalation": False,
                        "readOnlyRootFilesystem": True,
                        "capabilities": {"drop": ["ALL"]},
                    },
                    "volumeMounts": [
                        {"name": "job", "mountPath": "/job", "readOnly": True},
                        {"name": "workspace", "mountPath": "/workspace"},
                        {"name": "dshm", "mountPath": "/dev/shm"},
                    ],
                }
            ],
            "volumes": [
                {"name": "job", "hostPath": {"path": str(job), "type": "Directory"}},
                {"name": "workspace", "emptyDir": {}},
                {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "512Mi"}},
            ],
        },
    }


@pytest.mark.slow
def test_trainer_image_trains_in_a_pod_on_the_real_node(
    kube: Kube, kube_namespace: str, real_node: RealNode, job_dir: Path
) -> None:
    tiny.build_tiny_bert(job_dir / "model")
    tiny.write_jsonl(job_dir / "train.jsonl", tiny.sentiment_rows(48))
    spec = tiny.spec_dict(
        Path("/job/model"),
        {"type": "sequence-classification", "labels": ["neg", "pos"]},
        {"train": "/job/train.jsonl"},
        maxSteps=6,
        evalStrategy="no",
        saveStrategy="no",
        loadBestModelAtEnd=False,
    )
    doc = {"apiVersion": "finetune.dev/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": "t"}, "spec": spec}
    (job_dir / "job.yaml").write_text(yaml.safe_dump(doc))
    for path in [job_dir, *job_dir.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)

    args = [
        "--standalone",
        "--nproc-per-node=1",
        "-m",
        "finetune_trainer",
        "run",
        "--config",
        "/job/job.yaml",
        "--output-dir",
        "/workspace/out",
    ]
    pod = trainer_pod("tiny-train", real_node.images["trainer"], real_node, job_dir, args)
    kube.kubectl("apply", "-n", kube_namespace, "-f", "-", input=pod)
    done = wait_pod_done(kube, kube_namespace, "tiny-train", timeout=900)
    logs = kube.kubectl("logs", "-n", kube_namespace, "tiny-train").stdout
    assert done["status"]["phase"] == "Succeeded", logs[-4000:]
    assert done["spec"]["nodeName"] == real_node.name
    metrics = json.loads(logs.strip().splitlines()[-1])
    assert metrics["global_step"] == 6
    assert "finetune_trainer" in logs or "loss" in logs
    state = done["status"]["containerStatuses"][0]["state"]["terminated"]
    assert state["exitCode"] == 0 and state["containerID"].startswith("containerd://")
