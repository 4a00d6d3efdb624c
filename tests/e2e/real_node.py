"""The real node of the local cluster (tests/cluster/node.sh) and the project's images in its containerd.

One real node per machine (it owns the CNI bridge and the iptables rules): whoever uses it holds
``/run/ftj-node.lock`` for the whole session, so test sessions of several checkouts take turns.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.cluster.fixture import Kube

ROOT = Path(__file__).resolve().parents[2]
NODE_SH = ROOT / "tests" / "cluster" / "node.sh"
IMAGES_SH = ROOT / "scripts" / "images.sh"
LOCK = Path("/run/ftj-node.lock")
REAL_NODE_TAINT = "ftj.dev/real-node"  # tests/cluster/node.sh registers the node with it (NoSchedule)
PODMAN_ENV = {**os.environ, "CONTAINERS_CONF": str(ROOT / "scripts" / "containers.conf")}


@dataclass(frozen=True)
class RealNode:
    name: str
    s3_endpoint: str  # MinIO as the pods reach it
    images: dict[str, str]  # "trainer" / "operator" -> reference in the node's containerd
    containerd: str  # the node's containerd socket

    def kill_container(self, container_id: str) -> None:
        """SIGKILL a container's processes through containerd, as a crash would end them."""
        subprocess.run(
            ["ctr", "--address", self.containerd, "--namespace", "k8s.io", "tasks", "kill", "--all",
             "--signal", "SIGKILL", container_id],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip

    def scheduling(self) -> dict[str, Any]:
        """nodeSelector and tolerations that put a pod on this node.

        The node registers with the NoSchedule taint REAL_NODE_TAINT, so pods of the tests that
        expect KWOK nodes (a Deployment, a Helm release) are never scheduled onto it by chance.
        """
        toleration = {"key": REAL_NODE_TAINT, "operator": "Equal", "value": "true", "effect": "NoSchedule"}
        return {"nodeSelector": {"kubernetes.io/hostname": self.name}, "tolerations": [toleration]}

    def image(self, which: str) -> dict[str, str]:
        """Chart values (repository, tag, pullPolicy Never) of one imported image."""
        repository, tag = self.images[which].rsplit(":", 1)
        return {"repository": repository, "tag": tag, "pullPolicy": "Never"}


def build_image(which: str) -> str:
    """Build one image (scripts/images.sh, cached) and tag it by content: localhost/kube-finetune/NAME:ID."""
    done = subprocess.run([str(IMAGES_SH), which], capture_output=True, text=True, timeout=3600, env=PODMAN_ENV)
    if done.returncode != 0:
        raise RuntimeError(f"scripts/images.sh {which} failed:\n{done.stderr[-5000:]}")
    image_id = done.stdout.strip().splitlines()[-1].split()[1]
    ref = f"localhost/kube-finetune/{which}:{image_id}"
    subprocess.run(["podman", "tag", image_id, ref], check=True, env=PODMAN_ENV, capture_output=True)
    return ref


def start_node(env: dict[str, str], images: list[str]) -> RealNode:
    """Start (or reuse) the real node of the cluster in ``env`` and import the images into it."""
    refs = {which: build_image(which) for which in images}
    done = subprocess.run([str(NODE_SH)], capture_output=True, text=True, timeout=1800, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"tests/cluster/node.sh failed:\n{done.stderr[-5000:]}")
    values = dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)
    imported = subprocess.run(
        [str(NODE_SH), "import", *refs.values()], capture_output=True, text=True, timeout=1800, env=env
    )
    if imported.returncode != 0:
        raise RuntimeError(f"tests/cluster/node.sh import failed:\n{imported.stderr[-5000:]}")
    return RealNode(values["FTJ_NODE_NAME"], values["FTJ_NODE_S3_ENDPOINT"], refs, values["FTJ_NODE_CONTAINERD"])


@contextlib.contextmanager
def hold_node_lock(timeout: float = 3600) -> Iterator[None]:
    """Hold the machine's real-node lock (blocking, up to ``timeout`` seconds)."""
    with LOCK.open("w") as handle:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"another test session held {LOCK} for {timeout:.0f} s") from None
                time.sleep(2)
        yield


def wait_pod_done(kube: Kube, namespace: str, name: str, timeout: float) -> dict[str, Any]:
    """Poll a pod until it Succeeded or Failed."""
    deadline = time.monotonic() + timeout
    pod: dict[str, Any] = {}
    while time.monotonic() < deadline:
        pod = kube.kubectl_json("get", "pod", name, "-n", namespace)
        if pod.get("status", {}).get("phase") in ("Succeeded", "Failed"):
            return pod
        time.sleep(1)
    raise TimeoutError(f"pod {namespace}/{name} not done after {timeout:.0f} s: {pod.get('status')}")
