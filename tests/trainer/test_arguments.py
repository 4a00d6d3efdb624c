"""training_kwargs: the spec's training section as transformers 5 TrainingArguments keywords (table tests)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from finetune_api.validation import parse_spec
from finetune_trainer.arguments import DeviceCapability, resolve_precision, training_kwargs
from finetune_trainer.errors import ConfigError
from finetune_trainer.world import WorldInfo

CPU = DeviceCapability(kind="cpu")
AMPERE = DeviceCapability(kind="gpu", bf16=True)
TURING = DeviceCapability(kind="gpu", bf16=False)
ONE = WorldInfo()
TWO = WorldInfo(world_size=2, rank=1, local_rank=1)


def kwargs_for(
    training: dict[str, Any] | None = None,
    *,
    device: DeviceCapability = CPU,
    world: WorldInfo = ONE,
    distributed: dict[str, Any] | None = None,
    gpus: int = 1,
) -> dict[str, Any]:
    spec = parse_spec(
        {
            "model": {"name": "bert-base-uncased"},
            "task": {"type": "sequence-classification", "labels": ["neg", "pos"]},
            "dataset": {"name": "imdb"},
            "training": training or {},
            "resources": {"gpusPerNode": gpus},
        }
    )
    return training_kwargs(
        spec,
        "/out",
        world=world,
        device=device,
        metric_for_best_model="accuracy",
        greater_is_better=True,
        distributed_kwargs=distributed,
    )


TABLE: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    (
        "defaults",
        {},
        {
            "output_dir": "/out",
            "num_train_epochs": 3.0,
            "max_steps": -1,
            "per_device_train_batch_size": 16,
            "per_device_eval_batch_size": 16,
            "gradient_accumulation_steps": 1,
            "learning_rate": 2e-5,
            "warmup_steps": 0.0,
            "lr_scheduler_type": "linear",
            "weight_decay": 0.0,
            "max_grad_norm": 1.0,
            "optim": "adamw_torch",
            "train_sampling_strategy": "random",
            "seed": 42,
            "logging_steps": 10,
            "report_to": "none",
            "eval_strategy": "epoch",
            "save_strategy": "epoch",
            "save_total_limit": 2,
            "load_best_model_at_end": True,
            "metric_for_best_model": "accuracy",
            "greater_is_better": True,
        },
    ),
    ("max steps override epochs", {"maxSteps": 500}, {"max_steps": 500}),
    ("warmup ratio becomes a float warmup_steps", {"warmupRatio": 0.1}, {"warmup_steps": 0.1}),
    (
        "scheduler and optimiser",
        {"lrScheduler": "cosine", "optimizer": "adafactor"},
        {"lr_scheduler_type": "cosine", "optim": "adafactor"},
    ),
    (
        "accumulation and clipping",
        {"gradientAccumulationSteps": 8, "maxGradNorm": 0.5},
        {"gradient_accumulation_steps": 8, "max_grad_norm": 0.5},
    ),
    (
        "eval batch size",
        {"batchSizePerDevice": 8, "evalBatchSizePerDevice": 64},
        {"per_device_train_batch_size": 8, "per_device_eval_batch_size": 64},
    ),
    ("group by length", {"groupByLength": True}, {"train_sampling_strategy": "group_by_length"}),
    ("weight decay and seed", {"weightDecay": 0.01, "seed": 7}, {"weight_decay": 0.01, "seed": 7}),
    (
        "gradient checkpointing",
        {"gradientCheckpointing": True},
        {"activation_checkpointing": True, "activation_checkpointing_kwargs": {"use_reentrant": False}},
    ),
    (
        "step schedules",
        {"evalStrategy": "steps", "evalSteps": 50, "saveStrategy": "steps", "saveSteps": 100},
        {"eval_strategy": "steps", "eval_steps": 50, "save_strategy": "steps", "save_steps": 100},
    ),
    (
        "no evaluation",
        {"evalStrategy": "no", "saveStrategy": "no", "loadBestModelAtEnd": False, "saveTotalLimit": 5},
        {"eval_strategy": "no", "save_strategy": "no", "load_best_model_at_end": False, "save_total_limit": 5},
    ),
    ("trackers", {"reportTo": ["tensorboard", "mlflow"]}, {"report_to": ["tensorboard", "mlflow"]}),
    ("logging", {"loggingSteps": 5}, {"logging_steps": 5, "logging_first_step": True}),
]


@pytest.mark.parametrize(("name", "training", "expected"), TABLE, ids=[row[0] for row in TABLE])
def test_training_section_maps_to_training_arguments(
    name: str, training: dict[str, Any], expected: dict[str, Any]
) -> None:
    kwargs = kwargs_for(training)
    assert {key: kwargs.get(key) for key in expected} == expected


def test_no_metric_is_set_without_evaluation_or_best_model() -> None:
    kwargs = kwargs_for({"evalStrategy": "no", "saveStrategy": "no", "loadBestModelAtEnd": False})
    assert "metric_for_best_model" not in kwargs
    assert "eval_steps" not in kwargs and "save_steps" not in kwargs


PRECISION: list[tuple[str, DeviceCapability, dict[str, Any]]] = [
    ("auto", CPU, {"bf16": False, "fp16": False, "use_cpu": True}),
    ("auto", AMPERE, {"bf16": True, "fp16": False, "use_cpu": False}),
    ("auto", TURING, {"bf16": False, "fp16": True, "use_cpu": False}),
    ("fp32", AMPERE, {"bf16": False, "fp16": False, "use_cpu": False}),
    ("fp16", AMPERE, {"bf16": False, "fp16": True, "use_cpu": False}),
    ("bf16", AMPERE, {"bf16": True, "fp16": False, "use_cpu": False}),
]


@pytest.mark.parametrize(("precision", "device", "expected"), PRECISION)
def test_precision_follows_the_device(precision: str, device: DeviceCapability, expected: dict[str, Any]) -> None:
    kwargs = kwargs_for({"precision": precision}, device=device)
    assert {key: kwargs[key] for key in expected} == expected


@pytest.mark.parametrize(
    ("precision", "device", "hint"),
    [("bf16", CPU, "needs a GPU"), ("fp16", CPU, "needs a GPU"), ("bf16", TURING, "bfloat16")],
)
def test_mixed_precision_the_device_lacks_is_a_config_error(
    precision: str, device: DeviceCapability, hint: str
) -> None:
    with pytest.raises(ConfigError, match=hint) as err:
        resolve_precision(precision, device)
    assert "training.precision" in str(err.value)


def test_several_cpu_processes_use_gloo() -> None:
    assert kwargs_for(world=TWO)["ddp_backend"] == "gloo"
    assert "ddp_backend" not in kwargs_for(world=TWO, device=AMPERE)
    assert "ddp_backend" not in kwargs_for(world=ONE)


def test_distributed_kwargs_are_merged_last() -> None:
    deepspeed = {"deepspeed": {"zero_optimization": {"stage": 2}}, "activation_checkpointing": False}
    kwargs = kwargs_for({"gradientCheckpointing": True}, device=AMPERE, distributed=deepspeed)
    assert kwargs["deepspeed"] == deepspeed["deepspeed"]
    assert kwargs["activation_checkpointing"] is False


def test_every_key_is_a_training_argument_and_builds_one() -> None:
    from transformers import TrainingArguments

    kwargs = kwargs_for({"warmupRatio": 0.1, "groupByLength": True, "gradientCheckpointing": True, "maxSteps": 100})
    names = {f.name for f in dataclasses.fields(TrainingArguments)}
    assert set(kwargs) <= names
    args = TrainingArguments(**kwargs)
    assert args.get_warmup_steps(100) == 10
    assert args.train_sampling_strategy == "group_by_length"


def test_world_info_reads_the_launcher_environment() -> None:
    world = WorldInfo.from_env({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1"})
    assert (world.world_size, world.rank, world.local_rank, world.is_main) == (4, 3, 1, False)
    assert WorldInfo.from_env({}).is_main
