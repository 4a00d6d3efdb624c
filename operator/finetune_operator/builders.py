"""Pure functions from a FineTuneJob to the Kubernetes objects that run it.

Nothing here talks to the API server: every function takes the parent's identity, its
validated spec and the operator settings, and returns plain manifests (dicts). The
handlers create what is missing; golden tests pin the output.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import yaml

from finetune_api.contract import (
    API_GROUP,
    API_GROUP_VERSION,
    COMPLETION_INDEX_ANNOTATION,
    CONFIG_DIR,
    DEEPSPEED_CONFIG_FILE,
    ENV_HF_HOME,
    ENV_HF_TOKEN,
    ENV_JOB_NAME,
    ENV_JOB_NAMESPACE,
    ENV_NODE_RANK,
    ENV_S3_ACCESS_KEY_ID,
    ENV_S3_ENDPOINT,
    ENV_S3_REGION,
    ENV_S3_SECRET_ACCESS_KEY,
    ENV_WORLD_SIZE,
    HF_HOME_DIR,
    INSTANCE_LABEL,
    JOB_CONFIG_FILE,
    JOB_LABEL,
    KIND,
    KUEUE_QUEUE_LABEL,
    LAUNCH_MODULE,
    MANAGED_BY_LABEL,
    NAME_LABEL,
    OPERATOR_APP,
    OUTPUT_DIR,
    PERMANENT_EXIT_CODES,
    PLURAL,
    RETRYABLE_EXIT_CODES,
    STATUS_SUBRESOURCE,
    TRAINER_APP,
    TRAINER_CONTAINER,
    TRAINER_MODULE,
    WORKSPACE,
)
from finetune_api.distributed import Rendezvous, deepspeed_config, resolve_strategy, torchrun_command, world_size
from finetune_api.spec import FineTuneJobSpec, wire
from finetune_operator.settings import OperatorSettings
from finetune_operator.updates import GENERATION_ANNOTATION, TEMPLATE_HASH_ANNOTATION, template_hash

GPU_RESOURCE = "nvidia.com/gpu"  # the extended resource of NVIDIA's device plugin
TMP_DIR = "/tmp"  # an emptyDir: the trainer's root filesystem is read-only


@dataclass(frozen=True)
class Parent:
    """Identity of the FineTuneJob that owns the rendered objects."""

    name: str
    namespace: str
    uid: str
    generation: int = 1  # metadata.generation of the spec the children are rendered from

    def owner_reference(self) -> dict[str, Any]:
        return {
            "apiVersion": API_GROUP_VERSION,
            "kind": KIND,
            "name": self.name,
            "uid": self.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }


def labels(parent: Parent, settings: OperatorSettings) -> dict[str, str]:
    """Labels every child carries; the operator finds children (and their pods) by them."""
    return {
        **settings.extra_labels,
        NAME_LABEL: TRAINER_APP,
        MANAGED_BY_LABEL: OPERATOR_APP,
        INSTANCE_LABEL: parent.name,
        JOB_LABEL: parent.name,
    }


def _metadata(name: str, parent: Parent, settings: OperatorSettings) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": parent.namespace,
        "labels": labels(parent, settings),
        "ownerReferences": [parent.owner_reference()],
    }


def child_names(parent: Parent) -> dict[str, str]:
    """Names of the children: deterministic, so a restarted operator finds what exists."""
    return {
        "config": f"{parent.name}-config",
        "service": parent.name,  # pods resolve as <job>-<index>.<service>
        "job": parent.name,
        "serviceAccount": f"{parent.name}-trainer",
        "role": f"{parent.name}-trainer",
    }


def build_config_map(parent: Parent, spec: FineTuneJobSpec, settings: OperatorSettings) -> dict[str, Any]:
    """The resolved spec (every default filled) the trainer reads, plus generated configs."""
    manifest = {
        "apiVersion": API_GROUP_VERSION,
        "kind": KIND,
        "metadata": {"name": parent.name, "namespace": parent.namespace},
        "spec": wire(spec),
    }
    # libyaml's emitter where PyYAML has it: the same text, a tenth of the CPU time.
    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    data = {JOB_CONFIG_FILE: yaml.dump(manifest, Dumper=dumper, sort_keys=False)}
    if resolve_strategy(spec) == "deepspeed":
        # For people reading the ConfigMap: the trainer builds the same config from the same spec
        # (finetune_api.distributed), filling the precision once it knows the GPU.
        data[DEEPSPEED_CONFIG_FILE] = json.dumps(deepspeed_config(spec), indent=2, sort_keys=True)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(child_names(parent)["config"], parent, settings),
        "data": data,
    }


def build_service(parent: Parent, settings: OperatorSettings) -> dict[str, Any]:
    """Headless Service giving each pod a stable DNS name for the torchrun rendezvous (several nodes only)."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(child_names(parent)["service"], parent, settings),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,  # pod 0 must resolve before it is Ready
            "selector": {JOB_LABEL: parent.name},
            "ports": [{"name": "rendezvous", "port": settings.master_port, "targetPort": settings.master_port}],
        },
    }


