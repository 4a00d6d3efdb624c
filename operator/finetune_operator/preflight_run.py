"""The last step before the GPU Job: the CPU preflight pod, then the GPU-memory fit against the nodes.

Called by the reconcile handler while no Job exists (after the cluster-object checks of
:mod:`finetune_operator.preflight`). Each call looks at what exists and takes one step: create the
job's ConfigMap and identity and start the preflight pod; wait for it; read its verdict. Problems
stall the job with their field paths; an unreachable service is checked again with backoff (never a
failure); a job that does not fit the GPUs of the nodes it can land on is stalled with computed
alternatives; ``training.sizing: auto`` is resolved for those GPUs. Only then does the Job exist.

A suspended job gets no preflight pod while suspended: its Job is created suspended and marked as
owing the preflight, which runs when ``runPolicy.suspend`` turns false, before the Job is resumed.
A job in a Kueue queue (``queueName``) gets its preflight pod before its Job exists, like any other:
the pod requests no GPU and has no queue label, so it holds no quota, and a job that would fail is
refused before it waits in the queue; its Job is created (and admitted by Kueue) only after a pass.
One created suspended in a queue is left to Kueue, as before (Kueue resumes its Job when it admits it).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from finetune_api.contract import API_GROUP
from finetune_api.model_shapes import EstimateUnavailable
from finetune_api.sizing import estimate_status, fit_report
from finetune_api.spec import FineTuneJobSpec, wire
from finetune_api.status import MemoryEstimate
from finetune_operator import kube
from finetune_operator.builders import Parent
from finetune_operator.preflight_fit import RESOLVED_ANNOTATION, fit_problem, gpu_memory_for, resolved_sizing, runs_as
from finetune_operator.preflight_pod import build_preflight_pod, pod_generation, pod_outcome, preflight_pod_name
from finetune_operator.settings import OperatorSettings
from finetune_operator.updates import config_map_patch

log = logging.getLogger("finetune_operator")
POLL_SECONDS = 3.0
# On the Job: whether the preflight ran before it (passed) or is still owed (pending: created suspended).
PREFLIGHT_ANNOTATION = f"{API_GROUP}/preflight"
PREFLIGHT_PASSED, PREFLIGHT_PENDING = "passed", "pending"
STUCK_POLL_SECONDS = 30.0
# The status message while the preflight pod runs (followed by the pod's state).
CHECKING = (
    "a CPU pod is checking model access, the data and the S3 output, then the GPU-memory fit; "
    "no GPU is requested until it passes"
)

Build = Callable[[FineTuneJobSpec], list[dict[str, Any]]]


@dataclass(frozen=True)
class Step:
    """What to do now: create ``children`` (the Job last), or stall on ``waiting``, or look again later."""

    children: list[dict[str, Any]] | None = None
    waiting: list[str] = field(default_factory=list)  # stall lines: 'spec.field: what and the fix'
    reason: str = ""  # why not yet, when neither
    retry_in: float | None = POLL_SECONDS  # None: the stall backoff of a missing object
    estimate: MemoryEstimate | None = None


# Consecutive unreachable verdicts per job, for the generation they were counted on: the backoff of the
# transient case. One entry per job at most; a new generation starts again at 0, a deleted job is forgotten.
_unreachable: dict[tuple[str, str], tuple[int, int]] = {}


def count_unreachable(namespace: str, name: str, generation: int) -> int:
    """Record one more unreachable verdict for this job's generation; the attempts before it (0 for the first)."""
    counted_on, attempts = _unreachable.get((namespace, name), (generation, 0))
    if counted_on != generation:
        attempts = 0
    _unreachable[(namespace, name)] = (generation, attempts + 1)
    return attempts


def forget(namespace: str, name: str) -> None:
    """Drop what the preflight remembers of a job (it was deleted, or its preflight finished)."""
    _unreachable.pop((namespace, name), None)


def estimate_patch(estimate: MemoryEstimate) -> dict[str, Any]:
    """The status merge patch writing ``estimate`` whole: fields it leaves out are removed, not kept from before."""
    fields = {f.alias or name: None for name, f in MemoryEstimate.model_fields.items()}
    return {"memoryEstimate": {**fields, **wire(estimate)}}


def unreachable_delay(attempt: int) -> float:
    """Seconds before a preflight that could not reach a service runs again: 10 s doubling to 5 min."""
    return float(min(10 * 2**attempt, 300))


