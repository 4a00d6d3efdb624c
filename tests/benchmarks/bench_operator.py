"""Benchmark: submit N FineTuneJobs at once onto KWOK GPU nodes and time the operator.

Prints p50/p99 of apply -> trainer Job created and apply -> all of a job's pods scheduled,
the operator's CPU time (until it goes idle: all the work the jobs caused) and peak RSS,
and the machine's load average. With ``--baseline REF`` it runs the operator of that git
commit too, in alternating rounds, and prints both side by side. Needs the local control
plane:

    tests/cluster/up.sh
    .venv/bin/python tests/benchmarks/bench_operator.py --jobs 100 --baseline a0ed99c --rounds 2
"""

from __future__ import annotations

import argparse
import copy
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from kubernetes import client, config, watch  # noqa: E402

from tests.cluster.fixture import Kube, read_env_file, run_dir  # noqa: E402
from tests.integration.operator_process import OperatorProcess, install_crds  # noqa: E402
from tests.invalid_specs import BASE  # noqa: E402

PODS_PER_JOB = 1  # spec.resources.nodes of every submitted job


@dataclass
class Result:
    label: str
    jobs: int
    created: list[float]
    scheduled: list[float]
    cpu_seconds: float
    rss_bytes: int
    load: tuple[float, float]  # 1-minute load average before and after the round
    submit_seconds: float  # how long the benchmark took to create all the FineTuneJobs

    def row(self) -> str:
        c, s = self.created, self.scheduled

        def pct(values: list[float], q: float) -> str:
            return f"{percentile(values, q):6.2f}" if values else "   n/a"

        return (
            f"| {self.label} | {len(c)}/{self.jobs} | {self.submit_seconds:.1f} s | {pct(c, 0.5)} / {pct(c, 0.99)} s | "
            f"{pct(s, 0.5)} / {pct(s, 0.99)} s | {self.cpu_seconds:.1f} s "
            f"({1000 * self.cpu_seconds / self.jobs:.0f} ms/job) | {self.rss_bytes / 2**20:.0f} MiB | "
            f"{self.load[0]:.1f} -> {self.load[1]:.1f} |"
        )


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
    nodes: list[dict[str, Any]] = []
    for i in range(count):
        name = f"{prefix}-{i}"
        nodes.append(
            {
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
        )
    kube.kubectl("apply", "-f", "-", input={"apiVersion": "v1", "kind": "List", "items": nodes})
    return [n["metadata"]["name"] for n in nodes]


def proc_usage(pid: int) -> tuple[float, int]:
    """CPU seconds (user+system) and peak RSS in bytes of a live process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    hwm = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("VmHWM"))
    return cpu, int(hwm.split()[1]) * 1024


def export_operator(ref: str, dest: Path) -> dict[str, str]:
    """The operator and API packages of a git commit, as the PYTHONPATH that runs them."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", ref, "api", "operator"], capture_output=True, check=True
    )
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    return {"PYTHONPATH": os.pathsep.join([str(dest / "api"), str(dest / "operator"), str(ROOT)])}


