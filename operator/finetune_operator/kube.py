"""The operator's few calls to the API server, on the official Python client.

Create-if-missing keeps reconciliation idempotent: a child that exists (by name) is read
back instead of created again, so a restarted operator never duplicates anything.
"""

from __future__ import annotations

import functools
import os
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from finetune_api.contract import API_GROUP, API_VERSION, PLURAL


@functools.cache
def api_client() -> client.ApiClient:
    """An API client from the in-cluster service account, or from KUBECONFIG outside a cluster."""
    try:
        config.load_incluster_config()
    except config.ConfigException:
        # Name the file: the client reads KUBECONFIG only once, when it is first imported.
        config.load_kube_config(config_file=os.environ.get("KUBECONFIG"))
    return client.ApiClient()


def _sanitize(obj: Any) -> dict[str, Any]:
    return api_client().sanitize_for_serialization(obj)


def create_or_get(manifest: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """Create the object unless one of that name exists; return (object, created)."""
    kind = manifest["kind"]
    ns = manifest["metadata"]["namespace"]
    name = manifest["metadata"]["name"]
    create, read = _CALLS[kind]
    try:
        return _sanitize(create(ns, manifest)), True
    except ApiException as err:
        if err.status != 409:
            raise
    return _sanitize(read(ns, name)), False


def _core() -> client.CoreV1Api:
    return client.CoreV1Api(api_client())


def _rbac() -> client.RbacAuthorizationV1Api:
    return client.RbacAuthorizationV1Api(api_client())


def _batch() -> client.BatchV1Api:
    return client.BatchV1Api(api_client())


_CALLS: dict[str, tuple[Any, Any]] = {
    "ConfigMap": (
        lambda ns, body: _core().create_namespaced_config_map(ns, body),
        lambda ns, name: _core().read_namespaced_config_map(name, ns),
    ),
    "Service": (
        lambda ns, body: _core().create_namespaced_service(ns, body),
        lambda ns, name: _core().read_namespaced_service(name, ns),
    ),
    "ServiceAccount": (
        lambda ns, body: _core().create_namespaced_service_account(ns, body),
        lambda ns, name: _core().read_namespaced_service_account(name, ns),
    ),
    "Role": (
        lambda ns, body: _rbac().create_namespaced_role(ns, body),
        lambda ns, name: _rbac().read_namespaced_role(name, ns),
    ),
    "RoleBinding": (
        lambda ns, body: _rbac().create_namespaced_role_binding(ns, body),
        lambda ns, name: _rbac().read_namespaced_role_binding(name, ns),
    ),
    "Job": (
        lambda ns, body: _batch().create_namespaced_job(ns, body),
        lambda ns, name: _batch().read_namespaced_job(name, ns),
    ),
}


def read_job(namespace: str, name: str) -> dict[str, Any] | None:
    """The batch/v1 Job, or None when it does not exist."""
    try:
        return _sanitize(_batch().read_namespaced_job(name, namespace))
    except ApiException as err:
        if err.status == 404:
            return None
        raise


def set_job_suspend(namespace: str, name: str, suspend: bool) -> None:
    """Suspend or resume the Job (Kubernetes deletes or recreates its pods)."""
    _batch().patch_namespaced_job(name, namespace, {"spec": {"suspend": suspend}})


def list_pods(namespace: str, selector: str) -> list[dict[str, Any]]:
    """Pods matching a label selector."""
    return [_sanitize(p) for p in _core().list_namespaced_pod(namespace, label_selector=selector).items]


def pvc_exists(namespace: str, name: str) -> bool:
    """Whether a PersistentVolumeClaim of that name exists."""
    try:
        _core().read_namespaced_persistent_volume_claim(name, namespace)
    except ApiException as err:
        if err.status == 404:
            return False
        raise
    return True


def read_finetunejob(namespace: str, name: str) -> dict[str, Any] | None:
    """The FineTuneJob object, or None when it is gone."""
    try:
        obj = client.CustomObjectsApi(api_client()).get_namespaced_custom_object(
            API_GROUP, API_VERSION, namespace, PLURAL, name
        )
    except ApiException as err:
        if err.status == 404:
            return None
        raise
    return dict(obj)


def patch_status(namespace: str, name: str, status: dict[str, Any]) -> None:
    """Merge-patch the status subresource (fields not named are left as they are)."""
    client.CustomObjectsApi(api_client()).patch_namespaced_custom_object_status(
        API_GROUP, API_VERSION, namespace, PLURAL, name, {"status": status}
    )
