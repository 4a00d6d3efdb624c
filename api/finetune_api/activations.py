"""Activation and overhead bytes of one trainer process, from the transformer's shapes.

Activations are what autograd keeps from the forward pass for the backward pass, counted per token
per layer from the operations the two model families run (scaled dot-product attention, whose
fused kernels keep no sequence x sequence score matrix):

* a norm keeps its input (RMSNorm also its float32 normalised copy; Liger's RMSNorm only its input);
* a linear layer keeps its input only when its weight trains (full) or carries a LoRA adapter; under
  autocast each LoRA adapter keeps its own 16-bit copy (peft casts the input to the adapter's dtype);
* attention keeps queries, keys, values and its output (fused kernels write the output in the layout
  o_proj reads, so one tensor serves both); SDPA and eager attention keep the key/value heads repeated
  to the query heads (a padded batch gives SDPA a mask, and its grouped-query path takes none);
* the MLP keeps what its activation function and the gate product need (Liger's SwiGLU recomputes SiLU);
* under mixed precision with float32 weights (autocast), the 16-bit copy of every weight a
  matmul used stays saved for the backward pass.

With gradient checkpointing only each layer's input is kept, and one layer is recomputed at a time.
A frozen body with no trainable input (feature extraction) keeps nothing. On top of what the layers
keep, the step peaks either in the loss's backward or in one layer's backward (its gradients of
activations), whichever is larger (:func:`loss_peak_bytes`). torch.compile has no term: what Inductor
recomputes instead of saving is left out, so the estimate is the eager bound.

Overhead is what the allocator also holds (optimizer-step temporaries, DDP gradient buckets)
plus what it cannot see (CUDA context, cuBLAS and NCCL workspaces) and fragmentation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from finetune_api.spec import LoraOptions, PromptTuningOptions, PTuningOptions

if TYPE_CHECKING:
    from finetune_api.model_shapes import ModelShape
    from finetune_api.spec import FineTuneJobSpec

# CUDA context, cuBLAS workspace and NCCL buffers: memory the process holds outside PyTorch's allocator.
RUNTIME_BYTES = 768 * 1024**2
TRL_TOKEN_TILE, TRL_VOCAB_TILE = 4096, 32768  # TRL's fused LM head (chunked log-probabilities)
# Tasks whose batch holds chosen and rejected sequences side by side.
PAIRED_TASKS = ("preference", "orpo", "reward-modeling")
# Tasks whose loss goes through TRL's fused (tiled) LM head; ORPO's trainer makes the whole logits.
FUSED_HEAD_TASKS = ("causal-lm", "kto")
FRAGMENTATION = 0.05  # allocator blocks reserved but not allocated, as a fraction of what is allocated


def resolved_fp32(spec: FineTuneJobSpec) -> bool:
    """Whether the run computes in float32."""
    from finetune_api.estimate import resolved_precision

    return resolved_precision(spec) == "fp32"


def tokens_per_step(spec: FineTuneJobSpec) -> tuple[int, int]:
    """(sequences, sequence length) of one micro-batch at the longest: padded or packed to maxSeqLength.

    A pairwise batch (DPO, ORPO, reward modelling) runs chosen and rejected answers together (KTO's KL batch runs
    without gradients, so it keeps nothing); prompt tuning and p-tuning prepend their tokens.
    """
    seqs = spec.training.batch_size_per_device * (2 if spec.task.type in PAIRED_TASKS else 1)
    length = spec.training.max_seq_length
    if spec.method.type == "prompt-tuning":
        length += (spec.method.prompt_tuning or PromptTuningOptions()).num_virtual_tokens
    elif spec.method.type == "p-tuning":
        length += (spec.method.p_tuning or PTuningOptions()).num_virtual_tokens
    return seqs, length


def _stream_bytes(spec: FineTuneJobSpec, shape: ModelShape, precision: str) -> int:
    """Bytes per value of the residual stream: the weights' dtype (DeepSpeed casts the model to 16-bit)."""
    from finetune_api.distributed import resolve_strategy
    from finetune_api.estimate import DTYPE_BYTES, shards_parameters

    if resolve_strategy(spec) == "deepspeed" and precision != "fp32":
        return 2
    if spec.method.type == "qlora" and not shards_parameters(spec):
        return 4  # prepare_model_for_kbit_training upcast the unquantised layers
    return DTYPE_BYTES[shape.dtype]


def _saves_input(spec: FineTuneJobSpec, shape: ModelShape, leaf: str) -> bool:
    from finetune_api.estimate import lora_targets

    if spec.method.type == "full":
        return True
    return spec.method.type in ("lora", "qlora") and leaf in lora_targets(spec, shape)


def _kv_saved(spec: FineTuneJobSpec, shape: ModelShape) -> int:
    """Values per token of the keys (or values) attention keeps. Grouped-query attention keeps the key/value
    heads as they are, except where transformers repeats them to the query heads first: eager attention, and
    SDPA whenever it gets a mask (a padded or packed batch: SDPA's grouped-query path takes no mask). ``auto``
    may be SDPA (without the flash-attn package), so it is counted as SDPA."""
    if spec.training.attention in ("flash_attention_2", "flex_attention"):
        return shape.kv_heads * shape.head_dim
    return shape.heads * shape.head_dim


