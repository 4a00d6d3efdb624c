"""Per-job Prometheus gauges: status -> samples, the collector, deletion; the chart's Grafana dashboard."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from finetune_api.spec import wire
from finetune_api.status import FineTuneJobStatus, History, Progress, TrainPoint
from finetune_operator import metrics
from finetune_operator.metrics import Sample, job_samples

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "charts/finetune-operator/dashboards/finetune-jobs.json"

RUNNING = {
    "phase": "Running",
    "restarts": 2,
    "progress": {
        "step": 420,
        "totalSteps": 900,
        "epoch": 1.4,
        "percent": 46.7,
        "loss": 0.31,
        "learningRate": 1.2e-5,
        "samplesPerSecond": 88.0,
        "etaSeconds": 610,
        "updatedAt": "2026-01-02T03:04:05Z",
    },
    "metrics": {"eval_loss": 0.27, "eval_accuracy": 0.91},
    "history": {"train": [{"step": 400, "tokensPerSecond": 5000.0}, {"step": 420, "tokensPerSecond": 5123.0}]},
}


UPDATED_AT = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC).timestamp()


def test_a_running_job_exports_every_gauge_from_its_status() -> None:
    got = {(s.metric, s.label): s.value for s in job_samples(RUNNING)}
    assert got == {
        ("finetune_job_phase", "Pending"): 0.0,
        ("finetune_job_phase", "Running"): 1.0,
        ("finetune_job_phase", "Succeeded"): 0.0,
        ("finetune_job_phase", "Failed"): 0.0,
        ("finetune_job_phase", "Suspended"): 0.0,
        ("finetune_job_progress_ratio", None): pytest.approx(0.467),
        ("finetune_job_step", None): 420.0,
        ("finetune_job_total_steps", None): 900.0,
        ("finetune_job_epoch", None): 1.4,
        ("finetune_job_train_loss", None): 0.31,
        ("finetune_job_learning_rate", None): 1.2e-5,
        ("finetune_job_tokens_per_second", None): 5123.0,
        ("finetune_job_samples_per_second", None): 88.0,
        ("finetune_job_eta_seconds", None): 610.0,
        ("finetune_job_restarts", None): 2.0,
        ("finetune_job_progress_updated_timestamp_seconds", None): UPDATED_AT,
        ("finetune_job_eval_metric", "eval_accuracy"): 0.91,
        ("finetune_job_eval_metric", "eval_loss"): 0.27,
    }


def test_gauges_read_the_fields_the_typed_status_writes() -> None:
    # Built through the models the trainer and operator write with: the wire names must match.
    typed = FineTuneJobStatus(
        phase="Running",
        progress=Progress(step=7, total_steps=28, loss=0.5, eta_seconds=30),
        metrics={"eval_f1": 0.8},
        history=History(train=[TrainPoint(step=7, first_step=6, tokens_per_second=321.0)]),
    )
    got = {(s.metric, s.label): s.value for s in job_samples(wire(typed, only_set=True))}
    assert got[("finetune_job_progress_ratio", None)] == 0.25
    assert got[("finetune_job_tokens_per_second", None)] == 321.0
    assert got[("finetune_job_eta_seconds", None)] == 30
    assert got[("finetune_job_eval_metric", "eval_f1")] == 0.8


def test_values_the_status_lacks_are_absent_not_zero() -> None:
    assert job_samples({}) == []
    got = {s.metric for s in job_samples({"phase": "Pending", "restarts": 0})}
    assert got == {"finetune_job_phase", "finetune_job_restarts"}


def test_progress_ratio_falls_back_to_step_over_total_steps() -> None:
    (ratio,) = [s for s in job_samples({"progress": {"step": 30, "totalSteps": 120}}) if s.metric.endswith("ratio")]
    assert ratio.value == 0.25
    assert not [s for s in job_samples({"progress": {"step": 30, "totalSteps": 0}}) if s.metric.endswith("ratio")]


def test_values_of_the_wrong_type_are_left_out() -> None:
    status = {"phase": "Exploded", "restarts": True, "progress": {"loss": "0.3", "updatedAt": "yesterday"}}
    status["metrics"] = {"eval_accuracy": None, "eval_f1": 0.5}
    assert job_samples(status) == [Sample("finetune_job_eval_metric", 0.5, "eval_f1")]


def test_eval_metric_label_is_bounded() -> None:
    many = {f"eval_m{i:03d}": float(i) for i in range(metrics.MAX_EVAL_METRICS + 10)}
    assert len(job_samples({"metrics": many})) == metrics.MAX_EVAL_METRICS


def _value(family: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(family, labels)


def test_collector_serves_each_job_and_drops_a_deleted_one() -> None:
    metrics.observe_job("metrics-test", "a", "uid-a", RUNNING)
    metrics.observe_job("metrics-test", "b", "uid-b", {"phase": "Pending"})
    assert _value("finetune_job_step", namespace="metrics-test", name="a") == 420
    assert _value("finetune_job_eval_metric", namespace="metrics-test", name="a", metric="eval_accuracy") == 0.91
    assert _value("finetune_job_phase", namespace="metrics-test", name="b", phase="Pending") == 1
    metrics.observe_job("metrics-test", "a", "uid-a", {**RUNNING, "progress": {"step": 421}})
    assert _value("finetune_job_step", namespace="metrics-test", name="a") == 421
    assert _value("finetune_job_train_loss", namespace="metrics-test", name="a") is None

    metrics.forget("metrics-test", "a", "uid-a")
    assert _value("finetune_job_step", namespace="metrics-test", name="a") is None
    assert _value("finetune_job_phase", namespace="metrics-test", name="a", phase="Running") is None
    assert _value("finetune_job_phase", namespace="metrics-test", name="b", phase="Pending") == 1
    metrics.forget("metrics-test", "b", "uid-b")


def test_deleting_an_old_job_keeps_the_series_of_a_new_one_of_the_same_name() -> None:
    metrics.observe_job("metrics-test", "c", "uid-new", {"phase": "Running"})
    metrics.forget("metrics-test", "c", "uid-old")
    assert _value("finetune_job_phase", namespace="metrics-test", name="c", phase="Running") == 1
    metrics.forget("metrics-test", "c", "uid-new")
    assert _value("finetune_job_phase", namespace="metrics-test", name="c", phase="Running") is None


# --- the Grafana dashboard the chart ships ------------------------------------------------------

_PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool"}
_PROMQL_WORDS |= {"offset", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: identifiers that are not functions, keywords,
    label names (inside braces or a by/without list) or Grafana variables."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings (label values, regexes)
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # range selectors, [5m] or [$__rate_interval]
    expr = re.sub(r"\$\{?\w+\}?", "", expr)  # Grafana variables
    names = set(re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*(?!\s*\()(?![A-Za-z0-9_:])", expr))
    return {n for n in names if n.lower() not in _PROMQL_WORDS and not re.fullmatch(r"\d+\w*", n)}


def test_metric_names_finds_selectors_and_skips_the_rest() -> None:
    expr = 'max by (namespace, name) (rate(finetune_x_total{namespace=~"$namespace"}[$__rate_interval])) / on (name) y'
    assert metric_names(expr) == {"finetune_x_total", "y"}


def _exported() -> set[str]:
    """Every sample name the operator serves once a job has reported everything (collected, not listed)."""
    metrics.observe_job("metrics-test", "full", "uid-full", RUNNING)
    try:
        names = {s.name for family in REGISTRY.collect() for s in family.samples}
    finally:
        metrics.forget("metrics-test", "full", "uid-full")
    return {n for n in names if n.startswith("finetune_")}


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    panels = []
    for panel in dashboard["panels"]:
        panels += [panel, *panel.get("panels", [])]
    return panels


def test_every_dashboard_query_names_an_exported_metric() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in _panels(dashboard)]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    exported = _exported()
    queries = [t["expr"] for p in _panels(dashboard) for t in p.get("targets", [])]
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":  # label_values(SELECTOR, LABEL): the selector names the metric
            found = re.fullmatch(r"label_values\((.*),\s*\w+\)", var["query"]["query"])
            assert found, var["query"]
            queries.append(found.group(1))
    assert len(queries) >= 10
    used: set[str] = set()
    for expr in queries:
        names = metric_names(expr)
        assert names, f"no metric in {expr!r}"
        assert names <= exported, f"{expr!r} names {sorted(names - exported)}, not exported by the operator"
        used |= names
    assert set(metrics.JOB_GAUGES) - used == set(), "a per-job gauge has no panel"
