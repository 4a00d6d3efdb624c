"""DeepSpeed and FSDP as ``TrainingArguments`` keyword arguments, from the spec's distributed section.

The operator needs only the launcher side (:mod:`finetune_api.distributed`: world size, strategy,
the DeepSpeed config it shows in the ConfigMap, the torchrun argv); what the Trainer is handed lives
here, beside the trainer that imports accelerate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from finetune_api.distributed import deepspeed_config, processes_per_node, resolve_strategy
from finetune_api.spec import FineTuneJobSpec


@dataclass(frozen=True)
class FsdpSettings:
    """FSDP settings: ``training_args`` go into ``TrainingArguments``; ``parallelism`` (hybrid sharding only)
    holds the keyword arguments of accelerate's ``ParallelismConfig`` (replicate across nodes, shard within)."""

    training_args: dict[str, Any]
    parallelism: dict[str, int] | None = None


def fsdp_settings(spec: FineTuneJobSpec, layer_classes: list[str] | None = None) -> FsdpSettings:
    """FSDP (version 2, the one transformers 5 supports going forward) settings from the spec.

    * ``full_shard`` re-shards parameters after the forward pass (ZeRO-3 like), ``shard_grad_op`` keeps them
      gathered until the backward pass (ZeRO-2 like);
    * ``hybrid_shard`` shards inside a node and replicates across nodes (a 2-D device mesh);
    * ``no_shard`` is plain data parallelism, which FSDP2 leaves to DDP: see :func:`training_kwargs`.

    Wrapping is per transformer block: ``layer_classes`` (e.g. ``["LlamaDecoderLayer"]``) when given, else the
    model's own ``_no_split_modules``. FSDP2 always trains the original parameters (DTensors), which is what
    peft adapters need (FSDP1's ``use_orig_params=True``).
    """
    options = spec.distributed.fsdp
    strategy = options.sharding_strategy if options else "full_shard"
    config: dict[str, Any] = {
        "version": 2,
        "reshard_after_forward": strategy != "shard_grad_op",
        "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
        "cpu_offload": bool(options and options.offload_params),
        "state_dict_type": "FULL_STATE_DICT",  # one Hugging Face checkpoint, loadable without FSDP
        "activation_checkpointing": spec.training.gradient_checkpointing,
        "cpu_ram_efficient_loading": False,
    }
    if layer_classes:
        config["transformer_layer_cls_to_wrap"] = list(layer_classes)
    parallelism = None
    if strategy == "hybrid_shard" and spec.resources.nodes > 1:
        parallelism = {"dp_replicate_size": spec.resources.nodes, "dp_shard_size": processes_per_node(spec)}
    return FsdpSettings(training_args={"fsdp": True, "fsdp_config": config}, parallelism=parallelism)


def training_kwargs(
    spec: FineTuneJobSpec, precision: str | None = None, layer_classes: list[str] | None = None
) -> dict[str, Any]:
    """``TrainingArguments`` keyword arguments for the spec's distribution strategy (empty for one process or DDP).

    Activation checkpointing under FSDP is FSDP's own (set in ``fsdp_config``), so the Trainer's
    ``activation_checkpointing`` (formerly ``gradient_checkpointing``) is switched off there: both together
    cost a redundant all-gather in the backward pass. Hybrid sharding adds accelerate's ``ParallelismConfig``
    (imported only then, so the operator never needs accelerate).
    """
    strategy = resolve_strategy(spec)
    if strategy == "deepspeed":
        return {"deepspeed": deepspeed_config(spec, precision)}
    if strategy != "fsdp":
        return {}
    options = spec.distributed.fsdp
    if options is not None and options.sharding_strategy == "no_shard":
        # Unsharded FSDP is data parallelism: FSDP2 has no such mode and leaves it to DDP.
        return {}
    settings = fsdp_settings(spec, layer_classes)
    out = dict(settings.training_args)
    if spec.training.gradient_checkpointing:
        out["activation_checkpointing"] = False
    if settings.parallelism is not None:
        from accelerate.parallelism_config import ParallelismConfig

        out["parallelism_config"] = ParallelismConfig(**settings.parallelism)
    return out