def _output_in_place(spec: FineTuneJobSpec) -> bool:
    """Fused attention kernels (SDPA, FlashAttention) write their output as (batch, sequence, heads, dim), so
    the transpose back and ``contiguous()`` before o_proj copy nothing: one tensor serves the attention's
    backward and o_proj's. Eager attention's output is a fresh (batch, heads, sequence, dim) matmul result."""
    return spec.training.attention != "eager"


def _adapter_copies(spec: FineTuneJobSpec, shape: ModelShape, precision: str) -> bool:
    """Whether each LoRA adapter keeps its own copy of its input: peft casts the input to the adapter's dtype
    (float32, or bfloat16 where TRL casts a quantised model's adapters) and autocast casts it back to 16-bit
    for the matmul, so adapters that read the same input (q, k and v) each save a separate 16-bit copy."""
    from finetune_api.estimate import TRL_TASKS

    if spec.method.type not in ("lora", "qlora") or precision == "fp32":
        return False
    adapter = 2 if spec.method.type == "qlora" and spec.task.type in TRL_TASKS else 4
    return adapter != _stream_bytes(spec, shape, precision)


def _inputs_kept(saves: Callable[[str], bool], leaves: tuple[str, ...], copies: bool) -> int:
    """Inputs kept by linear layers that read the same tensor: one, or one copy per adapter."""
    kept = [saves(x) for x in leaves]
    return sum(kept) if copies else int(any(kept))


def layer_bytes_per_token(spec: FineTuneJobSpec, shape: ModelShape, precision: str) -> int:
    """Bytes one transformer layer keeps for the backward pass, per token."""
    a = 4 if precision == "fp32" else 2
    sb = _stream_bytes(spec, shape, precision)
    h, i = shape.hidden, shape.intermediate
    q = shape.heads * shape.head_dim
    saves = lambda leaf: _saves_input(spec, shape, leaf)  # noqa: E731
    total = 0
    if shape.family == "decoder":
        liger = spec.training.liger_kernels
        # RMSNorm keeps its float32 input; the normalised copy only when its weight trains (for that gradient).
        # Liger's RMSNorm keeps its input as it came and a float32 reciprocal RMS per token, and recomputes.
        norm = 4 + (sb if spec.method.type in ("full", "freeze") else 0)
        total += 2 * (sb * h + 4 if liger else norm * h)
        copies = _adapter_copies(spec, shape, precision)
        qkv_in = _inputs_kept(saves, ("q_proj", "k_proj", "v_proj"), copies)
        total += a * (h * qkv_in + q + 2 * _kv_saved(spec, shape) + q)
        if copies or not _output_in_place(spec):
            total += a * q * saves("o_proj")  # o_proj's input is a copy of the attention output
        total += 4 * shape.heads  # attention log-sum-exp (float32)
        if spec.training.attention == "eager":
            total += a * shape.heads * tokens_per_step(spec)[1]  # the softmax probabilities, per query
        mlp_in = _inputs_kept(saves, ("gate_proj", "up_proj"), copies)
        # gate and up outputs, SiLU's output and the product (down_proj's input); Liger's SwiGLU keeps only gate
        # and up and recomputes the rest.
        total += a * (h * mlp_in + (2 if liger else 3) * i + i * saves("down_proj"))
    else:
        total += 2 * sb * h  # two LayerNorm inputs
        qkv_in = any(saves(x) for x in ("query", "key", "value"))
        total += a * (h * qkv_in + 4 * h + h * saves("dense") + h * saves("dense") + 2 * i)
        total += 2 * h  # dropout masks after attention and MLP
    if spec.method.type == "ia3":
        total += a * _ia3_saved(spec, shape)
    opts = spec.method.lora or LoraOptions()
    if spec.method.type in ("lora", "qlora") and opts.dropout > 0:
        from finetune_api.estimate import lora_targets

        adapted = len(lora_targets(spec, shape))
        total += adapted * (a * h + h)  # each adapter's dropped-out input and its mask
    return total


def _ia3_saved(spec: FineTuneJobSpec, shape: ModelShape) -> int:
    """Values per token one layer's IA3 vectors keep for their own gradients: a feed-forward vector scales its
    layer's input and keeps it (in_features), the others scale the output and keep that (out_features)."""
    from finetune_api.peft_shapes import ia3_vectors

    kept = sum(n_in if n_out == 1 else n_out for n_out, n_in in ia3_vectors(spec, shape))
    return kept // shape.layers


def _autocast_copies(spec: FineTuneJobSpec, shape: ModelShape, precision: str) -> int:
    """16-bit copies of float32 weights that autocast makes and autograd keeps until the backward pass."""
    from finetune_api.distributed import resolve_strategy

    if precision == "fp32" or _stream_bytes(spec, shape, precision) != 4:
        return 0
    if resolve_strategy(spec) == "deepspeed" or spec.method.type == "feature-extraction":
        return 0
    return sum(2 * p.numel for p in shape.params if p.linear and not (spec.method.type == "qlora" and p.quantisable))


