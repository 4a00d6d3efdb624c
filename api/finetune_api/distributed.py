"""Distributed-training configs generated from the spec (pure; shared by operator and trainer).

The operator puts the DeepSpeed config into the job's ConfigMap; the trainer passes the
same dict to TrainingArguments. Values the Hugging Face integration can derive from the
training arguments (batch sizes, clipping, precision) are left as "auto", so the spec
stays the one place they are set.
"""

from __future__ import annotations

from typing import Any

from finetune_api.spec import FineTuneJobSpec


def processes_per_node(spec: FineTuneJobSpec) -> int:
    """Trainer processes per pod: one per GPU, one on CPU-only pods."""
    return max(spec.resources.gpus_per_node, 1)


def world_size(spec: FineTuneJobSpec) -> int:
    """Trainer processes across all pods."""
    return spec.resources.nodes * processes_per_node(spec)


def resolved_strategy(spec: FineTuneJobSpec) -> str:
    """The strategy that runs: auto becomes ddp with several processes, none with one."""
    strategy = spec.distributed.strategy
    if strategy == "auto":
        return "ddp" if world_size(spec) > 1 else "none"
    return strategy


def deepspeed_config(spec: FineTuneJobSpec) -> dict[str, Any] | None:
    """The DeepSpeed config for strategy deepspeed, else None."""
    if spec.distributed.strategy != "deepspeed":
        return None
    opts = spec.distributed.deepspeed
    stage = opts.stage if opts else 2
    zero: dict[str, Any] = {
        "stage": stage,
        "overlap_comm": True,
        "contiguous_gradients": True,
        "reduce_bucket_size": "auto",
    }
    if stage == 3:
        zero.update(
            {
                "stage3_prefetch_bucket_size": "auto",
                "stage3_param_persistence_threshold": "auto",
                # Save a loadable 16-bit model, not only the partitioned shards.
                "stage3_gather_16bit_weights_on_model_save": True,
            }
        )
    if opts and opts.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if opts and opts.offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    return {
        "train_micro_batch_size_per_gpu": "auto",
        "train_batch_size": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "bf16": {"enabled": "auto"},
        "fp16": {"enabled": "auto"},
        "zero_optimization": zero,
    }
