"""The spec's training section as transformers 5 ``TrainingArguments`` keyword arguments.

:func:`training_kwargs` is pure: the same spec, world and device always give the same dict,
so it is table-tested without torch and reused by tasks that build TRL configs
(``SFTConfig(**kwargs)``) instead of ``TrainingArguments``. Only :meth:`DeviceCapability.detect`
looks at the machine.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from finetune_trainer.errors import ConfigError
from finetune_trainer.world import WorldInfo

if TYPE_CHECKING:
    from finetune_api.spec import FineTuneJobSpec

ResolvedPrecision = Literal["bf16", "fp16", "fp32"]


@dataclass(frozen=True)
class DeviceCapability:
    """What the accelerator of this process can do, as far as the arguments care."""

    kind: Literal["cpu", "gpu"] = "cpu"
    bf16: bool = False  # the GPU computes in bfloat16 (Ampere and newer)

    @classmethod
    def detect(cls) -> DeviceCapability:
        """Probe torch for a GPU and its bf16 support."""
        import torch

        if torch.cuda.is_available():
            return cls(kind="gpu", bf16=bool(torch.cuda.is_bf16_supported()))
        return cls(kind="cpu", bf16=False)


def resolve_precision(requested: str, device: DeviceCapability) -> ResolvedPrecision:
    """auto -> bf16 on GPUs that have it, fp16 on other GPUs, fp32 on CPU; explicit choices are checked."""
    if requested == "auto":
        if device.kind == "cpu":
            return "fp32"
        return "bf16" if device.bf16 else "fp16"
    if requested == "fp32":
        return "fp32"
    if device.kind == "cpu":
        raise ConfigError(
            f"training.precision: {requested} needs a GPU, and this process runs on CPU; "
            "set precision to auto (fp32 on CPU) or fp32"
        )
    if requested == "bf16" and not device.bf16:
        raise ConfigError(
            "training.precision: this GPU has no bfloat16 support (it needs Ampere or newer); "
            "set precision to auto (fp16 here) or fp16"
        )
    return "bf16" if requested == "bf16" else "fp16"


def resolve_optimizer(requested: str, device: DeviceCapability) -> str:
    """auto -> fused AdamW on GPUs (one kernel per parameter group instead of one per tensor), AdamW on CPU."""
    if requested != "auto":
        return requested
    return "adamw_torch_fused" if device.kind == "gpu" else "adamw_torch"


def training_kwargs(
    spec: FineTuneJobSpec,
    output_dir: str | Path,
    *,
    world: WorldInfo,
    device: DeviceCapability,
    metric_for_best_model: str,
    greater_is_better: bool,
    distributed_kwargs: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """TrainingArguments keyword arguments for this spec on this world and device.

    ``metric_for_best_model``/``greater_is_better`` come from the task (see
    ``tasks.base.best_model_metric``). ``distributed_kwargs`` (DeepSpeed / FSDP settings from
    ``finetune_trainer.distribution``) are merged last, so they win over anything set here.
    """
    t = spec.training
    precision = resolve_precision(t.precision, device)
    kwargs: dict[str, Any] = {
        "output_dir": str(output_dir),
        # Schedule
        "num_train_epochs": t.epochs,
        "max_steps": t.max_steps if t.max_steps is not None else -1,
        "per_device_train_batch_size": t.batch_size_per_device,
        "per_device_eval_batch_size": t.eval_batch_size_per_device or t.batch_size_per_device,
        "gradient_accumulation_steps": t.gradient_accumulation_steps,
        # Optimiser
        "learning_rate": t.learning_rate,
        # transformers 5 dropped warmup_ratio: a float in [0, 1) given to warmup_steps is a ratio.
        "warmup_steps": float(t.warmup_ratio),
        "lr_scheduler_type": t.lr_scheduler,
        "weight_decay": t.weight_decay,
        "max_grad_norm": t.max_grad_norm,
        "optim": resolve_optimizer(t.optimizer, device),
        # Precision and memory
        "bf16": precision == "bf16",
        "fp16": precision == "fp16",
        "use_cpu": device.kind == "cpu",
        # Sampling
        "train_sampling_strategy": "group_by_length" if t.group_by_length else "random",
        "seed": t.seed,
        # Logging
        "logging_strategy": "steps",
        "logging_steps": t.logging_steps,
        "logging_first_step": True,
        "report_to": list(t.report_to) if t.report_to else "none",
        # Evaluation and checkpoints
        "eval_strategy": t.eval_strategy,
        "save_strategy": t.save_strategy,
        "save_total_limit": t.save_total_limit,
        "load_best_model_at_end": t.load_best_model_at_end,
    }
    if t.gradient_checkpointing:
        # transformers 5 renamed gradient_checkpointing to activation_checkpointing. Non-reentrant
        # checkpointing also works when only adapters train (frozen inputs without requires_grad).
        kwargs["activation_checkpointing"] = True
        kwargs["activation_checkpointing_kwargs"] = {"use_reentrant": False}
    if t.liger_kernels:
        kwargs["use_liger_kernel"] = True  # the Trainer patches the model with liger-kernel's kernels
    if t.compile:
        kwargs["torch_compile"] = True
    if t.eval_strategy == "steps":
        kwargs["eval_steps"] = t.eval_steps
    if t.save_strategy == "steps":
        kwargs["save_steps"] = t.save_steps
    if t.eval_strategy != "no" or t.load_best_model_at_end:
        kwargs["metric_for_best_model"] = metric_for_best_model
        kwargs["greater_is_better"] = greater_is_better
    if world.world_size > 1 and device.kind == "cpu":
        # CPU processes talk over gloo; GPUs keep accelerate's default (nccl).
        kwargs["ddp_backend"] = "gloo"
    if distributed_kwargs:
        kwargs.update(distributed_kwargs)
    return kwargs
