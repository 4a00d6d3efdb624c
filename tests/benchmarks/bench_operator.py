"""Benchmark: submit N FineTuneJobs at once onto KWOK GPU nodes and time the operator.

Prints p50/p99 of apply -> trainer Job created and apply -> all of a job's pods scheduled,
and the operator's CPU time and peak RSS. Needs the local control plane:

    tests/cluster/up.sh
    .venv/bin/python tests/benchmarks/bench_operator.py --jobs 100
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from kubernetes import client, config, watch  # noqa: E402

from tests.cluster.fixture import Kube, read_env_file, run_dir  # noqa: E402
from tests.integration.operator_process import OperatorProcess, install_crds  # noqa: E402
from tests.invalid_specs import BASE  # noqa: E402

PODS_PER_JOB = 1  # spec.resources.nodes of every submitted job


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def kube_from_env() -> Kube:
    env = read_env_file(run_dir() / "cluster.env")
    return Kube(
        kubeconfig=Path(env["KUBECONFIG"]),
        server=env["FTJ_KUBE_APISERVER"],
        ca_file=Path(env["FTJ_CLUSTER_CA"]),
        kubectl_path=env["FTJ_KUBECTL"],
        helm_path=env["FTJ_HELM"],
        env={**env},
        gpu_nodes=int(env["FTJ_KWOK_GPU_NODES"]),
    )


def add_gpu_nodes(kube: Kube, count: int, prefix: str) -> list[str]:
    """Extra KWOK-managed 8-GPU nodes so every job's pod can be scheduled at once."""
    names = []
    for i in range(count):
        name = f"{prefix}-{i}"
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": name,
                "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
                "labels": {"type": "kwok", "kubernetes.io/hostname": name, "nvidia.com/gpu.present": "true"},
            },
            "status": {
                "allocatable": {"cpu": "64", "memory": "512Gi", "pods": "110", "nvidia.com/gpu": "8"},
                "capacity": {"cpu": "64", "memory": "512Gi", "pods": "110", "nvidia.com/gpu": "8"},
            },
        }
        kube.kubectl("apply", "-f", "-", input=node)
        names.append(name)
    return names


def proc_usage(pid: int) -> tuple[float, int]:
    """CPU seconds (user+system) and peak RSS in bytes of a live process."""
    import os

    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    hwm = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("VmHWM"))
    return cpu, int(hwm.split()[1]) * 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--timeout", type=float, default=300)
    args = parser.parse_args()

    kube = kube_from_env()
    install_crds(kube)
    ns = f"test-bench-{uuid.uuid4().hex[:6]}"
    kube.kubectl("create", "namespace", ns)
    nodes = add_gpu_nodes(kube, (args.jobs + 7) // 8, f"kwok-bench-{uuid.uuid4().hex[:4]}")
    config.load_kube_config(str(kube.kubeconfig))
    api = client.CustomObjectsApi()

    job_created: dict[str, float] = {}
    pods_scheduled: dict[str, set[str]] = {}
    all_scheduled: dict[str, float] = {}
    stop = threading.Event()

    def watch_jobs() -> None:
        w = watch.Watch()
        for ev in w.stream(client.BatchV1Api().list_namespaced_job, ns, timeout_seconds=int(args.timeout)):
            name = ev["object"].metadata.name
            job_created.setdefault(name, time.monotonic())
            if stop.is_set():
                w.stop()

    def watch_pods() -> None:
        w = watch.Watch()
        for ev in w.stream(client.CoreV1Api().list_namespaced_pod, ns, timeout_seconds=int(args.timeout)):
            pod = ev["object"]
            owner = (pod.metadata.labels or {}).get("finetune.dev/job")
            if owner and pod.spec.node_name:
                pods_scheduled.setdefault(owner, set()).add(pod.metadata.name)
                if len(pods_scheduled[owner]) >= PODS_PER_JOB:
                    all_scheduled.setdefault(owner, time.monotonic())
            if stop.is_set():
                w.stop()

    with tempfile.TemporaryDirectory() as tmp:
        operator = OperatorProcess(kube, Path(tmp) / "operator.log").start()
        assert operator.proc is not None
        cpu0, _ = proc_usage(operator.proc.pid)
        threads = [threading.Thread(target=f, daemon=True) for f in (watch_jobs, watch_pods)]
        for t in threads:
            t.start()
        time.sleep(1)

        submitted: dict[str, float] = {}
        spec = copy.deepcopy(BASE)
        spec["resources"] = {
            "nodes": PODS_PER_JOB,
            "gpusPerNode": 1,
            "cpu": "100m",
            "memory": "128Mi",
            "podAnnotations": {"kwok.ftj.test/delay": "600s"},
        }
        start = time.monotonic()
        for i in range(args.jobs):
            name = f"bench-{i:03d}"
            body: dict[str, Any] = {
                "apiVersion": "finetune.dev/v1alpha1",
                "kind": "FineTuneJob",
                "metadata": {"name": name},
                "spec": spec,
            }
            submitted[name] = time.monotonic()
            api.create_namespaced_custom_object("finetune.dev", "v1alpha1", ns, "finetunejobs", body)
        submit_seconds = time.monotonic() - start

        deadline = time.monotonic() + args.timeout
        while len(all_scheduled) < args.jobs and time.monotonic() < deadline:
            time.sleep(0.5)
        cpu1, rss = proc_usage(operator.proc.pid)
        stop.set()
        operator.stop()

    kube.kubectl("delete", "namespace", ns, "--wait=false", check=False)
    for node in nodes:
        kube.kubectl("delete", "node", node, "--wait=false", check=False)

    created = [job_created[n] - t for n, t in submitted.items() if n in job_created]
    scheduled = [all_scheduled[n] - t for n, t in submitted.items() if n in all_scheduled]
    print(f"jobs submitted: {args.jobs} in {submit_seconds:.1f} s (one create call each, sequential)")
    print(f"trainer Jobs created: {len(created)}/{args.jobs}; pods scheduled for {len(scheduled)}/{args.jobs} jobs")
    if created:
        print(
            f"apply -> Job created:         p50 {percentile(created, 0.5):6.2f} s   "
            f"p99 {percentile(created, 0.99):6.2f} s"
        )
    if scheduled:
        print(
            f"apply -> all pods scheduled:  p50 {percentile(scheduled, 0.5):6.2f} s   "
            f"p99 {percentile(scheduled, 0.99):6.2f} s   (mean {statistics.mean(scheduled):.2f} s)"
        )
    print(f"operator CPU time during the run: {cpu1 - cpu0:.1f} s; peak RSS {rss / 2**20:.0f} MiB")
    return 0 if len(scheduled) == args.jobs else 1


if __name__ == "__main__":
    raise SystemExit(main())
