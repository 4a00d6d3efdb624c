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


def _publish() -> None:
    counts = dict.fromkeys(PHASES, 0)
    for phase in _phases.values():
        counts[phase] = counts.get(phase, 0) + 1
    for phase, count in counts.items():
        JOBS.labels(phase=phase).set(count)


def observe_phase(namespace: str, name: str, phase: str | None) -> None:
    """Record a job's current phase for the jobs-by-phase gauge."""
    if phase is None:
        return
    with _lock:
        _phases[(namespace, name)] = phase
        _publish()


def forget(namespace: str, name: str) -> None:
    """Remove a deleted job from the gauge."""
    with _lock:
        _phases.pop((namespace, name), None)
        _publish()


_publish()  # every phase is exported from the start, at 0
