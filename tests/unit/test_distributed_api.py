"""DeepSpeed config and world size generated from the spec."""

from __future__ import annotations

import pytest

from finetune_api.distributed import deepspeed_config, resolved_strategy, world_size
from finetune_api.validation import parse_spec
from tests.invalid_specs import with_changes


@pytest.mark.parametrize(
    ("nodes", "gpus", "world", "strategy"),
    [(1, 1, 1, "none"), (1, 0, 1, "none"), (1, 8, 8, "ddp"), (2, 8, 16, "ddp"), (3, 0, 3, "ddp")],
)
def test_world_size_and_auto_strategy(nodes: int, gpus: int, world: int, strategy: str) -> None:
    spec = parse_spec(with_changes(resources={"nodes": nodes, "gpusPerNode": gpus}))
    assert world_size(spec) == world
    assert resolved_strategy(spec) == strategy


def test_no_deepspeed_config_without_deepspeed() -> None:
    assert deepspeed_config(parse_spec(with_changes())) is None


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_zero_stage_and_auto_values(stage: int) -> None:
    spec = parse_spec(with_changes(distributed={"strategy": "deepspeed", "deepspeed": {"stage": stage}}))
    ds = deepspeed_config(spec)
    assert ds is not None
    assert ds["zero_optimization"]["stage"] == stage
    assert ds["train_micro_batch_size_per_gpu"] == "auto" and ds["bf16"] == {"enabled": "auto"}
    assert ("stage3_gather_16bit_weights_on_model_save" in ds["zero_optimization"]) == (stage == 3)
    assert "offload_optimizer" not in ds["zero_optimization"]


def test_offload_to_cpu() -> None:
    spec = parse_spec(
        with_changes(
            distributed={
                "strategy": "deepspeed",
                "deepspeed": {"stage": 3, "offloadOptimizer": True, "offloadParams": True},
            }
        )
    )
    zero = deepspeed_config(spec)["zero_optimization"]  # type: ignore[index]
    assert zero["offload_optimizer"] == {"device": "cpu", "pin_memory": True}
    assert zero["offload_param"] == {"device": "cpu", "pin_memory": True}
