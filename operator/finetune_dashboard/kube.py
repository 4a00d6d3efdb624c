"""The dashboard's reads from the API server: FineTuneJobs (list + watch), their Events and pod logs.

Read-only by construction: nothing here creates, patches or deletes, and no Secret is read
(the chart's Role grants exactly these calls). The client is the operator's (same kubeconfig /
service-account loading, same connection pool); calls are blocking and run in threads.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from finetune_api.contract import API_GROUP, API_VERSION, COMPLETION_INDEX_ANNOTATION, JOB_LABEL, KIND, PLURAL
from finetune_operator.kube import api_client

log = logging.getLogger(__name__)
WATCH_SECONDS = 240  # a watch is reopened (from the last resourceVersion) at least this often
RETRY_SECONDS = 2.0


def _custom() -> client.CustomObjectsApi:
    return client.CustomObjectsApi(api_client())


def _core() -> client.CoreV1Api:
    return client.CoreV1Api(api_client())


def _list_call(namespace: str | None) -> Callable[..., Any]:
    if namespace is None:
        return lambda **kw: _custom().list_cluster_custom_object(API_GROUP, API_VERSION, PLURAL, **kw)
    return lambda **kw: _custom().list_namespaced_custom_object(API_GROUP, API_VERSION, namespace, PLURAL, **kw)


class JobStore:
    """The FineTuneJobs of the watched namespaces (None: all), kept current by one watch per namespace.

    ``version`` counts the changes, so a reader can tell that something moved without comparing.
    """

    def __init__(self, namespaces: list[str] | None) -> None:
        self.namespaces = namespaces
        self.version = 0
        self._jobs: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._threads: list[threading.Thread] = []
        self._listed: set[str | None] = set()

    def start(self) -> None:
        scopes: list[str | None] = list(self.namespaces) if self.namespaces else [None]
        for ns in scopes:
            t = threading.Thread(target=self._run, args=(ns,), name=f"watch-{ns or 'all'}", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        self._stop.set()

    def wait_ready(self, timeout: float) -> bool:
        """True once every namespace was listed once."""
        return self._ready.wait(timeout)

    def jobs(self) -> list[dict[str, Any]]:
        with self._lock:
            return [self._jobs[k] for k in sorted(self._jobs)]

    def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        with self._lock:
            return self._jobs.get(f"{namespace}/{name}")

    def watches_namespace(self, namespace: str) -> bool:
        return self.namespaces is None or namespace in self.namespaces

    def replace(self, namespace: str | None, items: list[dict[str, Any]]) -> None:
        """A fresh listing of one namespace (None: all) replaces what was known of it."""
        with self._lock:
            gone = [k for k, o in self._jobs.items() if namespace in (None, o["metadata"]["namespace"])]
            for key in gone:
                del self._jobs[key]
            for obj in items:
                self._jobs[_key(obj)] = obj
            self.version += 1
            self._listed.add(namespace)
            if len(self._listed) == len(self.namespaces or [None]):
                self._ready.set()

    def apply(self, kind: str, obj: dict[str, Any]) -> None:
        """One watch event: ADDED, MODIFIED or DELETED."""
        with self._lock:
            if kind == "DELETED":
                self._jobs.pop(_key(obj), None)
            else:
                self._jobs[_key(obj)] = obj
            self.version += 1

    def _run(self, namespace: str | None) -> None:
        while not self._stop.is_set():
            try:
                for kind, obj in _list_then_watch(namespace, self.replace):
                    if self._stop.is_set():
                        return
                    self.apply(kind, obj)
            except ApiException as err:
                log.warning("watching FineTuneJobs in %s: %s %s", namespace or "all namespaces", err.status, err.reason)
                time.sleep(RETRY_SECONDS)
            except Exception:
                log.exception("watching FineTuneJobs in %s", namespace or "all namespaces")
                time.sleep(RETRY_SECONDS)


def _key(obj: dict[str, Any]) -> str:
    return f"{obj['metadata']['namespace']}/{obj['metadata']['name']}"


def _list_then_watch(
    namespace: str | None, replace: Callable[[str | None, list[dict[str, Any]]], None]
) -> Iterator[tuple[str, dict[str, Any]]]:
    """List (handing the items to ``replace``), then yield the watch's events until it ends or expires."""
    call = _list_call(namespace)
    listing = json.loads(call(_preload_content=False).data)
    replace(namespace, listing.get("items") or [])
    version = listing["metadata"]["resourceVersion"]
    while True:
        stream = watch.Watch().stream(call, resource_version=version, timeout_seconds=WATCH_SECONDS)
        for event in stream:
            obj = event["object"]
            if event["type"] == "ERROR":  # 410 Gone: the version is too old; list again
                return
            if event["type"] == "BOOKMARK":
                version = obj["metadata"]["resourceVersion"]
                continue
            version = obj["metadata"]["resourceVersion"]
            yield event["type"], obj


def list_events(namespace: str, name: str) -> list[dict[str, Any]]:
    """The core/v1 Events about one FineTuneJob."""
    selector = f"involvedObject.kind={KIND},involvedObject.name={name}"
    response = _core().list_namespaced_event(namespace, field_selector=selector, _preload_content=False)
    return list(json.loads(response.data).get("items") or [])


def trainer_log(namespace: str, name: str, rank: int = 0, tail_lines: int = 200) -> str | None:
    """The last lines of the trainer log of node ``rank`` (its newest pod), or None when it has no pod."""
    response = _core().list_namespaced_pod(namespace, label_selector=f"{JOB_LABEL}={name}", _preload_content=False)
    pods = [
        p
        for p in json.loads(response.data).get("items") or []
        if (p["metadata"].get("annotations") or {}).get(COMPLETION_INDEX_ANNOTATION) == str(rank)
    ]
    if not pods:
        return None
    newest = max(pods, key=lambda p: p["metadata"].get("creationTimestamp") or "")
    try:
        text = _core().read_namespaced_pod_log(
            newest["metadata"]["name"], namespace, tail_lines=tail_lines, _preload_content=False
        )
    except ApiException as err:
        if err.status == 400:  # container not started yet
            return ""
        raise
    return bytes(text.data).decode("utf-8", "replace")
