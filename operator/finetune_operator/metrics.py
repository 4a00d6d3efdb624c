"""Prometheus metrics of the operator: jobs by phase, reconcile latency, errors, and per-job gauges.

The per-job gauges (``finetune_job_*``, labelled ``namespace`` and ``name``) are derived from each
FineTuneJob's status as the operator's watch delivers it: :func:`job_samples` is the pure part,
:class:`JobCollector` serves the latest samples of every job at scrape time, and a deleted job's
series go with it (:func:`forget`).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

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

# Per-job gauges: name -> (help, extra label). Every job has the labels namespace and name.
JOB_GAUGES: dict[str, tuple[str, str | None]] = {
    "finetune_job_phase": ("1 for the job's current phase, 0 for the others", "phase"),
    "finetune_job_progress_ratio": ("Training progress, 0 to 1 (step / totalSteps)", None),
    "finetune_job_step": ("Optimiser steps done", None),
    "finetune_job_total_steps": ("Optimiser steps planned", None),
    "finetune_job_epoch": ("Epochs done (fractional)", None),
    "finetune_job_train_loss": ("Latest training loss", None),
    "finetune_job_learning_rate": ("Current learning rate", None),
    "finetune_job_eval_metric": ("Latest evaluation metrics (status.metrics), by metric name", "metric"),
    "finetune_job_tokens_per_second": ("Training throughput in tokens per second", None),
    "finetune_job_samples_per_second": ("Training throughput in samples per second", None),
    "finetune_job_eta_seconds": ("Estimated seconds to the end of training", None),
    "finetune_job_restarts": ("Times the job's pods were restarted after a failure", None),
    "finetune_job_progress_updated_timestamp_seconds": ("When the trainer last reported progress (Unix time)", None),
}
# status.metrics holds at most this many entries (the schema's bound): the metric label stays bounded.
MAX_EVAL_METRICS = 64


@dataclass(frozen=True)
class Sample:
    """One value of a per-job gauge; ``label`` is the value of the gauge's extra label, if it has one."""

    metric: str
    value: float
    label: str | None = None


def _number(value: Any) -> float | None:
    # bool is an int to Python, never a gauge value; NaN stays (a diverged loss is worth seeing).
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _timestamp(value: Any) -> float | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _progress_ratio(progress: Mapping[str, Any]) -> float | None:
    percent = _number(progress.get("percent"))
    if percent is not None:
        return percent / 100
    step, total = _number(progress.get("step")), _number(progress.get("totalSteps"))
    return step / total if step is not None and total else None


def _tokens_per_second(status: Mapping[str, Any], progress: Mapping[str, Any]) -> float | None:
    # The latest point of the history's training series, unless progress carries it itself.
    value = _number(progress.get("tokensPerSecond"))
    if value is None:
        train = (status.get("history") or {}).get("train") or []
        value = _number(train[-1].get("tokensPerSecond")) if train and isinstance(train[-1], Mapping) else None
    return value


def job_samples(status: Mapping[str, Any]) -> list[Sample]:
    """The per-job gauge values a FineTuneJob's status (the wire dict, camelCase) says.

    A value the status does not hold yet is left out, not exported as 0: an absent loss is not a
    loss of zero. The phase is one-hot over every phase, once the operator has set one.
    """
    samples: list[Sample] = []
    phase = status.get("phase")
    if phase in PHASES:
        samples += [Sample("finetune_job_phase", float(p == phase), p) for p in PHASES]
    progress = status.get("progress") or {}
    values = {
        "finetune_job_progress_ratio": _progress_ratio(progress),
        "finetune_job_step": _number(progress.get("step")),
        "finetune_job_total_steps": _number(progress.get("totalSteps")),
        "finetune_job_epoch": _number(progress.get("epoch")),
        "finetune_job_train_loss": _number(progress.get("loss")),
        "finetune_job_learning_rate": _number(progress.get("learningRate")),
        "finetune_job_tokens_per_second": _tokens_per_second(status, progress),
        "finetune_job_samples_per_second": _number(progress.get("samplesPerSecond")),
        "finetune_job_eta_seconds": _number(progress.get("etaSeconds")),
        "finetune_job_restarts": _number(status.get("restarts")),
        "finetune_job_progress_updated_timestamp_seconds": _timestamp(progress.get("updatedAt")),
    }
    samples += [Sample(name, value) for name, value in values.items() if value is not None]
    evals = status.get("metrics") or {}
    for key in sorted(evals)[:MAX_EVAL_METRICS]:
        value = _number(evals[key])
        if value is not None:
            samples.append(Sample("finetune_job_eval_metric", value, str(key)))
    return samples


_jobs: dict[tuple[str, str], tuple[str, tuple[Sample, ...]]] = {}


def observe_job(namespace: str, name: str, uid: str, status: Mapping[str, Any]) -> None:
    """Record the latest status of a job for the per-job gauges."""
    samples = tuple(job_samples(status))
    with _lock:
        _jobs[(namespace, name)] = (uid, samples)


class JobCollector(Collector):
    """Serves the per-job gauges of every job the operator has seen, as of its latest status."""

    def describe(self) -> Iterator[GaugeMetricFamily]:
        yield from self._families().values()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        families = self._families()
        with _lock:
            jobs = list(_jobs.items())
        for (namespace, name), (_, samples) in jobs:
            for s in samples:
                labels = [namespace, name] if s.label is None else [namespace, name, s.label]
                families[s.metric].add_metric(labels, s.value)
        yield from families.values()

    @staticmethod
    def _families() -> dict[str, GaugeMetricFamily]:
        return {
            metric: GaugeMetricFamily(metric, text, labels=["namespace", "name", *([extra] if extra else [])])
            for metric, (text, extra) in JOB_GAUGES.items()
        }


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


def forget(namespace: str, name: str, uid: str | None = None) -> None:
    """Remove a deleted job from the jobs-by-phase gauge and drop its per-job series.

    With ``uid``, the per-job series stay if they already belong to a new job of the same name.
    """
    with _lock:
        _move(_phases.pop((namespace, name), None), None)
        known = _jobs.get((namespace, name))
        if known is not None and (uid is None or known[0] == uid):
            del _jobs[(namespace, name)]


for _phase in PHASES:  # every phase and kind is exported from the start, at 0 (rate() sees the first one)
    JOBS.labels(phase=_phase).set(0)
for _kind in ("ConfigMap", "Service", "ServiceAccount", "Role", "RoleBinding", "Job"):
    CHILDREN_CREATED.labels(kind=_kind)
REGISTRY.register(JobCollector())
