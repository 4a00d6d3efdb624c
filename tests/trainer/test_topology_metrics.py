"""Losses do not depend on the topology: 1 process, 2 processes and 2 nodes x 1 process log the same numbers.

Each task trains one step on a train set that is exactly one global batch (so every topology sees the
same rows in that step) at a learning rate that warmup keeps at 0 (so the final evaluation sees the
initial weights). The first logged loss, its gradient norm and the eval loss must then agree across
topologies; before the fix two processes logged twice the loss, eval loss and gradient norm of one.
The eval batch holds the whole eval set split over the processes, so a loss averaged per batch is the
mean over the same items everywhere.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from finetune_api.distributed import Rendezvous, torchrun_command
from finetune_api.validation import parse_spec
from tests.trainer import tiny, tiny_causal

pytestmark = [pytest.mark.slow, pytest.mark.distributed]

REPO = Path(__file__).resolve().parents[2]
TRAIN_ROWS = 8  # one global batch: 8 rows on one process, 4 on each of two
EVAL_ROWS = 8
PROBE = ["-m", "tests.trainer.topology_probe"]


def task_cases(tiny_bert: Path, tiny_llama: Path, data: Path) -> dict[str, dict[str, Any]]:
    """Spec dicts (one-process batch sizes) per task, on files written under ``data``."""

    def files(name: str, rows: Any) -> dict[str, str]:
        return {
            "train": str(tiny.write_jsonl(data / f"{name}-train.jsonl", rows(TRAIN_ROWS, 0))),
            "validation": str(tiny.write_jsonl(data / f"{name}-val.jsonl", rows(EVAL_ROWS, 1))),
        }

    encoder = {
        "sequence-classification": (
            {"type": "sequence-classification", "labels": ["neg", "pos"]},
            files("sentiment", tiny.sentiment_rows),
        ),
        "multi-label": (
            {
                "type": "sequence-classification",
                "multiLabel": True,
                "labels": sorted(tiny.TOPICS),
                "columns": {"label": "labels"},
            },
            files("topics", tiny.topic_rows),
        ),
        "token-classification": (
            {"type": "token-classification", "labels": tiny.NER_LABELS},
            files("entities", tiny.entity_rows),
        ),
        "question-answering": ({"type": "question-answering", "docStride": 16}, files("questions", tiny.question_rows)),
        "regression": ({"type": "regression"}, files("scores", tiny.score_rows)),
    }
    cases = {name: tiny.spec_dict(tiny_bert, task, f) for name, (task, f) in encoder.items()}
    lora = {"type": "lora", "lora": {"r": 4, "alpha": 8, "dropout": 0.0}}
    cases["causal-lm"] = tiny_causal.causal_spec(
        tiny_llama, {"type": "causal-lm", "format": "text"}, files("text", tiny_causal.text_rows)
    )
    cases["preference"] = tiny_causal.causal_spec(
        tiny_llama, {"type": "preference"}, files("pairs", tiny_causal.preference_rows), lora
    )
    cases["reward-modeling"] = tiny_causal.causal_spec(
        tiny_llama, {"type": "reward-modeling"}, files("reward-pairs", tiny_causal.preference_rows), lora
    )
    for spec in cases.values():
        spec["training"].update(
            maxSteps=1,
            warmupRatio=0.5,  # the only step warms up from a learning rate of 0: the weights stay
            evalStrategy="no",
            saveStrategy="no",
            loadBestModelAtEnd=False,
            loggingSteps=1,
        )
    return cases


def write_configs(
    cases: dict[str, dict[str, Any]], directory: Path, processes: int, accumulation: int = 1
) -> list[str]:
    """One config per task: one global batch split over ``processes`` and ``accumulation`` micro-batches."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, spec in cases.items():
        training = {
            **spec["training"],
            "batchSizePerDevice": TRAIN_ROWS // processes // accumulation,
            "gradientAccumulationSteps": accumulation,
            "evalBatchSizePerDevice": EVAL_ROWS // processes,
        }
        config = {**spec, "training": training}
        parse_spec(config)  # a bad case fails here, not inside a launched process
        path = directory / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config))
        paths.append(str(path))
    return paths


def probe_env() -> dict[str, str]:
    path = os.pathsep.join(str(REPO / p) for p in ("api", "operator", "trainer_image", "."))
    return {
        **os.environ,
        "PYTHONPATH": path,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": "1",
    }


