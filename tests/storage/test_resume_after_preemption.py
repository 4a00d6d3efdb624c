"""Preemption: the trainer process is SIGKILLed right after a checkpoint reached S3, and the same command on a fresh
disk continues from that checkpoint - no step trained twice - to the metrics of an uninterrupted run."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from finetune_api.validation import parse_spec
from finetune_trainer.checkpoint_store import MANIFEST, S3CheckpointStore
from finetune_trainer.job_location import JobLocation
from finetune_trainer.storage import S3Storage
from tests.cluster.fixture import MinIO
from tests.storage.trainer_runs import (
    last_json_line,
    s3_output,
    sentiment_spec,
    trainer_argv,
    trainer_env,
    wait_for,
    write_config,
)

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

STEPS = 30


def run_to_the_end(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-4000:]
    return done


def steps_trained(metrics: dict[str, Any]) -> int:
    """Optimiser steps the last trainer call ran (train_steps_per_second is over that call only)."""
    return round(metrics["train_steps_per_second"] * metrics["train_runtime"])


def test_a_killed_trainer_resumes_from_s3_on_a_fresh_disk(
    minio: MinIO, bucket: str, s3_env: dict[str, str], tiny_bert: Path, sentiment_files: dict[str, Path], tmp_path: Path
) -> None:
    spec = sentiment_spec(
        tiny_bert,
        sentiment_files,
        s3_output(minio.endpoint, bucket),
        maxSteps=STEPS,
        evalStrategy="steps",
        evalSteps=5,
        saveStrategy="steps",
        saveSteps=5,
        saveTotalLimit=2,
    )
    config = write_config(tmp_path / "job.yaml", spec)
    parsed = parse_spec(spec)

    def store_of(name: str) -> S3CheckpointStore:
        location = JobLocation.from_spec(parsed, {"FTJ_NAMESPACE": "team-a", "FTJ_NAME": name})
        return S3CheckpointStore(S3Storage.for_location(parsed.output.s3), location)

    # The reference: the same job, never interrupted.
    reference = last_json_line(
        run_to_the_end(
            trainer_argv(config, tmp_path / "reference"),
            trainer_env(s3_env, FTJ_NAMESPACE="team-a", FTJ_NAME="reference"),
        ).stdout
    )

    # The preempted pod: killed the moment its first checkpoint counts in S3.
    env = trainer_env(s3_env, FTJ_NAMESPACE="team-a", FTJ_NAME="preempted")
    store = store_of("preempted")
    first = subprocess.Popen(
        trainer_argv(config, tmp_path / "pod-1"), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_for("a complete checkpoint in S3", store.complete_steps, timeout=300, interval=0.05)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(30)
    assert first.returncode == -signal.SIGKILL
    latest = store.latest()
    assert latest is not None
    resumed_at = latest["globalStep"]
    assert resumed_at < STEPS
    assert store.storage.read_json(store.location.final.join(MANIFEST)) is None

    # The replacement pod: the same command on an empty disk.
    second = run_to_the_end(trainer_argv(config, tmp_path / "pod-2"), env)

    metrics = last_json_line(second.stdout)
    assert f"resuming from {store.location.checkpoint(resumed_at)} (global step {resumed_at})" in second.stderr
    assert metrics["global_step"] == STEPS
    assert steps_trained(metrics) == STEPS - resumed_at
    assert steps_trained(reference) == STEPS
    state = json.loads((tmp_path / "pod-2" / "trainer_state.json").read_text())
    logged_steps = [e["step"] for e in state["log_history"] if "loss" in e]
    assert logged_steps == list(range(1, STEPS + 1))  # steps before the checkpoint came with it, each once
    final = store.storage.read_json(store.location.final.join(MANIFEST))
    assert final["resumedFrom"]["globalStep"] == resumed_at
    for key in ("eval_loss", "eval_accuracy", "eval_f1_macro"):
        assert metrics[key] == pytest.approx(reference[key], abs=2e-3), key
