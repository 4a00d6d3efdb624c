"""Distributed runs: the generated settings are accepted by transformers, and two trainer processes train a job.

The pure settings are table-tested in ``tests/unit/test_distributed_config.py``; here they meet the
libraries, and ``torchrun --nproc-per-node 2`` (gloo on CPU, launched with the argv the operator
uses) runs one causal-lm LoRA job through the trainer's command line to the end.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from finetune_api.distributed import torchrun_command
from finetune_api.validation import parse_spec
from finetune_trainer.distribution import training_kwargs
from tests.trainer import tiny, tiny_causal


def gpu_spec(**distributed: Any) -> Any:
    return parse_spec(
        {
            "model": {"name": "x"},
            "task": {"type": "causal-lm"},
            "dataset": {"name": "d"},
            "resources": {"nodes": 2, "gpusPerNode": 4},
            "distributed": distributed,
            "training": {"gradientCheckpointing": True},
        }
    )


@pytest.mark.parametrize("sharding", ["full_shard", "shard_grad_op", "hybrid_shard"])
def test_transformers_accepts_the_fsdp_settings(sharding: str, tmp_path: Path) -> None:
    from transformers import TrainingArguments

    kwargs = training_kwargs(
        gpu_spec(strategy="fsdp", fsdp={"shardingStrategy": sharding, "offloadParams": True}),
        "bf16",
        ["LlamaDecoderLayer"],
    )
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, **kwargs)
    plugin = args.fsdp_plugin_args
    assert plugin["fsdp_version"] == 2
    assert plugin["reshard_after_forward"] is (sharding != "shard_grad_op")
    assert plugin["cpu_offload"] is True
    assert plugin["transformer_cls_names_to_wrap"] == "LlamaDecoderLayer"
    assert plugin["activation_checkpointing"] is True and args.activation_checkpointing is False


@pytest.mark.parametrize("stage", [2, 3])
def test_the_deepspeed_integration_fills_every_auto_value(stage: int) -> None:
    pytest.importorskip("deepspeed", reason="DeepSpeed is installed only in GPU images (see tests/gpu/README.md)")
    from transformers import TrainingArguments
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig

    config = training_kwargs(
        gpu_spec(strategy="deepspeed", deepspeed={"stage": stage, "offloadOptimizer": True}), "bf16"
    )
    args = TrainingArguments(
        output_dir="/tmp/unused", per_device_train_batch_size=4, gradient_accumulation_steps=2, bf16=True, use_cpu=True
    )
    hf = HfTrainerDeepSpeedConfig(config["deepspeed"])
    hf.trainer_config_process(args)

    model = SimpleNamespace(config=SimpleNamespace(hidden_size=64))  # what the stage-3 bucket sizes read
    hf.trainer_config_finalize(args, model, num_training_steps=100)
    assert "auto" not in json.dumps(hf.config)
    assert hf.config["train_micro_batch_size_per_gpu"] == 4 and hf.config["gradient_accumulation_steps"] == 2


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Directory of the tiny random Llama and its locally trained tokenizer."""
    return tiny_causal.cached_tiny_causal(tmp_path_factory)


@pytest.mark.slow
@pytest.mark.distributed
def test_two_processes_train_one_job_to_the_end(tiny_llama: Path, tmp_path: Path) -> None:
    files = {
        "train": str(tiny.write_jsonl(tmp_path / "train.jsonl", tiny_causal.text_rows(64))),
        "validation": str(tiny.write_jsonl(tmp_path / "val.jsonl", tiny_causal.text_rows(16, seed=1))),
    }
    spec = tiny_causal.causal_spec(
        tiny_llama,
        {"type": "causal-lm", "format": "text"},
        files,
        {"type": "lora", "lora": {"r": 8, "alpha": 16, "dropout": 0.0}},
        maxSteps=12,
        learningRate=2e-2,
        evalStrategy="steps",
        evalSteps=6,
        saveStrategy="steps",
        saveSteps=6,
    )
    config = tmp_path / "spec.yaml"
    config.write_text(yaml.safe_dump(spec))
    out = tmp_path / "out"

    # The argv the operator puts in a pod with two processes, launched through this interpreter.
    two_process = parse_spec({**spec, "resources": {"gpusPerNode": 2}})
    program = ["-m", "finetune_trainer", "run", "--config", str(config), "--output-dir", str(out)]
    argv = torchrun_command(two_process, program)
    assert argv[:3] == ["torchrun", "--nnodes=1", "--nproc-per-node=2"]
    argv = [sys.executable, "-m", "torch.distributed.run", *argv[1:]]
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": "1",  # two processes on a shared CPU
    }
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-4000:]

    # Rank 0 alone prints the final metrics and writes the outputs.
    printed = [line for line in done.stdout.splitlines() if line.startswith('{"')]  # JSON, not the log dicts
    assert len(printed) == 1, done.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics == json.loads(printed[0])
    assert sorted(p.name for p in out.glob("metrics*.json")) == ["metrics.json"]
    assert (out / "adapter_model.safetensors").is_file()
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-12", "checkpoint-6"]
    # Each step took a batch on each rank: 12 steps x 2 ranks x 8 rows cover 3 epochs of 64 rows.
    assert metrics["global_step"] == 12
    assert metrics["epoch"] == pytest.approx(3.0)
    state = json.loads((out / "trainer_state.json").read_text())
    losses = [e["loss"] for e in state["log_history"] if "loss" in e]
    evals = [e["eval_loss"] for e in state["log_history"] if "eval_loss" in e]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.05, losses
    assert evals[1] < evals[0], evals
