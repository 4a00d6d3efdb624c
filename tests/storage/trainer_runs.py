"""Specs, configs and subprocess environments for runs of the trainer against MinIO."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from tests.trainer import tiny

SENTIMENT = {"type": "sequence-classification", "labels": ["neg", "pos"]}


def s3_output(endpoint: str, bucket: str, **options: Any) -> dict[str, Any]:
    """spec.output for a bucket of the MinIO at endpoint (path-style, prefix runs/)."""
    return {"s3": {"bucket": bucket, "prefix": "runs/", "endpoint": endpoint, "pathStyle": True}, **options}


def sentiment_spec(
    model_dir: Path | None,
    files: dict[str, Any],
    output: dict[str, Any],
    method: dict[str, Any] | None = None,
    **training: Any,
) -> dict[str, Any]:
    """A camelCase spec of a short sentiment run of the tiny BERT with S3 output (training options override)."""
    spec = tiny.spec_dict(
        model_dir or Path("unused"),
        SENTIMENT,
        {k: str(v) for k, v in files.items()},
        method or {"type": "lora"},
        **{"learningRate": 1e-2, **training},
    )
    spec["output"] = output
    return spec


def write_config(path: Path, spec: dict[str, Any]) -> Path:
    """The spec as a FineTuneJob manifest file."""
    doc = {"apiVersion": "finetune.dev/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": "t"}, "spec": spec}
    path.write_text(yaml.safe_dump(doc))
    return path


def trainer_env(s3_env: dict[str, str], **extra: str) -> dict[str, str]:
    """Environment of a trainer subprocess: MinIO credentials, offline hub, one thread per process."""
    env = {k: v for k, v in os.environ.items() if k not in ("FTJ_NAME", "FTJ_NAMESPACE", "KUBECONFIG")}
    return {
        **env,
        **s3_env,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
        **extra,
    }


def trainer_argv(config: Path, output_dir: Path) -> list[str]:
    """``python -m finetune_trainer run`` for a config and an output dir."""
    return [sys.executable, "-m", "finetune_trainer", "run", "--config", str(config), "--output-dir", str(output_dir)]


def last_json_line(stdout: str) -> dict[str, Any]:
    """The metrics JSON the CLI prints last."""
    lines = [line for line in stdout.splitlines() if line.startswith('{"')]
    assert lines, stdout[-2000:]
    return dict(json.loads(lines[-1]))


def wait_for(what: str, fn: Any, timeout: float = 60.0, interval: float = 0.1) -> Any:
    """Poll fn until it returns something truthy; fail naming what was awaited."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; last: {last!r}")