def build_rbac(parent: Parent, settings: OperatorSettings) -> list[dict[str, Any]]:
    """ServiceAccount, Role and RoleBinding letting the pods patch their own job's status only."""
    names = child_names(parent)
    return [
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": _metadata(names["serviceAccount"], parent, settings),
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": _metadata(names["role"], parent, settings),
            "rules": [
                {
                    "apiGroups": [API_GROUP],
                    "resources": [STATUS_SUBRESOURCE],
                    "resourceNames": [parent.name],
                    "verbs": ["get", "patch"],
                },
                {
                    "apiGroups": [API_GROUP],
                    "resources": [PLURAL],
                    "resourceNames": [parent.name],
                    "verbs": ["get"],
                },
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": _metadata(names["role"], parent, settings),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": names["role"]},
            "subjects": [{"kind": "ServiceAccount", "name": names["serviceAccount"], "namespace": parent.namespace}],
        },
    ]


def launcher_args(parent: Parent, spec: FineTuneJobSpec, settings: OperatorSettings) -> list[str]:
    """torchrun options and the trainer program; pod 0 is the rendezvous store via the headless Service."""
    names = child_names(parent)
    program = ["-m", TRAINER_MODULE, "run", f"--config={CONFIG_DIR}/{JOB_CONFIG_FILE}", f"--output-dir={OUTPUT_DIR}"]
    rendezvous = None
    if spec.resources.nodes > 1:
        rendezvous = Rendezvous(
            master_addr=f"{names['job']}-0.{names['service']}",
            master_port=settings.master_port,
            node_rank=f"$({ENV_NODE_RANK})",  # Kubernetes expands it from the env below
        )
    return torchrun_command(spec, program, rendezvous)[1:]  # [0] is the launcher, the container command


def _env(parent: Parent, spec: FineTuneJobSpec, settings: OperatorSettings) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [
        {
            "name": ENV_NODE_RANK,
            "valueFrom": {"fieldRef": {"fieldPath": f"metadata.annotations['{COMPLETION_INDEX_ANNOTATION}']"}},
        },
        {"name": ENV_JOB_NAME, "value": parent.name},
        {"name": ENV_JOB_NAMESPACE, "value": parent.namespace},
        {"name": ENV_WORLD_SIZE, "value": str(world_size(spec))},
        {"name": ENV_HF_HOME, "value": HF_HOME_DIR},
        {"name": "HOME", "value": TMP_DIR},  # ~/.cache, ~/.triton: the root filesystem is read-only
        {"name": "PYTHONUNBUFFERED", "value": "1"},
    ]
    if spec.model.token_secret_ref is not None:
        ref = spec.model.token_secret_ref
        env.append({"name": ENV_HF_TOKEN, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}})
    s3 = spec.output.s3
    endpoint = (s3.endpoint if s3 else None) or settings.default_s3_endpoint
    if endpoint:
        env.append({"name": ENV_S3_ENDPOINT, "value": endpoint})
    if s3 is not None:
        env.append({"name": ENV_S3_REGION, "value": s3.region})
    creds = s3.credentials_secret_ref if s3 else None
    secret = creds.name if creds else settings.default_s3_credentials_secret
    if secret:
        id_key = creds.access_key_id_key if creds else ENV_S3_ACCESS_KEY_ID
        key_key = creds.secret_access_key_key if creds else ENV_S3_SECRET_ACCESS_KEY
        env.append({"name": ENV_S3_ACCESS_KEY_ID, "valueFrom": {"secretKeyRef": {"name": secret, "key": id_key}}})
        env.append({"name": ENV_S3_SECRET_ACCESS_KEY, "valueFrom": {"secretKeyRef": {"name": secret, "key": key_key}}})
    return env


def _resources(spec: FineTuneJobSpec) -> dict[str, Any]:
    r = spec.resources
    amounts: dict[str, Any] = {"cpu": r.cpu, "memory": r.memory}
    if r.gpus_per_node > 0:
        amounts[GPU_RESOURCE] = str(r.gpus_per_node)
    return {"requests": dict(amounts), "limits": dict(amounts)}


def _volumes(parent: Parent, spec: FineTuneJobSpec) -> list[dict[str, Any]]:
    workspace: dict[str, Any] = (
        {"persistentVolumeClaim": {"claimName": spec.resources.volume_claim_name}}
        if spec.resources.volume_claim_name
        else {"emptyDir": {}}
    )
    return [
        {"name": "config", "configMap": {"name": child_names(parent)["config"]}},
        {"name": "workspace", **workspace},
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": spec.resources.shm_size}},
        {"name": "tmp", "emptyDir": {}},
    ]


def _pod_metadata(parent: Parent, spec: FineTuneJobSpec, settings: OperatorSettings) -> dict[str, Any]:
    meta: dict[str, Any] = {"labels": {**spec.resources.pod_labels, **labels(parent, settings)}}
    if spec.resources.pod_annotations:
        meta["annotations"] = dict(spec.resources.pod_annotations)
    return meta


