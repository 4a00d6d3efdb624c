"""The tensors of a Hugging Face model, from its ``config.json`` alone (no torch, no weights).

The GPU-memory estimate (:mod:`finetune_api.estimate`) needs every parameter of the model the
trainer builds for a task: its shape, whether it belongs to a linear layer (which LoRA can adapt
and bitsandbytes quantises), the layer's leaf name (what ``method.lora.targetModules`` names) and
whether it is part of the task head (which trains under feature extraction and is saved beside an
adapter). Two families cover the architectures the trainer's tests and guides use:

* BERT-shaped encoders (``bert``, ``roberta``, ``xlm-roberta``);
* Llama-shaped decoders (``llama``, ``mistral``, ``qwen2``, ``qwen3``), with grouped-query
  attention, gated MLP and tied or untied output embeddings.

The tensor lists are pinned against models built by transformers from the same configs
(``tests/unit/test_estimate_accuracy.py``).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

ENCODER_TYPES = ("bert", "roberta", "xlm-roberta")
DECODER_TYPES = ("llama", "mistral", "qwen2", "qwen3")
SUPPORTED_MODEL_TYPES = ENCODER_TYPES + DECODER_TYPES

# peft's default LoRA targets for these families (TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING).
DEFAULT_LORA_TARGETS = {"encoder": ("query", "value"), "decoder": ("q_proj", "v_proj")}


class EstimateUnavailable(ValueError):
    """The estimator has no model of this architecture or method; the message says which."""


class UnknownArchitecture(EstimateUnavailable):
    """The config names an architecture the estimator has no shape table for."""


# Tasks whose model is AutoModelForCausalLM (a language-model head over the vocabulary).
LM_HEAD_TASKS = ("causal-lm", "preference", "orpo", "kto")
# Tasks whose model is AutoModelForSequenceClassification with one output (a score or a reward).
SCALAR_TASKS = ("regression", "reward-modeling")


@dataclass(frozen=True)
class Param:
    """One parameter tensor of the model."""

    name: str  # dotted path, as in named_parameters()
    shape: tuple[int, ...]
    linear: bool = False  # a linear layer's weight, shape (out_features, in_features)
    head: bool = False  # part of the task head (beside the pretrained body)
    quantisable: bool = False  # a linear weight that bitsandbytes turns into 4-bit

    @property
    def numel(self) -> int:
        """Number of values."""
        return math.prod(self.shape)

    @property
    def leaf(self) -> str:
        """The module's leaf name: ``encoder.layer.0.attention.self.query.weight`` -> ``query``."""
        parts = self.name.split(".")
        return parts[-2] if len(parts) > 1 else parts[0]

    @property
    def layer_index(self) -> int | None:
        """Index of the transformer layer holding the parameter (``model.layers.3.mlp...`` -> 3), if any."""
        parts = self.name.split(".")
        for before, part in itertools.pairwise(parts):
            if before in ("layer", "layers") and part.isdigit():
                return int(part)
        return None

    def in_module(self, name: str) -> bool:
        """Whether the parameter belongs to a module of that name (a dotted path component)."""
        return name in self.name.split(".")[:-1]


@dataclass(frozen=True)
class ModelShape:
    """What the estimator needs to know about one model built for one task."""

    model_type: str
    family: str  # encoder | decoder
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    gated_mlp: bool
    params: tuple[Param, ...]
    dtype: str  # the checkpoint's dtype (what from_pretrained(dtype="auto") loads)
    logits_over_vocab: bool  # a language-model head: logits of vocab size per token

    @property
    def total(self) -> int:
        """Every parameter, counted once (tied embeddings once)."""
        return sum(p.numel for p in self.params)

    @property
    def head_params(self) -> tuple[Param, ...]:
        """The task head's parameters."""
        return tuple(p for p in self.params if p.head)

    def largest_layer(self) -> int:
        """Parameters of the largest repeated block or embedding (what ZeRO-3 gathers at once)."""
        blocks: dict[str, int] = {}
        for p in self.params:
            parts = p.name.split(".")
            key = ".".join(parts[:3]) if "layer" in parts[1:3] or "layers" in parts[1:3] else p.name
            blocks[key] = blocks.get(key, 0) + p.numel
        return max(blocks.values())


def _int(config: Mapping[str, Any], key: str, default: int | None = None) -> int:
    value = config.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise UnknownArchitecture(f"config.json: {key} must be a positive integer, got {value!r}")
    return value


def _linear(name: str, n_in: int, n_out: int, bias: bool, *, head: bool = False, quant: bool = True) -> list[Param]:
    out = [Param(f"{name}.weight", (n_out, n_in), linear=True, head=head, quantisable=quant)]
    if bias:
        out.append(Param(f"{name}.bias", (n_out,), head=head))
    return out


def _norm(name: str, hidden: int, bias: bool) -> list[Param]:
    out = [Param(f"{name}.weight", (hidden,))]
    if bias:
        out.append(Param(f"{name}.bias", (hidden,)))
    return out


def _config_dtype(config: Mapping[str, Any]) -> str:
    dtype = config.get("dtype") or config.get("torch_dtype") or "float32"
    return dtype if dtype in ("float32", "bfloat16", "float16") else "float32"