def ensure_children(parent: Parent, children: list[dict[str, Any]]) -> None:
    """Every child but the Job, as the current spec renders them (missing ones created, the ConfigMap patched)."""
    kube.create_all(children[:-1])
    config_map = children[0]
    current = kube.read_config_map(parent.namespace, config_map["metadata"]["name"])
    patch = config_map_patch(current or {}, config_map)
    if patch is not None:
        kube.patch_config_map(parent.namespace, config_map["metadata"]["name"], patch)


def before_job(
    parent: Parent, spec: FineTuneJobSpec, children: list[dict[str, Any]], settings: OperatorSettings, build: Build
) -> Step:
    """One step of the pod preflight and fit check for a job whose Job does not exist yet (or owes it)."""
    rp = spec.run_policy
    if not settings.preflight_pod:
        return Step(children)
    if rp.suspend:
        return Step(_marked(children, PREFLIGHT_PENDING))
    job = children[-1]
    name = preflight_pod_name(job["metadata"]["name"])
    pod = kube.read_pod(parent.namespace, name)
    if pod is not None and pod_generation(pod) != parent.generation:
        kube.delete_pod(parent.namespace, name)  # it checked an older spec
        pod = None
    if pod is None:
        ensure_children(parent, children)
        placement = settings.preflight_node_selector, settings.preflight_tolerations
        kube.create(build_preflight_pod(job, parent.generation, *placement))
        return Step(reason=f"{CHECKING} (the preflight pod started)")
    outcome = pod_outcome(pod)
    if outcome.stuck:  # stalled with the reason, looked at again (the image or a node may come)
        return Step(waiting=[f"{outcome.waiting}; no GPU is requested until it has run"], retry_in=STUCK_POLL_SECONDS)
    if not outcome.done:
        return Step(reason=f"{CHECKING} ({outcome.waiting})")
    kube.delete_pod(parent.namespace, name)  # the next look runs a fresh one
    result = outcome.result
    if result is None or result.unreachable:
        attempt = count_unreachable(parent.namespace, parent.name, parent.generation)
        delay = unreachable_delay(attempt)
        what = result.unreachable if result is not None else outcome.waiting
        line = f"could not finish ({what}); not a failure of the job: checked again in {delay:.0f}s"
        return Step(waiting=[line], retry_in=delay)
    forget(parent.namespace, parent.name)
    if result.problems:
        return Step(waiting=list(result.problems), retry_in=None)
    step = _fit(parent, spec, children, settings, build, result.model_config)
    return Step(_marked(step.children, PREFLIGHT_PASSED), estimate=step.estimate) if step.children else step


def _marked(children: list[dict[str, Any]], state: str) -> list[dict[str, Any]]:
    children[-1]["metadata"].setdefault("annotations", {})[PREFLIGHT_ANNOTATION] = state
    return children


def awaits_preflight(job: dict[str, Any], spec: FineTuneJobSpec, settings: OperatorSettings) -> bool:
    """A Job created suspended without the preflight, now resumed (and not left to a Kueue queue): it runs first."""
    annotations = (job.get("metadata") or {}).get("annotations") or {}
    rp = spec.run_policy
    pending = annotations.get(PREFLIGHT_ANNOTATION) == PREFLIGHT_PENDING
    return settings.preflight_pod and pending and not rp.suspend and not rp.queue_name


def _fit(
    parent: Parent,
    spec: FineTuneJobSpec,
    children: list[dict[str, Any]],
    settings: OperatorSettings,
    build: Build,
    config: dict[str, Any],
) -> Step:
    job = children[-1]
    if spec.resources.gpus_per_node == 0 or not config:
        return Step(children)
    memory = gpu_memory_for(spec, job, kube.list_nodes(), settings.default_gpu_memory)
    if memory is None:
        log.info("%s/%s: no GPU memory known (label, spec or default): no fit check", parent.namespace, parent.name)
        return Step(children)
    try:
        report = fit_report(spec, config, memory[0])
    except EstimateUnavailable as err:
        log.info("%s/%s: memory estimate not available: %s", parent.namespace, parent.name, err)
        return Step(children)
    estimate = estimate_status(report, memory[1])
    if not report.fits:
        return Step(waiting=[fit_problem(report)], retry_in=None, estimate=estimate)
    if not report.resolved:
        return Step(children, estimate=estimate)
    sized = build(runs_as(report))
    sized[-1]["metadata"].setdefault("annotations", {})[RESOLVED_ANNOTATION] = resolved_sizing(report.spec)
    ensure_children(parent, sized)
    return Step(sized, estimate=estimate)
