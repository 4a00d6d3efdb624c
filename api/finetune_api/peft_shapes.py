"""The trainable tensors peft adds for IA3, prefix tuning and p-tuning, from the model's shape alone.

Each is float32 (peft creates them at the default dtype) and trains; the frozen base and the
task head's trainable copy are counted by :func:`finetune_api.estimate.model_tensors` as for the
other adapters. The shapes follow peft 0.21:

* **IA3** (``IA3Layer``): one vector per adapted linear layer, ``(out_features, 1)`` rescaling its
  output, or ``(1, in_features)`` rescaling the input of a feed-forward module.
* **prefix tuning** (``PrefixEncoder``): an embedding of ``numVirtualTokens x (layers x 2 x
  token_dim)`` keys and values, or with ``projection`` an embedding of ``token_dim`` and a two-layer
  MLP ``token_dim -> encoderHiddenSize -> layers x 2 x token_dim``. With grouped-query attention
  peft sizes the prefix for the key/value heads: ``token_dim = head_dim x key/value heads``.
* **p-tuning** (``PromptEncoder``): an embedding of ``numVirtualTokens x hidden`` and an MLP
  ``hidden -> h -> h -> hidden``, or a two-layer bidirectional LSTM of ``h`` units and an MLP
  ``2h -> 2h -> hidden`` (``h`` = ``encoderHiddenSize``, default the model's hidden size).
"""

from __future__ import annotations

from finetune_api.model_shapes import EstimateUnavailable, ModelShape, Param
from finetune_api.spec import FineTuneJobSpec, Ia3Options, PrefixTuningOptions, PTuningOptions

Shape = tuple[int, ...]

# peft's TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING / ..._FEEDFORWARD_MODULES_MAPPING for our families.
DEFAULT_IA3_MODULES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "bert": (("key", "value", "output.dense"), ("output.dense",)),
    "roberta": (("key", "value", "output.dense"), ("output.dense",)),
    "llama": (("k_proj", "v_proj", "down_proj"), ("down_proj",)),
    "mistral": (("k_proj", "v_proj", "down_proj"), ("down_proj",)),
    "qwen2": (("q_proj", "v_proj", "down_proj"), ("down_proj",)),
    "qwen3": (("q_proj", "v_proj", "down_proj"), ("down_proj",)),
}


def _linear(out_features: int, in_features: int, bias: bool = True) -> list[Shape]:
    return [(out_features, in_features), *([(out_features,)] if bias else [])]


def ia3_modules(spec: FineTuneJobSpec, shape: ModelShape) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(target, feed-forward) module names: method.ia3's, else peft's defaults for the architecture."""
    opts = spec.method.ia3 or Ia3Options()
    if opts.target_modules:
        return tuple(opts.target_modules), tuple(opts.feedforward_modules or ())
    if shape.model_type not in DEFAULT_IA3_MODULES:
        raise EstimateUnavailable(f"method.ia3.targetModules: no default modules for model type {shape.model_type}")
    targets, feedforward = DEFAULT_IA3_MODULES[shape.model_type]
    return targets, tuple(opts.feedforward_modules) if opts.feedforward_modules is not None else feedforward


def ia3_vectors(spec: FineTuneJobSpec, shape: ModelShape) -> list[Shape]:
    """One vector per adapted linear layer (peft matches a module by its name or a dotted suffix of it)."""
    targets, feedforward = ia3_modules(spec, shape)
    out: list[Shape] = []
    for p in shape.params:
        if not _is_weight_of_linear(p):
            continue
        module = p.name.removesuffix(".weight")
        if not any(module == t or module.endswith(f".{t}") for t in targets):
            continue
        n_out, n_in = p.shape
        out.append((1, n_in) if any(module.endswith(f) for f in feedforward) else (n_out, 1))
    return out


def _is_weight_of_linear(p: Param) -> bool:
    return p.linear and p.name.endswith(".weight")


def prefix_tensors(spec: FineTuneJobSpec, shape: ModelShape) -> list[Shape]:
    """The prefix encoder's embedding (and, with projection, its MLP)."""
    opts = spec.method.prefix_tuning or PrefixTuningOptions()
    token_dim = shape.head_dim * shape.kv_heads
    kv = shape.layers * 2 * token_dim
    if not opts.projection:
        return [(opts.num_virtual_tokens, kv)]
    hidden = opts.encoder_hidden_size or shape.hidden
    return [(opts.num_virtual_tokens, token_dim), *_linear(hidden, token_dim), *_linear(kv, hidden)]


def prompt_encoder_tensors(spec: FineTuneJobSpec, shape: ModelShape) -> list[Shape]:
    """P-tuning's embedding and its MLP or LSTM encoder."""
    opts = spec.method.p_tuning or PTuningOptions()
    d = shape.hidden
    h = opts.encoder_hidden_size or d
    out: list[Shape] = [(opts.num_virtual_tokens, d)]
    if opts.encoder_type == "mlp":
        return out + _linear(h, d) + _linear(h, h) + _linear(d, h)
    for layer_input in (d, 2 * h):  # two layers, each in both directions
        out += 2 * [(4 * h, layer_input), (4 * h, h), (4 * h,), (4 * h,)]
    return out + _linear(2 * h, 2 * h) + _linear(d, 2 * h)
