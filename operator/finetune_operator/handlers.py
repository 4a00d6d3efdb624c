"""kopf handlers: thin glue between FineTuneJob events and the pure builders and status logic.

Reconciliation is level-triggered: every handler looks at what exists, creates only what
is missing and recomputes the status from the observed Job, so it is safe to run twice,
after an operator restart, or on several replicas (kopf peering lets only one act).
"""

from __future__ import annotations

import logging
import time
from typing import Any, cast

import kopf
from kubernetes.client.exceptions import ApiException

from finetune_api.contract import API_GROUP, API_VERSION, JOB_LABEL, PLURAL
from finetune_api.spec import FineTuneJobSpec
from finetune_api.status import now
from finetune_api.validation import InvalidSpec, parse_spec
from finetune_operator import kube, metrics
from finetune_operator.builders import Parent, build_children, child_names
from finetune_operator.preflight import preflight_problems
from finetune_operator.settings import OperatorSettings
from finetune_operator.status import desired_status, merge_conditions, pod_failure_reason, transition_events

FTJ = (API_GROUP, API_VERSION, PLURAL)
log = logging.getLogger("finetune_operator")
SETTINGS = OperatorSettings.from_env()


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    """Keep kopf's bookkeeping in annotations so the status holds only our schema's fields."""
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=API_GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=API_GROUP, key="last-handled-configuration"
    )
    settings.posting.level = logging.INFO
    settings.watching.server_timeout = 300
    settings.networking.request_timeout = 60
    # Handlers are sync and mostly wait on the API server: more threads, more jobs in flight.
    settings.execution.max_workers = 32


def _spec_and_problems(spec: dict[str, Any], namespace: str) -> tuple[FineTuneJobSpec | None, list[str]]:
    try:
        parsed = parse_spec(dict(spec))
    except InvalidSpec as err:
        return None, err.problems
    problems = preflight_problems(parsed, namespace, lambda claim: kube.pvc_exists(namespace, claim))
    return (None, problems) if problems else (parsed, [])


def _sync_status(body: dict[str, Any], spec: FineTuneJobSpec | None, problems: list[str]) -> dict[str, Any]:
    """Recompute the operator-owned status from the Job, patch it, and post events for changes."""
    meta = body["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    job = None if problems else kube.read_job(namespace, child_names(Parent(name, namespace, meta["uid"]))["job"])
    raw = body.get("spec") or {}
    resources = raw.get("resources") or {}
    new = desired_status(
        name=name,
        generation=meta.get("generation"),
        nodes=spec.resources.nodes if spec else int(resources.get("nodes", 1)),
        gpus_per_node=spec.resources.gpus_per_node if spec else int(resources.get("gpusPerNode", 1)),
        job=job,
        problems=problems,
    )
    old = dict(body.get("status") or {})
    new["conditions"] = merge_conditions(old.get("conditions") or [], new["conditions"], now())
    restart_reason = None
    if int(new.get("restarts") or 0) > int(old.get("restarts") or 0):
        restart_reason = pod_failure_reason(kube.list_pods(namespace, f"{JOB_LABEL}={name}"))
    for event in transition_events(old, new, restart_reason):
        kopf.event(cast(kopf.Body, body), type=event.type, reason=event.reason, message=event.message)
    if any(old.get(k) != v for k, v in new.items()):
        kube.patch_status(namespace, name, new)
    metrics.observe_phase(namespace, name, new.get("phase"))
    return new


def _reconcile(body: dict[str, Any]) -> None:
    started = time.monotonic()
    meta = body["metadata"]
    try:
        spec, problems = _spec_and_problems(body.get("spec") or {}, meta["namespace"])
        if spec is not None:
            parent = Parent(meta["name"], meta["namespace"], meta["uid"])
            for manifest in build_children(parent, spec, SETTINGS):
                obj, created = kube.create_or_get(manifest)
                if created:
                    metrics.CHILDREN_CREATED.labels(kind=manifest["kind"]).inc()
                elif manifest["kind"] == "Job":
                    want = manifest["spec"]["suspend"]
                    if bool((obj.get("spec") or {}).get("suspend")) != want:
                        kube.set_job_suspend(parent.namespace, manifest["metadata"]["name"], want)
        _sync_status(body, spec, problems)
    except ApiException as err:
        metrics.RECONCILE_ERRORS.inc()
        raise kopf.TemporaryError(f"API server error {err.status}: {err.reason}", delay=10) from err
    finally:
        metrics.RECONCILE_SECONDS.observe(time.monotonic() - started)


@kopf.on.resume(*FTJ)
@kopf.on.create(*FTJ)
@kopf.on.update(*FTJ, field="spec")
def reconcile(body: kopf.Body, **_: Any) -> None:
    """Create the missing children of a FineTuneJob, sync suspend, and refresh its status."""
    _reconcile(dict(body))


@kopf.on.event("batch", "v1", "jobs", labels={JOB_LABEL: kopf.PRESENT})
def job_changed(body: kopf.Body, type: str | None, **_: Any) -> None:
    """A trainer Job changed (pods started, failed, finished): refresh its FineTuneJob's status."""
    meta = body.get("metadata") or {}
    name = (meta.get("labels") or {}).get(JOB_LABEL)
    if type == "DELETED" or not name:
        return
    parent = kube.read_finetunejob(meta["namespace"], name)
    if parent is None:
        return
    try:
        spec, problems = _spec_and_problems(parent.get("spec") or {}, meta["namespace"])
        _sync_status(parent, spec, problems)
    except ApiException as err:
        metrics.RECONCILE_ERRORS.inc()
        log.warning("status refresh of %s/%s failed: %s", meta["namespace"], name, err.reason)


@kopf.on.delete(*FTJ, optional=True)
def forget(namespace: str | None, name: str, **_: Any) -> None:
    """Drop a deleted job from the metrics; its children go by garbage collection."""
    metrics.forget(namespace or "", name)
