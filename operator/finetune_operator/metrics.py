"""Prometheus metrics of the operator: jobs by phase, reconcile latency, errors."""

from __future__ import annotations

import threading

from prometheus_client import Counter, Gauge, Histogram

JOBS = Gauge("finetune_jobs", "FineTuneJobs seen by this operator, by phase", ["phase"])
RECONCILE_SECONDS = Histogram(
    "finetune_reconcile_seconds",
    "Time to reconcile one FineTuneJob (children and status)",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
RECONCILE_ERRORS = Counter("finetune_reconcile_errors_total", "Reconciliations that failed on an API error")
CHILDREN_CREATED = Counter("finetune_children_created_total", "Objects created for FineTuneJobs", ["kind"])

_lock = threading.Lock()
_phases: dict[tuple[str, str], str] = {}
PHASES = ("Pending", "Running", "Succeeded", "Failed", "Suspended")


def _move(old: str | None, new: str | None) -> None:
    # Only the two phases involved change, so a status refresh costs the same at 10 or 10,000 jobs.
    if old is not None:
        JOBS.labels(phase=old).dec()
    if new is not None:
        JOBS.labels(phase=new).inc()


def observe_phase(namespace: str, name: str, phase: str | None) -> None:
    """Record a job's current phase for the jobs-by-phase gauge."""
    if phase is None:
        return
    with _lock:
        old = _phases.get((namespace, name))
        if old != phase:
            _phases[(namespace, name)] = phase
            _move(old, phase)


def forget(namespace: str, name: str) -> None:
    """Remove a deleted job from the gauge."""
    with _lock:
        _move(_phases.pop((namespace, name), None), None)


for _phase in PHASES:  # every phase is exported from the start, at 0
    JOBS.labels(phase=_phase).set(0)