def probed(outputs: list[subprocess.CompletedProcess[str]]) -> dict[str, dict[str, float]]:
    """The PROBE line rank 0 printed (exactly one among the processes)."""
    for done in outputs:
        assert done.returncode == 0, done.stderr[-4000:]
    lines = [line for done in outputs for line in done.stdout.splitlines() if line.startswith("PROBE ")]
    assert len(lines) == 1, [done.stdout for done in outputs]
    result: dict[str, dict[str, float]] = json.loads(lines[0].removeprefix("PROBE "))
    return result


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch(argv: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(argv, cwd=REPO, env=probe_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen[str]) -> subprocess.CompletedProcess[str]:
    try:
        stdout, stderr = process.communicate(timeout=600)
    except subprocess.TimeoutExpired:
        process.kill()
        stdout, stderr = process.communicate()
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def one_process(configs: list[str], out: Path) -> dict[str, dict[str, float]]:
    return probed([finish(launch([sys.executable, *PROBE, str(out), *configs]))])


def torchrun(spec: dict[str, Any], configs: list[str], out: Path, rendezvous: Rendezvous | None = None) -> list[str]:
    argv = torchrun_command(parse_spec(spec), [*PROBE, str(out), *configs], rendezvous)
    return [sys.executable, "-m", "torch.distributed.run", *argv[1:]]


def two_processes(spec: dict[str, Any], configs: list[str], out: Path) -> dict[str, dict[str, float]]:
    pod = {**spec, "resources": {"gpusPerNode": 2}}  # the pod the operator builds for 2 processes
    return probed([finish(launch(torchrun(pod, configs, out)))])


def two_nodes(spec: dict[str, Any], configs: list[str], out: Path) -> dict[str, dict[str, float]]:
    """Two pods of one process each, meeting on loopback as pods meet through the job's Service."""
    pods = {**spec, "resources": {"nodes": 2, "gpusPerNode": 0}}
    port = free_port()
    nodes = [
        launch(torchrun(pods, configs, out / f"node-{rank}", Rendezvous("127.0.0.1", master_port=port, node_rank=rank)))
        for rank in (0, 1)
    ]
    return probed([finish(node) for node in nodes])


@pytest.fixture(scope="module")
def cases(tiny_bert: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    tiny_llama = tiny_causal.cached_tiny_causal(tmp_path_factory)
    return task_cases(tiny_bert, tiny_llama, tmp_path_factory.mktemp("topology-data"))


@pytest.fixture(scope="module")
def single(cases: dict[str, dict[str, Any]], tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, float]]:
    root = tmp_path_factory.mktemp("one-process")
    return one_process(write_configs(cases, root / "configs", 1), root / "out")


def assert_same_metrics(single: dict[str, dict[str, float]], other: dict[str, dict[str, float]]) -> None:
    assert set(other) == set(single)
    for task, metrics in single.items():
        for key, value in metrics.items():
            assert other[task][key] == pytest.approx(value, rel=2e-3, abs=1e-4), (task, key, single, other)


def test_one_process_logs_the_loss_of_an_untrained_model(single: dict[str, dict[str, float]]) -> None:
    import math

    # Two balanced labels on random features: the loss of a coin toss, ln 2 (not 2 ln 2).
    assert single["sequence-classification"]["loss"] == pytest.approx(math.log(2), abs=0.05)
    assert single["sequence-classification"]["eval_loss"] == pytest.approx(math.log(2), abs=0.05)
    # Preference starts with the policy equal to its reference: the DPO loss is exactly ln 2.
    assert single["preference"]["loss"] == pytest.approx(math.log(2), abs=1e-3)
    assert all(metrics["grad_norm"] > 0 for metrics in single.values()), single


def test_two_processes_log_what_one_process_logs(
    cases: dict[str, dict[str, Any]], single: dict[str, dict[str, float]], tmp_path: Path
) -> None:
    spec = next(iter(cases.values()))
    assert_same_metrics(single, two_processes(spec, write_configs(cases, tmp_path / "configs", 2), tmp_path / "out"))


def test_two_nodes_accumulating_two_micro_batches_log_what_one_process_logs(
    cases: dict[str, dict[str, Any]], single: dict[str, dict[str, float]], tmp_path: Path
) -> None:
    # Accumulation rides along: a per-batch mean the Trainer took for a normalised loss was also
    # left undivided by the accumulation steps.
    spec = next(iter(cases.values()))
    configs = write_configs(cases, tmp_path / "configs", 2, accumulation=2)
    assert_same_metrics(single, two_nodes(spec, configs, tmp_path / "out"))
