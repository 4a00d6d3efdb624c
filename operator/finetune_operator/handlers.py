"""kopf handlers: thin glue between FineTuneJob events and the pure builders and status logic.

Reconciliation is level-triggered: a new FineTuneJob gets its children (the independent ones
created in parallel, then the Job); a changed one gets the change applied to its children
(:mod:`finetune_operator.updates` decides how); every Job event refreshes the status from
the Job itself. Safe to run twice, after an operator restart, or on several replicas
(kopf peering lets only one act).

API calls are the cost that matters, so the handlers make no call whose answer they have:
the created Job is the one the create call returned, a Job event carries the Job, and the
operator remembers the status it last wrote, so an unchanged status is not patched again.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, cast

import kopf
from kubernetes.client.exceptions import ApiException

from finetune_api.contract import API_GROUP, API_GROUP_VERSION, API_VERSION, JOB_LABEL, KIND, PLURAL
from finetune_api.spec import FineTuneJobSpec
from finetune_api.status import now
from finetune_api.validation import InvalidSpec, parse_spec
from finetune_operator import kube, metrics, preflight_run
from finetune_operator.builders import GPU_RESOURCE, Parent, build_children
from finetune_operator.preflight import ClusterView, preflight_problems
from finetune_operator.preflight_fit import with_resolved_sizing
from finetune_operator.settings import OperatorSettings
from finetune_operator.status import desired_status, job_failed, pod_failure_reason, status_patch, transition_events
from finetune_operator.updates import plan_job, replacement_job, updated_job, with_failures_carried

FTJ = (API_GROUP, API_VERSION, PLURAL)
log = logging.getLogger("finetune_operator")
SETTINGS = OperatorSettings.from_env()


@dataclass
class _Known:
    """What the operator last saw or wrote of one FineTuneJob."""

    generation: int | None
    status: dict[str, Any]
    lock: threading.Lock


_known: dict[str, _Known] = {}
_known_lock = threading.Lock()


def _remember(uid: str, generation: int | None, status: dict[str, Any]) -> _Known:
    with _known_lock:
        known = _known.get(uid)
        if known is None:
            known = _known[uid] = _Known(generation, dict(status), threading.Lock())
        elif generation is not None:
            known.generation = generation
        return known


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


def _spec_and_problems(spec: dict[str, Any]) -> tuple[FineTuneJobSpec | None, list[str]]:
    try:
        return parse_spec(dict(spec)), []
    except InvalidSpec as err:
        return None, err.problems


def _preflight(namespace: str, spec: FineTuneJobSpec, job: dict[str, Any]) -> list[str]:
    """Before the trainer Job exists: what its pods will refer to must exist."""
    view = ClusterView(
        secret_keys=lambda name: kube.secret_keys(namespace, name),
        pvc_exists=lambda name: kube.pvc_exists(namespace, name),
        local_queue_exists=lambda name: kube.local_queue_exists(namespace, name),
        priority_class_exists=kube.priority_class_exists,
    )
    return preflight_problems(spec, namespace, job, view)


def preflight_retry_delay(retry: int) -> float:
    """Seconds before a stalled preflight looks again (the missing object may be created): 15 s doubling to 5 min."""
    return float(min(15 * 2**retry, 300))


def _topology(job: dict[str, Any]) -> tuple[int, int]:
    """Nodes and GPUs per node, as the Job runs them."""
    spec = job.get("spec") or {}
    containers = ((spec.get("template") or {}).get("spec") or {}).get("containers") or [{}]
    limits = (containers[0].get("resources") or {}).get("limits") or {}
    return int(spec.get("completions") or 1), int(limits.get(GPU_RESOURCE) or 0)


def _sync_status(
    ref: dict[str, Any],
    known: _Known,
    job: dict[str, Any] | None,
    topology: tuple[int, int],
    problems: list[str] | None = None,
    waiting_for: list[str] | None = None,
    preflight: str | None = None,
) -> None:
    """Recompute the operator-owned status, patch it if it changed, and post events for changes."""
    meta = ref["metadata"]
    with known.lock:
        # Why it failed, in the failed job's message (an out-of-memory kill names the field to change).
        last_failure = (
            pod_failure_reason(kube.list_pods(meta["namespace"], f"{JOB_LABEL}={meta['name']}"))
            if job_failed(job)
            else None
        )
        new = desired_status(
            name=meta["name"],
            generation=known.generation,
            nodes=topology[0],
            gpus_per_node=topology[1],
            job=job,
            problems=problems,
            waiting_for=waiting_for,
            timestamp=now(),
            last_failure=last_failure,
            preflight=preflight,
            previous=known.status,
        )
        patch = status_patch(known.status, new)
        if patch is not None:
            restart_reason = None
            if int(patch.get("restarts") or 0) > int(known.status.get("restarts") or 0):
                restart_reason = pod_failure_reason(kube.list_pods(meta["namespace"], f"{JOB_LABEL}={meta['name']}"))
            kube.patch_status(meta["namespace"], meta["name"], patch)
            for event in transition_events(known.status, patch, restart_reason):
                kopf.event(cast(kopf.Body, ref), type=event.type, reason=event.reason, message=event.message)
            known.status.update(patch)
    metrics.observe_phase(meta["namespace"], meta["name"], new.phase)


def _create(parent: Parent, children: list[dict[str, Any]], restarts: int) -> dict[str, Any] | None:
    """Create what is missing: the independent children in parallel, then the Job (its pods need them).

    ``restarts``: the status' count, carried over when an earlier Job of this job is gone (deleted
    after a refused change, or by hand), so restarts and the backoffLimit budget do not start again."""
    *others, job = children
    job = with_failures_carried(job, restarts)
    for manifest, created in zip(others, kube.create_all(others), strict=True):
        if created:
            metrics.CHILDREN_CREATED.labels(kind=manifest["kind"]).inc()
    obj = kube.create(job)
    if obj is not None:
        metrics.CHILDREN_CREATED.labels(kind="Job").inc()
    return obj


def _apply_change(parent: Parent, children: list[dict[str, Any]], job: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """Bring existing children to the spec; the Job as it now is, and what is still to do ('' if nothing)."""
    desired = children[-1]
    plan = plan_job(job, desired)
    if plan.action == "none":
        return job, ""
    # A change may need a child the job did not have (the Service of a job grown to several nodes).
    preflight_run.ensure_children(parent, children)
    name = desired["metadata"]["name"]
    if plan.action == "suspend":
        return kube.patch_job(parent.namespace, name, {"spec": {"suspend": True}}), plan.reason
    if plan.action == "wait":
        return job, plan.reason
    try:
        return kube.replace_job(updated_job(job, desired, template=plan.template)), ""
    except ApiException as err:
        if err.status == 409:
            return job, "the Job changed while it was being updated"
        if err.status != 422 or not plan.template:
            raise
        log.info("recreating Job %s/%s: refused in place (HTTP %s)", parent.namespace, name, err.status)
    # The API server does not allow this template change in place (e.g. nodes or image): recreate the
    # suspended Job; the new pods resume from the last checkpoint.
    kube.delete_job(parent.namespace, name, job["metadata"]["uid"])
    created = kube.create(replacement_job(job, desired))
    if created is None:
        return job, "waiting for the old Job to be deleted"
    return created, ""


def _reconcile(body: dict[str, Any], is_new: bool, retry: int = 0) -> None:
    started = time.monotonic()
    meta = body["metadata"]
    uid, generation = meta["uid"], meta.get("generation")
    ref = {"apiVersion": body["apiVersion"], "kind": body["kind"], "metadata": meta}
    known = _remember(uid, generation, body.get("status") or {})
    try:
        spec, problems = _spec_and_problems(body.get("spec") or {})
        if spec is None:
            _sync_status(ref, known, None, _spec_topology(body), problems)
            return
        parent = Parent(meta["name"], meta["namespace"], uid, generation or 1)
        children = build_children(parent, spec, SETTINGS)
        name = children[-1]["metadata"]["name"]
        job = None if is_new else kube.read_job(parent.namespace, name)
        pending = ""
        if job is None:
            problems = _preflight(parent.namespace, spec, children[-1])
            if problems:
                # Stalled now; looked at again with backoff, so the job starts once the object exists.
                _sync_status(ref, known, None, _spec_topology(body), waiting_for=problems)
                delay = preflight_retry_delay(retry)
                raise kopf.TemporaryError(f"preflight: {problems[0]}; checking again in {delay:.0f}s", delay=delay)
            children = _preflight_pod_step(ref, known, parent, spec, children, body, retry)
            job = _create(parent, children, int(known.status.get("restarts") or 0))
            if job is None and (job := kube.read_job(parent.namespace, name)) is not None:
                job, pending = _apply_change(parent, children, job)
        else:
            if (sized := with_resolved_sizing(spec, job)) is not spec:  # keeps the sizing it was created with
                children = build_children(parent, sized, SETTINGS)
            elif preflight_run.awaits_preflight(job, spec, SETTINGS):  # created suspended, now resumed
                children = _preflight_pod_step(ref, known, parent, spec, children, body, retry)
            job, pending = _apply_change(parent, children, job)
        _sync_status(ref, known, job, (spec.resources.nodes, spec.resources.gpus_per_node))
        if pending or job is None:
            raise kopf.TemporaryError(pending or "the trainer Job is being replaced", delay=2)
    except ApiException as err:
        metrics.RECONCILE_ERRORS.inc()
        raise kopf.TemporaryError(f"API server error {err.status}: {err.reason}", delay=10) from err
    finally:
        metrics.RECONCILE_SECONDS.observe(time.monotonic() - started)


def _preflight_pod_step(
    ref: dict[str, Any],
    known: _Known,
    parent: Parent,
    spec: FineTuneJobSpec,
    children: list[dict[str, Any]],
    body: dict[str, Any],
    retry: int,
) -> list[dict[str, Any]]:
    """The children to create once the preflight pod and the fit check pass; else stall or wait (TemporaryError)."""
    step = preflight_run.before_job(parent, spec, children, SETTINGS, lambda s: build_children(parent, s, SETTINGS))
    if step.estimate is not None:
        kube.patch_status(parent.namespace, parent.name, preflight_run.estimate_patch(step.estimate))
    if step.children is not None:
        return step.children
    waiting, checking = step.waiting or None, None if step.waiting else step.reason
    _sync_status(ref, known, None, _spec_topology(body), waiting_for=waiting, preflight=checking)
    delay = preflight_retry_delay(retry) if step.retry_in is None else step.retry_in
    raise kopf.TemporaryError(f"preflight: {(step.waiting or [step.reason])[0]}", delay=delay)


def _spec_topology(body: dict[str, Any]) -> tuple[int, int]:
    resources = (body.get("spec") or {}).get("resources") or {}
    return int(resources.get("nodes", 1)), int(resources.get("gpusPerNode", 1))


@kopf.on.resume(*FTJ)
@kopf.on.create(*FTJ)
@kopf.on.update(*FTJ, field="spec")
def reconcile(body: kopf.Body, reason: str, retry: int, **_: Any) -> None:
    """Create a new FineTuneJob's children, or apply a spec change to them (or find them up to date
    after a restart), and refresh the status. Before the trainer Job exists the preflight checks what it
    refers to; a job it stalls is checked again with backoff."""
    _reconcile(dict(body), is_new=reason == kopf.Reason.CREATE, retry=retry)


@kopf.on.event("batch", "v1", "jobs", labels={JOB_LABEL: kopf.PRESENT})
def job_changed(body: kopf.Body, type: str | None, **_: Any) -> None:
    """A trainer Job changed (pods started, failed, finished): refresh its FineTuneJob's status."""
    job = dict(body)
    meta = job.get("metadata") or {}
    owner = next((o for o in meta.get("ownerReferences") or [] if o.get("kind") == KIND and o.get("controller")), None)
    if type == "DELETED" or owner is None:
        return
    namespace = meta["namespace"]
    try:
        known = _known.get(owner["uid"])
        if known is None:  # not seen since the operator started: read it once
            parent = kube.read_finetunejob(namespace, owner["name"])
            if parent is None or parent["metadata"]["uid"] != owner["uid"]:
                return
            known = _remember(owner["uid"], parent["metadata"].get("generation"), parent.get("status") or {})
        ref = {
            "apiVersion": API_GROUP_VERSION,
            "kind": KIND,
            "metadata": {"name": owner["name"], "namespace": namespace, "uid": owner["uid"]},
        }
        _sync_status(ref, known, job, _topology(job))
    except ApiException as err:
        metrics.RECONCILE_ERRORS.inc()
        log.warning("status refresh of %s/%s failed: %s", namespace, owner["name"], err.reason)


@kopf.index(*FTJ)
async def job_gauges(namespace: str | None, name: str, uid: str, status: kopf.Status, **_: Any) -> None:
    """Every FineTuneJob event (the trainer's progress too): refresh the job's Prometheus gauges.

    An indexer rather than an event handler: kopf calls it for each event without logging a line
    per call; it indexes nothing (returns None)."""
    metrics.observe_job(namespace or "", name, uid, status)


@kopf.on.event(*FTJ, when=lambda type, **_: type == "DELETED")
def forget(namespace: str | None, name: str, uid: str, **_: Any) -> None:
    """Drop a deleted job from the metrics and the operator's memory; its children go by garbage collection.

    On the watch's DELETED event: a delete handler without a finalizer is not called when the object
    is simply gone."""
    metrics.forget(namespace or "", name, uid)
    preflight_run.forget(namespace or "", name)
    with _known_lock:
        _known.pop(uid, None)