def loss_peak_bytes(spec: FineTuneJobSpec, shape: ModelShape) -> int:
    """What the language-model loss holds at its peak. causal-lm (TRL's SFT trainer) never makes the whole
    logits: see below. Otherwise the peak is in the loss's backward (the trainer has dropped the model's
    output, so the 16-bit logits are gone by then): the float32 log-softmax the loss saved, the gradient the
    negative log-likelihood hands it, and the gradient of the logits it makes, three float32 values per token
    per vocabulary entry. Liger's fused linear cross-entropy never makes the logits: it runs chunks of tokens
    through the output layer (chunk = tokens / ceil(vocab / hidden), to a power of two), holding one chunk's
    logits and their gradient, plus the gradient of the hidden states it computes in the forward."""
    if not shape.logits_over_vocab:
        return 0
    seqs, length = tokens_per_step(spec)
    tokens = seqs * length
    if spec.task.type in FUSED_HEAD_TASKS:
        # TRL's SFT trainer (and its KTO trainer, with the same fused head) projects through the output layer
        # in tiles of up to 4096 tokens x 32768 vocabulary entries (16-bit under autocast), keeping a copy of
        # the final hidden states, and accumulates their gradient in float32 (it turns Liger's fused
        # cross-entropy off for this head).
        a = 4 if resolved_fp32(spec) else 2
        tile = min(tokens, TRL_TOKEN_TILE) * min(shape.vocab, TRL_VOCAB_TILE) * a
        return tile + tokens * shape.hidden * (4 + a)
    if spec.training.liger_kernels:
        chunk = 1 << max(0, (-(-tokens // -(-shape.vocab // shape.hidden)) - 1).bit_length())
        return 2 * min(chunk, tokens) * shape.vocab * 4 + tokens * shape.hidden * 4  # float32, at the most
    return 3 * tokens * shape.vocab * 4


def activation_bytes(spec: FineTuneJobSpec, shape: ModelShape, precision: str) -> int:
    """Bytes of activations at the peak of one training step, per GPU: what every layer keeps for the backward
    pass (only its input under gradient checkpointing) and, on top, the larger of the loss's backward peak and
    one layer's working set (the gradients of its activations; under checkpointing also its recomputed
    activations). The two come one after the other: the loss's buffers are freed before the layers' backward."""
    seqs, length = tokens_per_step(spec)
    tokens = seqs * length
    sb = _stream_bytes(spec, shape, precision)
    per_layer = layer_bytes_per_token(spec, shape, precision) * tokens
    mask = seqs * length * length  # the boolean padding mask sdpa receives
    if spec.method.type == "feature-extraction":
        return per_layer + tokens * sb * shape.hidden + mask  # a forward without grad: one layer live at a time
    working = per_layer * (2 if spec.training.gradient_checkpointing else 1)
    kept = _layers_kept(spec, shape, precision) + tokens * sb * shape.hidden
    return kept + max(loss_peak_bytes(spec, shape), working) + mask + _autocast_copies(spec, shape, precision)


def _layers_kept(spec: FineTuneJobSpec, shape: ModelShape, precision: str) -> int:
    seqs, length = tokens_per_step(spec)
    tokens = seqs * length
    if spec.training.gradient_checkpointing:
        return shape.layers * tokens * _stream_bytes(spec, shape, precision) * shape.hidden
    return shape.layers * layer_bytes_per_token(spec, shape, precision) * tokens


def forward_bytes(spec: FineTuneJobSpec, shape: ModelShape, precision: str) -> int:
    """What a training forward pass leaves alive for the backward pass: every layer's saved activations (only
    the layer inputs under gradient checkpointing), the embeddings' output, and for a language model the
    logits (returned in the output, upcast to float32 for the loss under 16-bit) and the loss's log-softmax."""
    seqs, length = tokens_per_step(spec)
    tokens = seqs * length
    a = 4 if precision == "fp32" else 2
    sb = _stream_bytes(spec, shape, precision)
    logits = tokens * shape.vocab * (a + 4) if shape.logits_over_vocab else 0
    return _layers_kept(spec, shape, precision) + tokens * sb * shape.hidden + logits


def overhead_bytes(spec: FineTuneJobSpec, step_bytes: int) -> int:
    """Optimizer-step temporaries: the foreach AdamW allocates one buffer the size of what it updates, and
    DeepSpeed a float32 copy of this rank's gradient partition."""
    from finetune_api.distributed import resolve_strategy

    deepspeed = resolve_strategy(spec) == "deepspeed"
    return step_bytes if deepspeed or spec.training.optimizer == "adamw_torch" else 0


def runtime_bytes(allocated: int) -> int:
    """Memory outside the allocator's count: CUDA context and workspaces, plus fragmentation."""
    return RUNTIME_BYTES + int(allocated * FRAGMENTATION)
