"""Checks only the operator can make, before the GPU Job exists: what the pods will refer to must exist.

The CRD schema and the typed models judge the spec alone; these look at the cluster. They read the
references from the rendered trainer Job itself (every Secret key its env takes, the PVC it mounts,
the image pull secrets, its PriorityClass and Kueue queue), so the check covers exactly what the
pods would need, and name the spec field each came from. A failed check stalls the job with the
field path and the fix instead of leaving pods stuck in Pending or CreateContainerConfigError while
they hold GPUs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from finetune_api.contract import ENV_HF_TOKEN, ENV_S3_ACCESS_KEY_ID, ENV_S3_SECRET_ACCESS_KEY, KUEUE_QUEUE_LABEL
from finetune_api.spec import FineTuneJobSpec

# Which spec field each secret-backed env variable of the trainer comes from.
SECRET_FIELDS = {
    ENV_HF_TOKEN: "spec.model.tokenSecretRef",
    ENV_S3_ACCESS_KEY_ID: "spec.output.s3.credentialsSecretRef",
    ENV_S3_SECRET_ACCESS_KEY: "spec.output.s3.credentialsSecretRef",
}


@dataclass(frozen=True)
class ClusterView:
    """Read-only lookups in the job's namespace (and cluster-scoped PriorityClasses)."""

    secret_keys: Callable[[str], set[str] | None]  # keys of a Secret, None when it does not exist
    pvc_exists: Callable[[str], bool]
    local_queue_exists: Callable[[str], bool]
    priority_class_exists: Callable[[str], bool]


def _pod_spec(job: Mapping[str, Any]) -> Mapping[str, Any]:
    return job["spec"]["template"]["spec"]


def _secret_refs(job: Mapping[str, Any]) -> Iterator[tuple[str, str, str]]:
    """(env name, Secret, key) for every secretKeyRef of the Job's containers."""
    pod = _pod_spec(job)
    for container in [*pod.get("initContainers", []), *pod.get("containers", [])]:
        for env in container.get("env", []):
            ref = (env.get("valueFrom") or {}).get("secretKeyRef")
            if ref:
                yield env["name"], ref["name"], ref["key"]


def _secret_field(spec: FineTuneJobSpec, env: str) -> str:
    field = SECRET_FIELDS.get(env, f"the trainer's env {env}")
    if env in (ENV_S3_ACCESS_KEY_ID, ENV_S3_SECRET_ACCESS_KEY) and not (
        spec.output.s3 and spec.output.s3.credentials_secret_ref
    ):
        return "the operator's default S3 credentials Secret (Helm value s3.credentialsSecret)"
    return field


def preflight_problems(
    spec: FineTuneJobSpec, namespace: str, job: Mapping[str, Any], cluster: ClusterView
) -> list[str]:
    """Problems with what the rendered trainer ``job`` refers to, as 'path: what and how to fix' lines."""
    problems: list[str] = []
    wanted: dict[str, tuple[str, list[str]]] = {}  # Secret -> (spec field, keys the pods take from it)
    for env, secret, key in _secret_refs(job):
        field, keys = wanted.setdefault(secret, (_secret_field(spec, env), []))
        if key not in keys:
            keys.append(key)
    for secret, (field, keys) in wanted.items():
        have = cluster.secret_keys(secret)
        if have is None:
            literals = " ".join(f"--from-literal={k}=..." for k in keys)
            problems.append(
                f"{field}: Secret {secret!r} not found in namespace {namespace!r}; create it "
                f"(kubectl create secret generic {secret} {literals}) or name an existing one"
            )
        elif missing := [k for k in keys if k not in have]:
            listed = ", ".join(sorted(have)) or "none"
            problems.append(
                f"{field}: Secret {secret!r} has no key {', '.join(map(repr, missing))} (it has: {listed}); "
                "add the key or name the right one"
            )
    pod = _pod_spec(job)
    for volume in pod.get("volumes", []):
        claim = (volume.get("persistentVolumeClaim") or {}).get("claimName")
        if claim and not cluster.pvc_exists(claim):
            problems.append(
                f"spec.resources.volumeClaimName: PersistentVolumeClaim {claim!r} not found in namespace "
                f"{namespace!r}; create it or remove the field to use an emptyDir"
            )
    for pull in pod.get("imagePullSecrets", []):
        if cluster.secret_keys(pull["name"]) is None:
            problems.append(
                f"imagePullSecrets: Secret {pull['name']!r} for pulling the trainer image not found in namespace "
                f"{namespace!r}; create it or change the operator's Helm values"
            )
    priority = pod.get("priorityClassName")
    if priority and not cluster.priority_class_exists(priority):
        problems.append(
            f"spec.resources.priorityClassName: PriorityClass {priority!r} does not exist; "
            "list them with kubectl get priorityclasses"
        )
    queue = (job["metadata"].get("labels") or {}).get(KUEUE_QUEUE_LABEL)
    if queue and not cluster.local_queue_exists(queue):
        problems.append(
            f"spec.runPolicy.queueName: Kueue LocalQueue {queue!r} not found in namespace {namespace!r} (or Kueue is "
            "not installed); create the LocalQueue or remove queueName"
        )
    return problems
