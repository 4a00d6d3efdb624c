"""Compare the GPU-memory estimate with accelerate's ``estimate-memory`` and DeepSpeed's ZeRO model-state formulas.

Same model shapes for all three (built from configs on the meta device: nothing downloaded, no weights):

* ours: ``finetune_api.estimate`` model states (weights + gradients + optimizer states + step temporaries)
  per GPU for a full fine-tune with AdamW in bf16, single process and DeepSpeed ZeRO-2/ZeRO-3 over 8 GPUs;
  and the whole per-GPU total (activations at batch 1 x 2048 tokens, overhead) for reference;
* accelerate: ``accelerate.commands.estimate`` — ``calculate_maximum_sizes`` on the same meta model and
  ``estimate_training_usage`` for bfloat16 (model states for batch size 1, the largest of its parts, as
  ``accelerate estimate-memory`` prints it);
* DeepSpeed: the documented formulas of ``estimate_zero2_model_states_mem_needs`` (4P + 16P/N without
  offload) and ``estimate_zero3_model_states_mem_needs`` (4L + 18P/N), P parameters, L the largest
  module's parameters (DeepSpeed is not installed here; the formulas are evaluated directly).

    .venv/bin/python tests/benchmarks/bench_memory_estimate.py

Prints a Markdown table (GiB per GPU) for docs/benchmarks.md.
"""

from __future__ import annotations

from typing import Any

GIB = 2**30
GPUS = 8
SHAPES: dict[str, dict[str, Any]] = {
    "bert-base (seq-cls)": {
        "model_type": "bert",
        "hidden_size": 768,
        "intermediate_size": 3072,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "vocab_size": 30522,
        "max_position_embeddings": 512,
    },
    "Llama-2-7B": {
        "model_type": "llama",
        "hidden_size": 4096,
        "intermediate_size": 11008,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 32,
        "vocab_size": 32000,
        "dtype": "bfloat16",
    },
    "Llama-3-8B": {
        "model_type": "llama",
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "vocab_size": 128256,
        "dtype": "bfloat16",
    },
    "Qwen2-1.5B (tied)": {
        "model_type": "qwen2",
        "hidden_size": 1536,
        "intermediate_size": 8960,
        "num_hidden_layers": 28,
        "num_attention_heads": 12,
        "num_key_value_heads": 2,
        "vocab_size": 151936,
        "tie_word_embeddings": True,
        "dtype": "bfloat16",
    },
}


def spec_for(config: dict[str, Any], strategy: dict[str, Any] | None = None, gpus: int = 1) -> Any:
    from finetune_api.validation import parse_spec

    encoder = config["model_type"] == "bert"
    task = {"type": "sequence-classification", "labels": ["a", "b"]} if encoder else {"type": "causal-lm"}
    return parse_spec(
        {
            "model": {"name": "m"},
            "task": task,
            "dataset": {"name": "d"},
            "method": {"type": "full"},
            "training": {"batchSizePerDevice": 1, "maxSeqLength": 512 if encoder else 2048, "precision": "bf16"},
            "resources": {"nodes": max(gpus // 8, 1), "gpusPerNode": min(gpus, 8)},
            "distributed": strategy or {"strategy": "auto"},
        }
    )


def ours_states(config: dict[str, Any], strategy: dict[str, Any] | None = None, gpus: int = 1) -> tuple[int, int]:
    """(model states incl. step temporaries, whole per-GPU total) in bytes."""
    from finetune_api.estimate import estimate_memory

    estimate = estimate_memory(spec_for(config, strategy, gpus), config)
    e = estimate.per_gpu
    return e.weights + e.gradients + e.optimizer_states + e.overhead - estimate.runtime, e.total


def meta_model(config: dict[str, Any]) -> Any:
    import torch
    import transformers

    cfg = transformers.AutoConfig.for_model(**config)
    auto = (
        transformers.AutoModelForSequenceClassification
        if config["model_type"] == "bert"
        else transformers.AutoModelForCausalLM
    )
    with torch.device("meta"):
        return auto.from_config(cfg)


def accelerate_bf16(model: Any) -> int:
    """What ``accelerate estimate-memory`` prints as training memory for bfloat16 (batch size 1)."""
    from accelerate.commands.estimate import estimate_training_usage
    from accelerate.utils import calculate_maximum_sizes

    total, _ = calculate_maximum_sizes(model)
    return max(estimate_training_usage(total, "bfloat16").values())


def deepspeed_formulas(model: Any, gpus: int) -> tuple[float, float]:
    """DeepSpeed's documented ZeRO-2 and ZeRO-3 model-state needs per GPU without offload."""
    params = sum({p.data_ptr() if p.device.type != "meta" else id(p): p.numel() for p in model.parameters()}.values())
    largest = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())
    return 4 * params + 16 * params / gpus, 4 * largest + 18 * params / gpus


def main() -> int:
    zero2 = {"strategy": "deepspeed", "deepspeed": {"stage": 2}}
    zero3 = {"strategy": "deepspeed", "deepspeed": {"stage": 3}}
    print(
        "| model | params | ours 1 GPU (total) | accelerate bf16 | ours ZeRO-2 ×8 | DeepSpeed ZeRO-2 ×8 "
        "| ours ZeRO-3 ×8 | DeepSpeed ZeRO-3 ×8 |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, config in SHAPES.items():
        model = meta_model(config)
        params = sum(p.numel() for p in model.parameters())
        single, single_total = ours_states(config)
        z2, _ = ours_states(config, zero2, GPUS)
        z3, _ = ours_states(config, zero3, GPUS)
        ds2, ds3 = deepspeed_formulas(model, GPUS)
        cells = [
            f"{single / GIB:.1f} ({single_total / GIB:.1f})",
            f"{accelerate_bf16(model) / GIB:.1f}",
            f"{z2 / GIB:.1f}",
            f"{ds2 / GIB:.1f}",
            f"{z3 / GIB:.1f}",
            f"{ds3 / GIB:.1f}",
        ]
        print(f"| {name} | {params / 1e9:.2f}B | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
