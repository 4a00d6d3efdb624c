"""Distributed settings from the spec: DeepSpeed config, FSDP settings, torchrun argv (pure table tests)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from finetune_api.distributed import (
    NODE_RANK_FROM_JOB_INDEX,
    Rendezvous,
    deepspeed_config,
    resolve_strategy,
    torchrun_command,
    worker_shutdown_seconds,
    world_size,
)
from finetune_api.validation import parse_spec
from finetune_trainer.distribution import fsdp_settings, training_kwargs

PROGRAM = ["-m", "finetune_trainer", "run", "--config", "/etc/finetune/spec.yaml", "--output-dir", "/outputs"]


def spec(
    *,
    nodes: int = 1,
    gpus: int = 1,
    strategy: str = "auto",
    deepspeed: dict[str, Any] | None = None,
    fsdp: dict[str, Any] | None = None,
    **training: Any,
) -> Any:
    distributed: dict[str, Any] = {"strategy": strategy}
    if deepspeed is not None:
        distributed["deepspeed"] = deepspeed
    if fsdp is not None:
        distributed["fsdp"] = fsdp
    return parse_spec(
        {
            "model": {"name": "meta-llama/Llama-3.2-1B"},
            "task": {"type": "causal-lm", "format": "text"},
            "dataset": {"name": "some/dataset"},
            "training": training,
            "resources": {"nodes": nodes, "gpusPerNode": gpus},
            "distributed": distributed,
        }
    )


# ---- strategy ----


@pytest.mark.parametrize(
    ("nodes", "gpus", "strategy", "expected"),
    [
        (1, 0, "auto", "single"),
        (1, 1, "auto", "single"),
        (1, 2, "auto", "ddp"),
        (2, 1, "auto", "ddp"),
        (1, 1, "ddp", "single"),
        (2, 8, "ddp", "ddp"),
        (1, 1, "deepspeed", "deepspeed"),
        (4, 8, "fsdp", "fsdp"),
    ],
)
def test_resolved_strategy(nodes: int, gpus: int, strategy: str, expected: str) -> None:
    assert resolve_strategy(spec(nodes=nodes, gpus=gpus, strategy=strategy)) == expected


@pytest.mark.parametrize(("nodes", "gpus", "expected"), [(1, 0, 1), (1, 4, 4), (3, 8, 24), (2, 0, 2)])
def test_world_size_counts_one_process_per_gpu_or_per_cpu_pod(nodes: int, gpus: int, expected: int) -> None:
    assert world_size(spec(nodes=nodes, gpus=gpus)) == expected


# ---- DeepSpeed ----

AUTO_KEYS = ("train_micro_batch_size_per_gpu", "train_batch_size", "gradient_accumulation_steps", "gradient_clipping")


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_zero_stage_and_auto_values(stage: int) -> None:
    config = deepspeed_config(spec(strategy="deepspeed", deepspeed={"stage": stage}))
    zero = config["zero_optimization"]
    assert zero["stage"] == stage
    assert all(config[key] == "auto" for key in AUTO_KEYS)
    assert zero["reduce_bucket_size"] == "auto"
    assert ("stage3_gather_16bit_weights_on_model_save" in zero) is (stage == 3)
    if stage == 3:
        assert zero["stage3_gather_16bit_weights_on_model_save"] is True
        assert zero["stage3_prefetch_bucket_size"] == "auto"
        assert zero["stage3_param_persistence_threshold"] == "auto"
    assert "offload_optimizer" not in zero and "offload_param" not in zero
    assert "optimizer" not in config  # the Trainer builds the optimizer from training.optimizer
    json.dumps(config)  # goes into a ConfigMap as JSON


def test_default_deepspeed_options_are_stage_2() -> None:
    assert deepspeed_config(spec(strategy="deepspeed"))["zero_optimization"]["stage"] == 2


@pytest.mark.parametrize(
    ("options", "optimizer_offloaded", "params_offloaded"),
    [
        ({"stage": 2, "offloadOptimizer": True}, True, False),
        ({"stage": 3, "offloadOptimizer": True}, True, False),
        ({"stage": 3, "offloadParams": True}, False, True),
        ({"stage": 3, "offloadOptimizer": True, "offloadParams": True}, True, True),
    ],
)
def test_offload_to_pinned_cpu_memory(
    options: dict[str, Any], optimizer_offloaded: bool, params_offloaded: bool
) -> None:
    config = deepspeed_config(spec(strategy="deepspeed", deepspeed=options))
    zero = config["zero_optimization"]
    cpu = {"device": "cpu", "pin_memory": True}
    assert (zero.get("offload_optimizer") == cpu) is optimizer_offloaded
    assert (zero.get("offload_param") == cpu) is params_offloaded
    # DeepSpeed refuses a torch optimizer with offloaded optimizer state; its own AdamW takes the Trainer's values.
    if optimizer_offloaded:
        assert config["optimizer"] == {
            "type": "AdamW",
            "params": {"lr": "auto", "betas": "auto", "eps": "auto", "weight_decay": "auto"},
        }
    else:
        assert "optimizer" not in config


@pytest.mark.parametrize(
    ("spec_precision", "resolved", "bf16", "fp16"),
    [
        ("auto", None, "auto", "auto"),  # the operator: the GPU model is unknown, TrainingArguments fills it
        ("auto", "bf16", True, False),  # the trainer on an Ampere+ GPU
        ("auto", "fp16", False, True),  # the trainer on an older GPU
        ("bf16", None, True, False),
        ("fp16", None, False, True),
        ("fp32", None, False, False),
        ("auto", "fp32", False, False),
    ],
)
def test_precision_section_follows_the_resolved_precision(
    spec_precision: str, resolved: str | None, bf16: Any, fp16: Any
) -> None:
    config = deepspeed_config(spec(strategy="deepspeed", precision=spec_precision), resolved)
    assert config["bf16"]["enabled"] == bf16
    assert config["fp16"]["enabled"] == fp16
    assert config["fp16"]["loss_scale"] == 0  # dynamic loss scaling when fp16 is on


# ---- FSDP ----


@pytest.mark.parametrize(
    ("sharding", "reshard_after_forward"),
    [("full_shard", True), ("shard_grad_op", False), ("hybrid_shard", True)],
)
def test_fsdp_sharding_maps_to_fsdp2(sharding: str, reshard_after_forward: bool) -> None:
    settings = fsdp_settings(spec(gpus=8, strategy="fsdp", fsdp={"shardingStrategy": sharding}))
    assert settings.training_args["fsdp"] is True
    config = settings.training_args["fsdp_config"]
    assert config["version"] == 2
    assert config["reshard_after_forward"] is reshard_after_forward
    assert config["auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    assert config["state_dict_type"] == "FULL_STATE_DICT"
    assert config["cpu_offload"] is False
    assert "transformer_layer_cls_to_wrap" not in config  # the model's _no_split_modules decide
    json.dumps(settings.training_args)


def test_fsdp_offload_and_layer_classes() -> None:
    settings = fsdp_settings(
        spec(gpus=8, strategy="fsdp", fsdp={"offloadParams": True}, gradientCheckpointing=True),
        ["LlamaDecoderLayer"],
    )
    config = settings.training_args["fsdp_config"]
    assert config["cpu_offload"] is True
    assert config["transformer_layer_cls_to_wrap"] == ["LlamaDecoderLayer"]
    assert config["activation_checkpointing"] is True


@pytest.mark.parametrize(("nodes", "expected"), [(1, None), (3, {"dp_replicate_size": 3, "dp_shard_size": 8})])
def test_hybrid_sharding_replicates_across_nodes_and_shards_within(nodes: int, expected: Any) -> None:
    settings = fsdp_settings(spec(nodes=nodes, gpus=8, strategy="fsdp", fsdp={"shardingStrategy": "hybrid_shard"}))
    assert settings.parallelism == expected


# ---- TrainingArguments keywords ----


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({}, {}),
        ({"gpus": 4}, {}),  # DDP needs nothing beyond torchrun's environment
        ({"gpus": 4, "strategy": "ddp"}, {}),
        ({"gpus": 4, "strategy": "fsdp", "fsdp": {"shardingStrategy": "no_shard"}}, {}),  # unsharded FSDP is DDP
    ],
)
def test_strategies_without_extra_arguments(kwargs: dict[str, Any], expected: dict[str, Any]) -> None:
    assert training_kwargs(spec(**kwargs)) == expected


def test_deepspeed_training_kwargs_carry_the_config() -> None:
    s = spec(gpus=8, strategy="deepspeed", deepspeed={"stage": 3})
    assert training_kwargs(s, "bf16") == {"deepspeed": deepspeed_config(s, "bf16")}


def test_fsdp_training_kwargs_move_checkpointing_into_fsdp() -> None:
    out = training_kwargs(spec(gpus=8, strategy="fsdp", gradientCheckpointing=True))
    assert out["fsdp"] is True and out["fsdp_config"]["activation_checkpointing"] is True
    assert out["activation_checkpointing"] is False
    assert "parallelism_config" not in out


def test_hybrid_fsdp_training_kwargs_carry_a_parallelism_config() -> None:
    from accelerate.parallelism_config import ParallelismConfig

    out = training_kwargs(spec(nodes=2, gpus=4, strategy="fsdp", fsdp={"shardingStrategy": "hybrid_shard"}))
    assert out["parallelism_config"] == ParallelismConfig(dp_replicate_size=2, dp_shard_size=4)


# ---- torchrun ----


@pytest.mark.parametrize(
    ("nodes", "gpus", "rendezvous", "expected_options"),
    [
        (1, 0, None, ["--nnodes=1", "--nproc-per-node=1", "--max-restarts=0", "--standalone"]),
        (1, 8, None, ["--nnodes=1", "--nproc-per-node=8", "--max-restarts=0", "--standalone"]),
        (
            4,
            8,
            Rendezvous("ftj-llama-0.ftj-llama.team.svc"),
            [
                "--nnodes=4",
                "--nproc-per-node=8",
                "--max-restarts=0",
                f"--node-rank={NODE_RANK_FROM_JOB_INDEX}",
                "--master-addr=ftj-llama-0.ftj-llama.team.svc",
                "--master-port=29500",
            ],
        ),
        (
            2,
            1,
            Rendezvous("ftj-a-0.ftj-a", master_port=29400, node_rank=1),
            ["--nnodes=2", "--nproc-per-node=1", "--max-restarts=0", "--node-rank=1", "--master-addr=ftj-a-0.ftj-a",
             "--master-port=29400"],
        ),
        (
            2,
            8,
            Rendezvous("ftj-a-0.ftj-a", master_port=29400, backend="c10d", run_id="0b7c-uid"),
            ["--nnodes=2", "--nproc-per-node=8", "--max-restarts=0", "--rdzv-backend=c10d",
             "--rdzv-endpoint=ftj-a-0.ftj-a:29400", "--rdzv-id=0b7c-uid"],
        ),
    ],
    ids=["cpu-pod", "one-node", "static-4-nodes", "explicit-rank", "c10d"],
)  # fmt: skip
def test_torchrun_argv(nodes: int, gpus: int, rendezvous: Rendezvous | None, expected_options: list[str]) -> None:
    argv = torchrun_command(spec(nodes=nodes, gpus=gpus), PROGRAM, rendezvous)
    # The default 300 s grace period leaves the workers 290 s for their SIGTERM checkpoint.
    assert argv == ["torchrun", *expected_options, "--shutdown-timeout=290", "--module", *PROGRAM[1:]]
    assert all(isinstance(a, str) for a in argv)


@pytest.mark.parametrize(("grace", "expected"), [(300, 290), (30, 23), (8, 6), (1, 1), (86400, 86390)])
def test_workers_get_the_pods_grace_period_less_the_launchers_margin(grace: int, expected: int) -> None:
    assert worker_shutdown_seconds(grace) == expected
    job = spec()
    job.run_policy.termination_grace_period_seconds = grace
    assert f"--shutdown-timeout={expected}" in torchrun_command(job, PROGRAM)


def test_torchrun_runs_a_script_as_given() -> None:
    argv = torchrun_command(spec(), ["/app/train.py", "--flag"], launcher="/usr/local/bin/torchrun")
    assert argv[0] == "/usr/local/bin/torchrun" and argv[-2:] == ["/app/train.py", "--flag"]


def test_multi_node_needs_a_rendezvous() -> None:
    with pytest.raises(ValueError, match="headless Service"):
        torchrun_command(spec(nodes=2), PROGRAM)


def test_c10d_needs_a_run_id() -> None:
    with pytest.raises(ValueError, match="run_id"):
        torchrun_command(spec(nodes=2), PROGRAM, Rendezvous("a", backend="c10d"))