def run_round(kube: Kube, label: str, jobs: int, timeout: float, env: dict[str, str]) -> Result:
    ns = f"test-bench-{uuid.uuid4().hex[:6]}"
    kube.kubectl("create", "namespace", ns)
    nodes = add_gpu_nodes(kube, (jobs * PODS_PER_JOB + 7) // 8, f"kwok-bench-{uuid.uuid4().hex[:4]}")
    config.load_kube_config(str(kube.kubeconfig))
    api = client.CustomObjectsApi()
    job_created: dict[str, float] = {}
    pods_scheduled: dict[str, set[str]] = {}
    all_scheduled: dict[str, float] = {}
    stop = threading.Event()

    def watch_jobs() -> None:
        w = watch.Watch()
        for ev in w.stream(client.BatchV1Api().list_namespaced_job, ns, timeout_seconds=int(timeout) + 60):
            job_created.setdefault(ev["object"].metadata.name, time.monotonic())
            if stop.is_set():
                w.stop()

    def watch_pods() -> None:
        w = watch.Watch()
        for ev in w.stream(client.CoreV1Api().list_namespaced_pod, ns, timeout_seconds=int(timeout) + 60):
            pod = ev["object"]
            owner = (pod.metadata.labels or {}).get("finetune.dev/job")
            if owner and pod.spec.node_name:
                pods_scheduled.setdefault(owner, set()).add(pod.metadata.name)
                if len(pods_scheduled[owner]) >= PODS_PER_JOB:
                    all_scheduled.setdefault(owner, time.monotonic())
            if stop.is_set():
                w.stop()

    spec = copy.deepcopy(BASE)
    spec["resources"] = {
        "nodes": PODS_PER_JOB,
        "gpusPerNode": 1,
        "cpu": "100m",
        "memory": "128Mi",
        "podAnnotations": {"kwok.ftj.test/delay": "3600s"},
    }
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        operator = OperatorProcess(kube, Path(tmp) / "operator.log", [f"--namespace={ns}", "--standalone"], **env)
        operator.start()
        assert operator.proc is not None
        cpu0, _ = proc_usage(operator.proc.pid)
        for target in (watch_jobs, watch_pods):
            threading.Thread(target=target, daemon=True).start()
        time.sleep(1)
        submitted: dict[str, float] = {}
        submit_start = time.monotonic()
        for i in range(jobs):
            name = f"bench-{i:04d}"
            body = {"apiVersion": "finetune.dev/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": name}}
            submitted[name] = time.monotonic()
            api.create_namespaced_custom_object("finetune.dev", "v1alpha1", ns, "finetunejobs", {**body, "spec": spec})
        submit_seconds = time.monotonic() - submit_start
        deadline = time.monotonic() + timeout
        while len(all_scheduled) < jobs and time.monotonic() < deadline:
            time.sleep(0.5)
        # Count all the work the jobs caused: wait until the operator has been idle for 3 s.
        last, idle_since = proc_usage(operator.proc.pid)[0], time.monotonic()
        while time.monotonic() - idle_since < 3 and time.monotonic() < deadline + 60:
            time.sleep(1)
            cpu = proc_usage(operator.proc.pid)[0]
            if cpu - last > 0.05:
                idle_since = time.monotonic()
            last = cpu
        cpu1, rss = proc_usage(operator.proc.pid)
        stop.set()
        operator.stop()
    load_after = os.getloadavg()[0]
    kube.kubectl("delete", "namespace", ns, "--wait=false", check=False)
    kube.kubectl("delete", "node", *nodes, "--wait=false", check=False)
    return Result(
        label=label,
        jobs=jobs,
        created=[job_created[n] - t for n, t in submitted.items() if n in job_created],
        scheduled=[all_scheduled[n] - t for n, t in submitted.items() if n in all_scheduled],
        cpu_seconds=cpu1 - cpu0,
        rss_bytes=rss,
        load=(load_before, load_after),
        submit_seconds=submit_seconds,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument("--baseline", help="git commit whose operator runs too, for a before/after comparison")
    parser.add_argument("--rounds", type=int, default=1, help="rounds per operator, alternating")
    args = parser.parse_args()

    kube = kube_from_env()
    install_crds(kube)
    results: list[Result] = []
    with tempfile.TemporaryDirectory() as tmp:
        operators: list[tuple[str, dict[str, str]]] = []
        if args.baseline:
            operators.append((f"baseline {args.baseline}", export_operator(args.baseline, Path(tmp))))
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
        operators.append((f"this tree ({head.stdout.strip()})", {}))
        for _ in range(args.rounds):
            for label, env in operators:
                results.append(run_round(kube, label, args.jobs, args.timeout, env))
                print(results[-1].row(), flush=True)
    print()
    print(f"{args.jobs} jobs of {PODS_PER_JOB} pod x 1 GPU, created one after another; {os.cpu_count()} CPUs")
    print(
        "| operator | Jobs created | all applied in | apply -> Job created p50 / p99 | "
        "apply -> pods scheduled p50 / p99 | operator CPU | peak RSS | load avg (1 min) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for result in results:
        print(result.row())
    return 0 if all(len(r.scheduled) == r.jobs for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
