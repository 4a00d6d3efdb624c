"""The trainer's status reporter: throttled, newest-wins, merged, never raising into training."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from pydantic import ValidationError
from transformers import TrainerControl, TrainerState, TrainingArguments

from finetune_api.status import Artifacts, FineTuneJobStatus, Progress
from finetune_trainer.status_reporter import ProgressCallback, StatusReporter


class Recorder:
    def __init__(self, fail: bool = False):
        self.calls: list[dict[str, Any]] = []
        self.fail = fail
        self.event = threading.Event()

    def __call__(self, status: dict[str, Any]) -> None:
        self.calls.append(status)
        self.event.set()
        if self.fail:
            raise RuntimeError("API server unreachable")


def test_updates_within_the_interval_collapse_into_one_patch() -> None:
    rec = Recorder()
    reporter = StatusReporter(rec, interval=0.5)
    reporter.update(FineTuneJobStatus(progress=Progress(step=1)))
    assert rec.event.wait(2)
    for step in range(2, 50):
        reporter.update(FineTuneJobStatus(progress=Progress(step=step), metrics={"eval_loss": 1.0 / step}))
    reporter.close()
    assert len(rec.calls) == 2
    assert rec.calls[-1] == {"progress": {"step": 49}, "metrics": {"eval_loss": 1.0 / 49}}


def test_pending_fields_merge() -> None:
    rec = Recorder()
    reporter = StatusReporter(rec, interval=60)
    reporter.update(FineTuneJobStatus(progress=Progress(step=0)))
    assert rec.event.wait(2)
    reporter.update(FineTuneJobStatus(metrics={"eval_accuracy": 0.9}))
    reporter.update(FineTuneJobStatus(progress=Progress(step=7, loss=0.3)))
    reporter.close()
    assert rec.calls[-1] == {"metrics": {"eval_accuracy": 0.9}, "progress": {"step": 7, "loss": 0.3}}


def test_failures_are_counted_not_raised() -> None:
    rec = Recorder(fail=True)
    reporter = StatusReporter(rec, interval=0)
    reporter.update(FineTuneJobStatus(progress=Progress(step=1)))
    reporter.close()
    assert reporter.failures == 1 and reporter.sent == 0


def test_progress_fields_from_trainer_state() -> None:
    rec = Recorder()
    reporter = StatusReporter(rec, interval=0)
    cb = ProgressCallback(reporter, global_batch_size=32)
    args = TrainingArguments(output_dir="/tmp/unused", report_to="none")
    state = TrainerState()
    state.max_steps, state.global_step, state.epoch = 100, 0, 0.0
    cb.on_train_begin(args, state, TrainerControl())
    time.sleep(0.05)
    state.global_step, state.epoch = 25, 0.5
    cb.on_log(args, state, TrainerControl(), logs={"loss": 0.7, "learning_rate": 1e-4, "eval_f1": 0.5})
    reporter.close()
    progress = rec.calls[-1]["progress"]
    assert progress["step"] == 25 and progress["totalSteps"] == 100 and progress["percent"] == 25.0
    assert progress["loss"] == 0.7 and progress["learningRate"] == 1e-4 and progress["epoch"] == 0.5
    assert progress["samplesPerSecond"] > 0 and progress["etaSeconds"] >= 0
    assert rec.calls[-1]["metrics"] == {"eval_f1": 0.5}


def test_only_world_process_zero_reports() -> None:
    rec = Recorder()
    reporter = StatusReporter(rec, interval=0)
    cb = ProgressCallback(reporter, global_batch_size=8)
    state = TrainerState()
    state.is_world_process_zero = False
    cb.on_log(TrainingArguments(output_dir="/tmp/unused", report_to="none"), state, TrainerControl(), logs={"loss": 1})
    reporter.close()
    assert rec.calls == []


def test_a_patch_carries_only_the_fields_set_in_camel_case() -> None:
    rec = Recorder()
    reporter = StatusReporter(rec, interval=0)
    reporter.update(FineTuneJobStatus(artifacts=Artifacts(latest_checkpoint="s3://b/ns/j/checkpoints/checkpoint-5/")))
    reporter.close()
    # restarts, conditions and phase belong to the operator: a default of theirs must not overwrite them.
    assert rec.calls == [{"artifacts": {"latestCheckpoint": "s3://b/ns/j/checkpoints/checkpoint-5/"}}]


def test_a_misspelt_status_field_fails() -> None:
    with pytest.raises(ValidationError):
        Progress(step=1, totalStep=3)  # type: ignore[call-arg]


def test_the_trainer_cannot_write_the_operators_fields() -> None:
    reporter = StatusReporter(Recorder(), interval=0)
    with pytest.raises(ValueError, match="phase"):
        reporter.update(FineTuneJobStatus(phase="Succeeded"))
    reporter.close()


def test_too_many_metrics_still_report_progress() -> None:
    rec = Recorder()
    reporter = StatusReporter(rec, interval=0)
    cb = ProgressCallback(reporter, global_batch_size=8)
    state = TrainerState()
    state.global_step = 3
    logs = {"loss": 0.5, **{f"eval_m{i}": 0.1 for i in range(100)}}
    cb.on_log(TrainingArguments(output_dir="/tmp/unused", report_to="none"), state, TrainerControl(), logs=logs)
    reporter.close()
    assert rec.calls[-1]["progress"]["step"] == 3 and "metrics" not in rec.calls[-1]
