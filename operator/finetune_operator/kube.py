"""The operator's few calls to the API server, on the official Python client.

Responses are read as plain JSON (``_preload_content=False``): the operator works on dicts,
and skipping the client's model classes saves most of the CPU time of a call. Children are
created with create-if-missing (409 means it exists), so reconciling twice, or after a
restart, never duplicates anything.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from finetune_api.contract import API_GROUP, API_VERSION, PLURAL
from finetune_api.kube_client import load_kube_config

MERGE_PATCH = "application/merge-patch+json"
# Enough connections for the handler threads plus the parallel creates, so that none is
# opened (and TLS-handshaken) per call and thrown away.
POOL_SIZE = 64
_parallel = ThreadPoolExecutor(max_workers=16, thread_name_prefix="kube")


@functools.cache
def api_client() -> client.ApiClient:
    """An API client from the in-cluster service account, or from KUBECONFIG outside a cluster."""
    cfg = client.Configuration()
    load_kube_config(cfg)
    cfg.connection_pool_maxsize = POOL_SIZE
    return client.ApiClient(cfg)


def _json(response: Any) -> dict[str, Any]:
    return dict(json.loads(_read(response)))


def _read(response: Any) -> bytes:
    # Reading the whole body hands the connection back to the pool; an unread response would
    # keep it until garbage collection, and the next call would open (and TLS-handshake) another.
    return bytes(response.data)


def _core() -> client.CoreV1Api:
    return client.CoreV1Api(api_client())


def _rbac() -> client.RbacAuthorizationV1Api:
    return client.RbacAuthorizationV1Api(api_client())


def _batch() -> client.BatchV1Api:
    return client.BatchV1Api(api_client())


def _custom() -> client.CustomObjectsApi:
    return client.CustomObjectsApi(api_client())


_CREATE: dict[str, Callable[[str, dict[str, Any]], Any]] = {
    "ConfigMap": lambda ns, body: _core().create_namespaced_config_map(ns, body, _preload_content=False),
    "Service": lambda ns, body: _core().create_namespaced_service(ns, body, _preload_content=False),
    "ServiceAccount": lambda ns, body: _core().create_namespaced_service_account(ns, body, _preload_content=False),
    "Role": lambda ns, body: _rbac().create_namespaced_role(ns, body, _preload_content=False),
    "RoleBinding": lambda ns, body: _rbac().create_namespaced_role_binding(ns, body, _preload_content=False),
    "Job": lambda ns, body: _batch().create_namespaced_job(ns, body, _preload_content=False),
    "Pod": lambda ns, body: _core().create_namespaced_pod(ns, body, _preload_content=False),
}


def create(manifest: dict[str, Any]) -> dict[str, Any] | None:
    """Create the object; return it, or None when one of that name exists already."""
    try:
        return _json(_CREATE[manifest["kind"]](manifest["metadata"]["namespace"], manifest))
    except ApiException as err:
        if err.status != 409:
            raise
    return None


def create_all(manifests: list[dict[str, Any]]) -> list[bool]:
    """Create independent objects in parallel (existing ones are left alone); which were created."""
    results = list(_parallel.map(create, manifests))
    return [r is not None for r in results]


def _absent_is_none(call: Callable[[], Any]) -> dict[str, Any] | None:
    try:
        return _json(call())
    except ApiException as err:
        if err.status == 404:
            return None
        raise


def read_job(namespace: str, name: str) -> dict[str, Any] | None:
    """The batch/v1 Job, or None when it does not exist."""
    return _absent_is_none(lambda: _batch().read_namespaced_job(name, namespace, _preload_content=False))


def replace_job(job: dict[str, Any]) -> dict[str, Any]:
    """PUT the Job (its resourceVersion guards against a concurrent change: 409 then)."""
    meta = job["metadata"]
    return _json(_batch().replace_namespaced_job(meta["name"], meta["namespace"], job, _preload_content=False))


def patch_job(namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
    """Merge-patch the Job."""
    return _json(
        _batch().patch_namespaced_job(name, namespace, patch, _content_type=MERGE_PATCH, _preload_content=False)
    )


def delete_job(namespace: str, name: str, uid: str) -> None:
    """Delete this Job (by uid, so never a newer one of the same name); its pods go by garbage collection."""
    body = {"propagationPolicy": "Background", "preconditions": {"uid": uid}}
    try:
        _read(_batch().delete_namespaced_job(name, namespace, body=body, _preload_content=False))
    except ApiException as err:
        if err.status not in (404, 409):
            raise


def read_config_map(namespace: str, name: str) -> dict[str, Any] | None:
    """The ConfigMap, or None when it does not exist."""
    return _absent_is_none(lambda: _core().read_namespaced_config_map(name, namespace, _preload_content=False))


def patch_config_map(namespace: str, name: str, patch: dict[str, Any]) -> None:
    """Merge-patch a ConfigMap."""
    _read(
        _core().patch_namespaced_config_map(name, namespace, patch, _content_type=MERGE_PATCH, _preload_content=False)
    )


def list_pods(namespace: str, selector: str) -> list[dict[str, Any]]:
    """Pods matching a label selector."""
    out = _json(_core().list_namespaced_pod(namespace, label_selector=selector, _preload_content=False))
    return list(out.get("items") or [])


def read_pod(namespace: str, name: str) -> dict[str, Any] | None:
    """The Pod, or None when it does not exist."""
    return _absent_is_none(lambda: _core().read_namespaced_pod(name, namespace, _preload_content=False))


def delete_pod(namespace: str, name: str) -> None:
    """Delete a Pod now (gone already is fine)."""
    try:
        _core().delete_namespaced_pod(name, namespace, grace_period_seconds=0)
    except ApiException as err:
        if err.status != 404:
            raise


def list_nodes() -> list[dict[str, Any]]:
    """Every Node (labels, taints and allocatable decide where a job can land)."""
    return list(_json(_core().list_node(_preload_content=False)).get("items") or [])


def pvc_exists(namespace: str, name: str) -> bool:
    """Whether a PersistentVolumeClaim of that name exists."""
    call = lambda: _core().read_namespaced_persistent_volume_claim(name, namespace, _preload_content=False)  # noqa: E731
    return _absent_is_none(call) is not None


def secret_keys(namespace: str, name: str) -> set[str] | None:
    """The keys of a Secret (its values are not kept), or None when it does not exist."""
    try:
        secret = _core().read_namespaced_secret(name, namespace)
    except ApiException as err:
        if err.status == 404:
            return None
        raise
    return set(secret.data or {}) | set(secret.string_data or {})


def local_queue_exists(namespace: str, name: str) -> bool:
    """Whether a Kueue LocalQueue of that name exists (False also when Kueue is not installed)."""
    try:
        client.CustomObjectsApi(api_client()).get_namespaced_custom_object(
            "kueue.x-k8s.io", "v1beta1", namespace, "localqueues", name
        )
    except ApiException as err:
        if err.status == 404:
            return False
        raise
    return True


def priority_class_exists(name: str) -> bool:
    """Whether a PriorityClass of that name exists."""
    try:
        client.SchedulingV1Api(api_client()).read_priority_class(name)
    except ApiException as err:
        if err.status == 404:
            return False
        raise
    return True


def read_finetunejob(namespace: str, name: str) -> dict[str, Any] | None:
    """The FineTuneJob object, or None when it is gone."""
    return _absent_is_none(
        lambda: _custom().get_namespaced_custom_object(
            API_GROUP, API_VERSION, namespace, PLURAL, name, _preload_content=False
        )
    )


def patch_status(namespace: str, name: str, status: dict[str, Any]) -> None:
    """Merge-patch the status subresource (fields not named are left as they are)."""
    response = _custom().patch_namespaced_custom_object_status(
        API_GROUP,
        API_VERSION,
        namespace,
        PLURAL,
        name,
        {"status": status},
        _content_type=MERGE_PATCH,
        _preload_content=False,
    )
    _read(response)
