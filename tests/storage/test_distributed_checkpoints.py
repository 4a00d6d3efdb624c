"""Two trainer processes (torchrun, gloo on CPU) checkpoint to S3 - every rank's RNG state in the manifest - and a
second launch on a fresh disk resumes from there."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from finetune_api.distributed import torchrun_command
from finetune_api.validation import parse_spec
from finetune_trainer.checkpoint_store import MANIFEST, S3CheckpointStore
from finetune_trainer.job_location import JobLocation
from finetune_trainer.storage import S3Storage
from tests.cluster.fixture import MinIO
from tests.storage.trainer_runs import last_json_line, s3_output, sentiment_spec, trainer_env, write_config

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.distributed]


def torchrun(
    spec: dict[str, Any], config: Path, output_dir: Path, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    """The argv the operator puts in a pod with two processes, launched through this interpreter."""
    write_config(config, spec)
    program = ["-m", "finetune_trainer", "run", "--config", str(config), "--output-dir", str(output_dir)]
    argv = torchrun_command(parse_spec(spec), program)
    argv = [sys.executable, "-m", "torch.distributed.run", *argv[1:]]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-4000:]
    return done


def test_two_processes_checkpoint_to_s3_and_resume(
    minio: MinIO, bucket: str, s3_env: dict[str, str], tiny_bert: Path, sentiment_files: dict[str, Path], tmp_path: Path
) -> None:
    schedule: dict[str, Any] = {
        "evalStrategy": "no",
        "loadBestModelAtEnd": False,
        "saveStrategy": "steps",
        "saveSteps": 2,
        "saveTotalLimit": 3,
    }
    spec = sentiment_spec(tiny_bert, sentiment_files, s3_output(minio.endpoint, bucket), maxSteps=4, **schedule)
    spec["resources"] = {"gpusPerNode": 2}
    env = trainer_env(s3_env, FTJ_NAMESPACE="team-a", FTJ_NAME="two-procs")
    parsed = parse_spec(spec)
    location = JobLocation.from_spec(parsed, {"FTJ_NAMESPACE": "team-a", "FTJ_NAME": "two-procs"})
    store = S3CheckpointStore(S3Storage.for_location(parsed.output.s3), location)

    torchrun(spec, tmp_path / "first.yaml", tmp_path / "pod-1", env)

    manifest = store.latest()
    assert manifest is not None
    assert (manifest["globalStep"], manifest["worldSize"], manifest["nodes"]) == (4, 2, 1)
    assert {"rng_state_0.pth", "rng_state_1.pth", "adapter_model.safetensors", "optimizer.pt"} <= set(manifest["files"])

    # The job restarted with a longer schedule (allowed: the fingerprint covers weights, not the schedule).
    longer = {**spec, "training": {**spec["training"], "maxSteps": 8}}
    second = torchrun(longer, tmp_path / "second.yaml", tmp_path / "pod-2", env)

    metrics = last_json_line(second.stdout)
    assert metrics["global_step"] == 8
    assert round(metrics["train_steps_per_second"] * metrics["train_runtime"]) == 4  # steps 5..8 only
    state = json.loads((tmp_path / "pod-2" / "trainer_state.json").read_text())
    assert [e["step"] for e in state["log_history"] if "loss" in e] == list(range(1, 9))
    # Each rank's RNG state came down with the checkpoint the second launch resumed from.
    assert sorted(p.name for p in (tmp_path / "pod-2" / "checkpoint-4").glob("rng_state_*.pth")) == [
        "rng_state_0.pth",
        "rng_state_1.pth",
    ]
    final = store.storage.read_json(location.final.join(MANIFEST))
    assert final["resumedFrom"]["globalStep"] == 4 and final["worldSize"] == 2
    assert store.complete_steps() == [4, 6, 8]  # saveTotalLimit applies to S3 too: checkpoint-2 is gone
