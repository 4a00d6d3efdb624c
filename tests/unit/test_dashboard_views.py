"""What the dashboard shows, picked from a FineTuneJob without a browser (finetune_dashboard.views)."""

from __future__ import annotations

from typing import Any

from finetune_api.status import FineTuneJobStatus
from finetune_dashboard import views


def job(**status: Any) -> dict[str, Any]:
    return {
        "metadata": {"namespace": "team-a", "name": "bert-lora", "resourceVersion": "7", "creationTimestamp": "t0"},
        "spec": {
            "model": {"name": "bert-base-uncased"},
            "task": {"type": "sequence-classification", "labels": ["neg", "pos"]},
            "method": {"type": "lora", "lora": {"r": 8}},
            "training": {"epochs": 3, "learningRate": 2e-5, "dpo": {"beta": 0.1}},
            "resources": {"nodes": 2, "gpusPerNode": 8},
        },
        "status": status,
    }


HISTORY = {
    "maxPoints": 256,
    # Out of order on purpose: the series come out in step order.
    "train": [
        {"step": 20, "firstStep": 11, "loss": 0.5, "learningRate": 1e-5, "tokensPerSecond": 900.0},
        {"step": 10, "firstStep": 1, "loss": 0.9, "learningRate": 2e-5, "tokensPerSecond": 800.0},
    ],
    "eval": [{"step": 20, "epoch": 1.0, "loss": 0.45, "metrics": {"accuracy": 0.8, "f1": 0.75}}],
    "uri": "s3://models/runs/bert-lora/history.jsonl",
}


def test_the_example_is_a_valid_status_history() -> None:
    # The typed status refuses unknown fields: the dashboard reads the names the trainer writes.
    FineTuneJobStatus.model_validate({"history": HISTORY, "artifacts": {"model": "s3://m/final"}})


def test_curves_are_the_history_series_in_step_order() -> None:
    assert views.curves(job(history=HISTORY)) == {
        "train_loss": [(10, 0.9), (20, 0.5)],
        "learning_rate": [(10, 2e-5), (20, 1e-5)],
        "tokens_per_second": [(10, 800.0), (20, 900.0)],
        "eval_loss": [(20, 0.45)],
        "eval_accuracy": [(20, 0.8)],
        "eval_f1": [(20, 0.75)],
    }


def test_a_job_without_history_has_no_curves() -> None:
    assert views.curves(job()) == {}
    assert views.curves({"metadata": {"namespace": "a", "name": "b"}}) == {}


def test_summary_row() -> None:
    row = views.job_summary(
        job(phase="Running", topology="2x8", progress={"step": 20, "totalSteps": 80, "percent": 25.0, "loss": 0.5})
    )
    assert row["key"] == "team-a/bert-lora"
    assert (row["phase"], row["step"], row["totalSteps"], row["percent"], row["loss"]) == ("Running", 20, 80, 25.0, 0.5)
    assert (row["task"], row["method"], row["model"], row["topology"]) == (
        "sequence-classification",
        "lora",
        "bert-base-uncased",
        "2x8",
    )


def test_a_new_job_is_pending_with_the_topology_its_spec_asks() -> None:
    row = views.job_summary(job())
    assert row["phase"] == "Pending" and row["topology"] == "2x8" and row["step"] is None


def test_artifacts_include_the_full_history_uri() -> None:
    obj = job(artifacts={"model": "s3://models/runs/bert-lora/final", "mergedModel": None}, history=HISTORY)
    assert views.artifacts(obj) == {
        "model": "s3://models/runs/bert-lora/final",
        "history": "s3://models/runs/bert-lora/history.jsonl",
    }


def test_hyperparameters_are_flat_scalars() -> None:
    assert views.hyperparameters(job()) == {
        "model": "bert-base-uncased",
        "task": "sequence-classification",
        "method": "lora",
        "training.epochs": 3,
        "training.learningRate": 2e-5,
    }


def test_events_newest_first() -> None:
    events: list[dict[str, Any]] = [
        {"type": "Normal", "reason": "Created", "message": "job", "lastTimestamp": "2026-01-01T00:00:01Z"},
        {"type": "Warning", "reason": "Restarted", "count": 2, "lastTimestamp": "2026-01-01T00:00:09Z"},
    ]
    rows = views.event_rows(events)
    assert [r["reason"] for r in rows] == ["Restarted", "Created"]
    assert rows[0]["count"] == 2 and rows[1]["count"] == 1