def _encoder_params(c: Mapping[str, Any], task: str, labels: int) -> list[Param]:
    h, inter, layers = _int(c, "hidden_size"), _int(c, "intermediate_size"), _int(c, "num_hidden_layers")
    prefix = "bert" if c["model_type"] == "bert" else "roberta"
    params = [
        Param(f"{prefix}.embeddings.word_embeddings.weight", (_int(c, "vocab_size"), h)),
        Param(f"{prefix}.embeddings.position_embeddings.weight", (_int(c, "max_position_embeddings", 512), h)),
        Param(f"{prefix}.embeddings.token_type_embeddings.weight", (_int(c, "type_vocab_size", 2), h)),
        *_norm(f"{prefix}.embeddings.LayerNorm", h, True),
    ]
    for i in range(layers):
        base = f"{prefix}.encoder.layer.{i}"
        for proj in ("query", "key", "value"):
            params += _linear(f"{base}.attention.self.{proj}", h, h, True)
        params += _linear(f"{base}.attention.output.dense", h, h, True)
        params += _norm(f"{base}.attention.output.LayerNorm", h, True)
        params += _linear(f"{base}.intermediate.dense", h, inter, True)
        params += _linear(f"{base}.output.dense", inter, h, True)
        params += _norm(f"{base}.output.LayerNorm", h, True)
    if task == "sequence-classification" or task in SCALAR_TASKS:
        if prefix == "bert":  # BertForSequenceClassification classifies the pooled [CLS] vector
            params += _linear("bert.pooler.dense", h, h, True)
            params += _linear("classifier", h, labels, True, head=True)
        else:  # Roberta's head has its own dense layer instead of the pooler
            params += _linear("classifier.dense", h, h, True, head=True)
            params += _linear("classifier.out_proj", h, labels, True, head=True)
    elif task == "token-classification":
        params += _linear("classifier", h, labels, True, head=True)
    elif task == "question-answering":
        params += _linear("qa_outputs", h, 2, True, head=True)
    else:
        raise UnknownArchitecture(f"task.type {task} needs a decoder model; {c['model_type']} is an encoder")
    return params


def _decoder_params(c: Mapping[str, Any], task: str, labels: int) -> list[Param]:
    h, inter, layers = _int(c, "hidden_size"), _int(c, "intermediate_size"), _int(c, "num_hidden_layers")
    heads = _int(c, "num_attention_heads")
    kv = _int(c, "num_key_value_heads", heads)
    hd = _int(c, "head_dim", h // heads) if c.get("head_dim") is not None else h // heads
    mtype = c["model_type"]
    qkv_bias = mtype == "qwen2" or bool(c.get("attention_bias", False))
    o_bias = bool(c.get("attention_bias", False))
    mlp_bias = bool(c.get("mlp_bias", False))
    vocab = _int(c, "vocab_size")
    # The generic question-answering class keeps the body under "transformer"; Mistral's own uses "model".
    body = "transformer" if task == "question-answering" and mtype != "mistral" else "model"
    params = [Param(f"{body}.embed_tokens.weight", (vocab, h))]
    for i in range(layers):
        base = f"{body}.layers.{i}"
        params += _linear(f"{base}.self_attn.q_proj", h, heads * hd, qkv_bias)
        params += _linear(f"{base}.self_attn.k_proj", h, kv * hd, qkv_bias)
        params += _linear(f"{base}.self_attn.v_proj", h, kv * hd, qkv_bias)
        params += _linear(f"{base}.self_attn.o_proj", heads * hd, h, o_bias)
        if mtype == "qwen3":
            params += _norm(f"{base}.self_attn.q_norm", hd, False) + _norm(f"{base}.self_attn.k_norm", hd, False)
        params += _linear(f"{base}.mlp.gate_proj", h, inter, mlp_bias)
        params += _linear(f"{base}.mlp.up_proj", h, inter, mlp_bias)
        params += _linear(f"{base}.mlp.down_proj", inter, h, mlp_bias)
        params += _norm(f"{base}.input_layernorm", h, False) + _norm(f"{base}.post_attention_layernorm", h, False)
    params += _norm(f"{body}.norm", h, False)
    if task in LM_HEAD_TASKS:
        if not c.get("tie_word_embeddings", False):
            # The output embeddings: never quantised (bitsandbytes keeps lm_head in full precision).
            params += _linear("lm_head", h, vocab, False, quant=False)
    elif task == "sequence-classification" or task in SCALAR_TASKS:
        params += _linear("score", h, labels, False, head=True)
    elif task == "token-classification":
        params += _linear("score", h, labels, True, head=True)
    elif task == "question-answering":
        params += _linear("qa_outputs", h, 2, True, head=True)
    return params


def model_shape(config: Mapping[str, Any], task: str, labels: int = 2) -> ModelShape:
    """The model the trainer builds for ``task`` (with ``labels`` outputs for classification) from ``config``.

    Raises :class:`UnknownArchitecture` for a ``model_type`` outside the two families, naming the ones known.
    """
    mtype = config.get("model_type")
    if mtype not in SUPPORTED_MODEL_TYPES:
        raise UnknownArchitecture(
            f"config.json: model_type {mtype!r} has no shape table for the memory estimate; "
            f"known: {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    family = "encoder" if mtype in ENCODER_TYPES else "decoder"
    params = _encoder_params(config, task, labels) if family == "encoder" else _decoder_params(config, task, labels)
    last = params[-1]
    if last.linear:
        # transformers keeps the module of the model's last parameter unquantised: a head without a bias
        # (the decoders' score layer) stays in full precision, one with a bias is quantised like the body.
        params[-1] = replace(last, quantisable=False)
    heads = _int(config, "num_attention_heads")
    h = _int(config, "hidden_size")
    head_dim = config.get("head_dim") or h // heads
    return ModelShape(
        model_type=str(mtype),
        family=family,
        hidden=h,
        layers=_int(config, "num_hidden_layers"),
        heads=heads,
        kv_heads=int(config.get("num_key_value_heads") or heads),
        head_dim=int(head_dim),
        intermediate=_int(config, "intermediate_size"),
        vocab=_int(config, "vocab_size"),
        gated_mlp=family == "decoder",
        params=tuple(params),
        dtype=_config_dtype(config),
        logits_over_vocab=task in LM_HEAD_TASKS,
    )