def pod_failure_policy() -> dict[str, Any]:
    """What the Job does when a trainer pod fails, by the trainer's exit code (finetune_api.contract)."""

    def on_codes(action: str, codes: tuple[int, ...]) -> dict[str, Any]:
        return {
            "action": action,
            "onExitCodes": {"containerName": TRAINER_CONTAINER, "operator": "In", "values": list(codes)},
        }

    return {
        "rules": [
            # Preemption, node drain, eviction: not the job's fault, do not count it.
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
            # The trainer said the spec or the data is wrong: retrying cannot help.
            on_codes("FailJob", PERMANENT_EXIT_CODES),
            # A transient failure outlasted the trainer's own retries: run the pod again, within
            # backoffLimit, resuming from the last checkpoint (what any other failure gets too).
            on_codes("Count", RETRYABLE_EXIT_CODES),
        ]
    }


def build_job(parent: Parent, spec: FineTuneJobSpec, settings: OperatorSettings) -> dict[str, Any]:
    """The Indexed batch/v1 Job: one pod per node, each running torchrun over its GPUs."""
    names = child_names(parent)
    r = spec.resources
    rp = spec.run_policy
    job_labels = labels(parent, settings)
    if rp.queue_name:
        job_labels[KUEUE_QUEUE_LABEL] = rp.queue_name
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",  # podFailurePolicy needs it; the Job recreates failed pods
        "serviceAccountName": names["serviceAccount"],
        # Time for the SIGTERM checkpoint and its upload (finetune_trainer/preemption.py).
        "terminationGracePeriodSeconds": rp.termination_grace_period_seconds,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": settings.run_as_user,
            "runAsGroup": settings.run_as_user,
            "fsGroup": settings.run_as_user,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [
            {
                "name": TRAINER_CONTAINER,
                "image": r.image or settings.trainer_image,
                "imagePullPolicy": settings.image_pull_policy,
                # torchrun, keeping the trainer's exit code (finetune_trainer/launch.py).
                "command": ["python", "-m", LAUNCH_MODULE],
                "args": launcher_args(parent, spec, settings),
                "env": _env(parent, spec, settings),
                "ports": [{"name": "rendezvous", "containerPort": settings.master_port}],
                "resources": _resources(spec),
                "securityContext": {
                    "allowPrivilegeEscalation": False,
                    "readOnlyRootFilesystem": True,  # writable: /workspace, /tmp, /dev/shm
                    "capabilities": {"drop": ["ALL"]},
                },
                # The trainer writes why it failed to the termination log; if it could not (a crash),
                # the last lines of its log stand in, so the reason reaches the pod's status and the
                # FineTuneJob's Restarted event.
                "terminationMessagePolicy": "FallbackToLogsOnError",
                "volumeMounts": [
                    {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
                    {"name": "workspace", "mountPath": WORKSPACE},
                    {"name": "dshm", "mountPath": "/dev/shm"},
                    {"name": "tmp", "mountPath": TMP_DIR},
                ],
            }
        ],
        "volumes": _volumes(parent, spec),
    }
    if r.nodes > 1:
        pod_spec["subdomain"] = names["service"]
    if r.node_selector:
        pod_spec["nodeSelector"] = dict(r.node_selector)
    if r.tolerations:
        pod_spec["tolerations"] = [wire(t) for t in r.tolerations]
    if r.priority_class_name:
        pod_spec["priorityClassName"] = r.priority_class_name
    job_spec: dict[str, Any] = {
        "completionMode": "Indexed",
        "completions": r.nodes,
        "parallelism": r.nodes,
        "backoffLimit": rp.backoff_limit,
        "suspend": rp.suspend,
        "podFailurePolicy": pod_failure_policy(),
        "template": {"metadata": _pod_metadata(parent, spec, settings), "spec": pod_spec},
    }
    if rp.active_deadline_seconds is not None:
        job_spec["activeDeadlineSeconds"] = rp.active_deadline_seconds
    if rp.ttl_seconds_after_finished is not None:
        job_spec["ttlSecondsAfterFinished"] = rp.ttl_seconds_after_finished
    annotations = {
        GENERATION_ANNOTATION: str(parent.generation),
        TEMPLATE_HASH_ANNOTATION: template_hash(job_spec["template"]),
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {**_metadata(names["job"], parent, settings), "labels": job_labels, "annotations": annotations},
        "spec": job_spec,
    }


def build_children(parent: Parent, spec: FineTuneJobSpec, settings: OperatorSettings) -> list[dict[str, Any]]:
    """Every object a FineTuneJob needs, the Job last: its pods need the others.

    A single-node job has no Service: its one pod is its own rendezvous (localhost).
    """
    service = [build_service(parent, settings)] if spec.resources.nodes > 1 else []
    return [
        build_config_map(parent, spec, settings),
        *service,
        *build_rbac(parent, settings),
        build_job(parent, spec, settings),
    ]
