"""The activation estimate against what autograd really keeps, measured on CPU in float32.

A forward pass in training mode runs under ``saved_tensors_hooks``, which sees every tensor autograd saves
for the backward pass; their storages (each counted once, parameters left out) plus the logits the
output keeps alive are what the estimate's ``forward_bytes`` models. Llama-shaped model, scaled dot-product
attention (CPU flash kernel: no sequence x sequence scores), full fine-tuning, LoRA, IA3 and the virtual-token
methods.
"""

from __future__ import annotations

from typing import Any

import pytest

from finetune_api.activations import forward_bytes
from finetune_api.model_shapes import model_shape
from finetune_api.validation import parse_spec

CONFIG = {
    "model_type": "llama",
    "vocab_size": 1024,
    "hidden_size": 256,
    "intermediate_size": 704,
    "num_hidden_layers": 4,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "tie_word_embeddings": False,
    "dtype": "float32",
}
BATCH, LENGTH = 4, 128
LORA = {"r": 8, "targetModules": ["q_proj", "v_proj"], "dropout": 0.0}
# The same settings as the peft configs in _model.
VIRTUAL_TOKENS: dict[str, dict[str, Any]] = {
    "prompt-tuning": {"promptTuning": {"numVirtualTokens": 20}},
    "prefix-tuning": {"prefixTuning": {"numVirtualTokens": 20}},
    "p-tuning": {"pTuning": {"numVirtualTokens": 20, "encoderHiddenSize": 128}},
}


def _model(method: str) -> Any:
    import torch
    from peft import (
        IA3Config,
        LoraConfig,
        PrefixTuningConfig,
        PromptEncoderConfig,
        PromptTuningConfig,
        TaskType,
        get_peft_model,
    )
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = {k: v for k, v in CONFIG.items() if k not in ("model_type", "dtype")}
    model = LlamaForCausalLM(LlamaConfig(**config, attn_implementation="sdpa")).train()
    if method == "lora":
        model = get_peft_model(model, LoraConfig(r=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0))
    elif method == "ia3":  # peft's defaults for llama: k_proj, v_proj, down_proj (feed-forward)
        model = get_peft_model(model, IA3Config(task_type=TaskType.CAUSAL_LM))
    elif method == "prompt-tuning":
        model = get_peft_model(model, PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=20))
    elif method == "prefix-tuning":
        model = get_peft_model(model, PrefixTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=20))
    elif method == "p-tuning":
        config = PromptEncoderConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=20, encoder_hidden_size=128)
        model = get_peft_model(model, config)
    return model


def _measured(model: Any) -> int:
    import torch

    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    ids = torch.randint(0, CONFIG["vocab_size"], (BATCH, LENGTH), generator=torch.Generator().manual_seed(0))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(input_ids=ids, labels=ids)
    logits = out.logits.untyped_storage()
    if logits.data_ptr() not in saved:
        saved[logits.data_ptr()] = logits.nbytes()  # alive in the output, not saved by autograd
    return sum(saved.values())


@pytest.mark.parametrize("method", ["full", "lora", "ia3", "prompt-tuning", "prefix-tuning", "p-tuning"])
def test_forward_activations_within_ten_percent_of_autograd(method: str) -> None:
    options = {"lora": {"lora": LORA}, **VIRTUAL_TOKENS}.get(method, {})
    spec = parse_spec(
        {
            "model": {"name": "m"},
            "task": {"type": "causal-lm", "format": "text"},
            "dataset": {"name": "d"},
            "method": {"type": method, **options},
            "training": {"batchSizePerDevice": BATCH, "maxSeqLength": LENGTH, "precision": "fp32"},
            "resources": {"gpusPerNode": 1},
        }
    )
    estimate = forward_bytes(spec, model_shape(CONFIG, "causal-lm"), "fp32")
    measured = _measured(_model(method))
    assert estimate == pytest.approx(measured, rel=0.10), (estimate, measured, estimate / measured)
