"""The trainer's command line: validate checks spec and data without a model; errors exit 3 (config) or 4 (data)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from finetune_trainer.cli import main
from finetune_trainer.errors import EXIT_CONFIG, EXIT_DATA
from tests.trainer import tiny

REPO = Path(__file__).resolve().parents[2]


def manifest(spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "finetune.dev/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": "t"}, "spec": spec}


def write_config(tmp_path: Path, doc: Any) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def sentiment_spec(model_dir: Path, train: Path, **training: Any) -> dict[str, Any]:
    return tiny.spec_dict(
        model_dir,
        {"type": "sequence-classification", "labels": ["neg", "pos"]},
        {"train": str(train)},
        evalStrategy="no",
        saveStrategy="no",
        loadBestModelAtEnd=False,
        **training,
    )


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "finetune_trainer", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_validate_accepts_a_good_job(tmp_path: Path, tiny_bert: Path) -> None:
    train = tiny.write_jsonl(tmp_path / "train.jsonl", tiny.sentiment_rows(10))
    config = write_config(tmp_path, manifest(sentiment_spec(tiny_bert, train)))
    done = run_cli("validate", "--config", str(config))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("OK: sequence-classification with full; train 10 rows")


def test_validate_missing_column_exits_4_listing_the_columns(tmp_path: Path, tiny_bert: Path) -> None:
    rows = [{"review": r["text"], "label": r["label"]} for r in tiny.sentiment_rows(4)]
    train = tiny.write_jsonl(tmp_path / "train.jsonl", rows)
    config = write_config(tmp_path, sentiment_spec(tiny_bert, train))
    done = run_cli("validate", "--config", str(config))
    assert done.returncode == EXIT_DATA
    assert "data error:" in done.stderr
    assert "Columns present: review, label" in done.stderr
    assert "Traceback" not in done.stderr


def test_validate_label_outside_the_list_exits_4(tmp_path: Path, tiny_bert: Path, capsys) -> None:
    train = tiny.write_jsonl(tmp_path / "train.jsonl", [*tiny.sentiment_rows(4), {"text": "meh", "label": "neutral"}])
    config = write_config(tmp_path, sentiment_spec(tiny_bert, train))
    assert main(["validate", "--config", str(config)]) == EXIT_DATA
    assert "label 'neutral' is not in task.labels; allowed: neg, pos" in capsys.readouterr().err


def test_validate_bad_yaml_exits_3(tmp_path: Path, capsys) -> None:
    config = tmp_path / "job.yaml"
    config.write_text("spec:\n  model: [unclosed\n")
    assert main(["validate", "--config", str(config)]) == EXIT_CONFIG
    assert "not valid YAML" in capsys.readouterr().err


def test_validate_unknown_field_exits_3_with_its_path(tmp_path: Path, tiny_bert: Path, capsys) -> None:
    train = tiny.write_jsonl(tmp_path / "train.jsonl", tiny.sentiment_rows(4))
    spec = sentiment_spec(tiny_bert, train)
    spec["training"]["learningRat"] = 0.1
    config = write_config(tmp_path, manifest(spec))
    assert main(["validate", "--config", str(config)]) == EXIT_CONFIG
    assert "spec.training.learningRat: unknown field" in capsys.readouterr().err


def test_validate_qa_window_too_short_exits_4(tmp_path: Path, tiny_bert: Path, capsys) -> None:
    train = tiny.write_jsonl(tmp_path / "train.jsonl", tiny.question_rows(4))
    spec = tiny.spec_dict(
        tiny_bert,
        {"type": "question-answering", "docStride": 10},
        {"train": str(train)},
        maxSeqLength=16,
        evalStrategy="no",
        saveStrategy="no",
        loadBestModelAtEnd=False,
    )
    assert main(["validate", "--config", str(write_config(tmp_path, spec))]) == EXIT_DATA
    assert "set training.maxSeqLength to at least" in capsys.readouterr().err


def test_run_with_a_missing_model_directory_exits_3(tmp_path: Path, capsys) -> None:
    train = tiny.write_jsonl(tmp_path / "train.jsonl", tiny.sentiment_rows(4))
    config = write_config(tmp_path, sentiment_spec(tmp_path / "no-such-model", train))
    assert main(["run", "--config", str(config), "--output-dir", str(tmp_path / "out")]) == EXIT_CONFIG
    assert "model.path:" in capsys.readouterr().err


@pytest.mark.slow
def test_run_trains_and_prints_the_metrics(tmp_path: Path, tiny_bert: Path) -> None:
    train = tiny.write_csv(tmp_path / "train.csv", tiny.sentiment_rows(32))
    config = write_config(tmp_path, manifest(sentiment_spec(tiny_bert, train, maxSteps=4, learningRate=5e-3)))
    out = tmp_path / "out"
    done = run_cli("run", "--config", str(config), "--output-dir", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    printed = json.loads(done.stdout.strip().splitlines()[-1])
    assert printed["global_step"] == 4
    assert json.loads((out / "metrics.json").read_text()) == printed
