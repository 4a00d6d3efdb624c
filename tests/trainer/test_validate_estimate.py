"""``validate --gpu-memory`` prints the memory estimate from config.json alone and says whether the job fits."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from finetune_trainer.cli import main
from finetune_trainer.errors import EXIT_CONFIG, EXIT_OK
from tests.trainer import tiny


def _job(tmp_path: Path, model_dir: Path, **training: Any) -> Path:
    train = tiny.write_jsonl(tmp_path / "train.jsonl", tiny.sentiment_rows(16))
    spec = tiny.spec_dict(
        model_dir,
        {"type": "sequence-classification", "labels": ["neg", "pos"]},
        {"train": str(train)},
        {"type": "full"},
        evalStrategy="no",
        saveStrategy="no",
        loadBestModelAtEnd=False,
        **training,
    )
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _mib(output: str, row: str) -> float:
    match = re.search(rf"^\s+{row}\s+([0-9.]+) MiB$", output, re.MULTILINE)
    assert match, output
    return float(match.group(1))


def test_validate_prints_the_estimate_table_and_fits(
    tiny_bert: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from transformers import AutoModelForSequenceClassification

    assert main(["validate", "--config", str(_job(tmp_path, tiny_bert)), "--gpu-memory", "80Gi"]) == EXIT_OK
    out = capsys.readouterr().out
    assert "FitsGPU: needs" in out and "GPUs have 80.0 GiB" in out
    # The weights row against the real model's bytes, loaded independently; full fine-tuning in float32
    # with AdamW: gradients as large as the weights, optimizer states twice (plus a step counter per tensor).
    model = AutoModelForSequenceClassification.from_pretrained(str(tiny_bert), num_labels=2)
    real = sum(p.nbytes for p in model.parameters()) / 2**20
    assert _mib(out, "weights") == pytest.approx(real, abs=0.05)
    assert _mib(out, "gradients") == pytest.approx(real, abs=0.05)
    assert _mib(out, "optimizer states") == pytest.approx(2 * real, abs=0.05)


def test_validate_refuses_a_job_that_does_not_fit_with_alternatives(
    tiny_bert: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = _job(tmp_path, tiny_bert, batchSizePerDevice=512, maxSeqLength=512)
    assert main(["validate", "--config", str(job), "--gpu-memory", "1Gi"]) == EXIT_CONFIG
    out = capsys.readouterr().out
    assert "DoesNotFit: needs" in out and "GPUs have 1.0 GiB" in out
    assert "gradient checkpointing" in out or "batch " in out


def test_validate_names_a_bad_gpu_memory(tiny_bert: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", "--config", str(_job(tmp_path, tiny_bert)), "--gpu-memory", "lots"]) == EXIT_CONFIG
    assert "--gpu-memory: 'lots' is not a memory size" in capsys.readouterr().err
