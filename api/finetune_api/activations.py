"""Activation and overhead bytes of one trainer process, from the transformer's shapes.

Activations are what autograd keeps from the forward pass for the backward pass, counted per token
per layer from the operations the two model families run (scaled dot-product attention, whose
fused kernels keep no sequence x sequence score matrix):

* a norm keeps its input (RMSNorm also its float32 normalised copy);
* a linear layer keeps its input only when its weight trains (full) or carries a LoRA adapter;
* attention keeps queries, keys, values and its output; the MLP keeps what its activation
  function and the gate product need;
* a language-model head keeps the logits over the vocabulary: in the compute dtype, upcast to
  float32 for the loss, and the float32 log-softmax;
* under mixed precision with float32 weights (autocast), the 16-bit copy of every weight a
  matmul used stays saved for the backward pass.

With gradient checkpointing only each layer's input is kept, and one layer is recomputed at a time.
A frozen body with no trainable input (feature extraction) keeps nothing. The backward pass
holds one more layer's worth of gradients of activations.

Overhead is what the allocator also holds (optimizer-step temporaries, DDP gradient buckets)
plus what it cannot see (CUDA context, cuBLAS and NCCL workspaces) and fragmentation.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from finetune_api.spec import LoraOptions, PromptTuningOptions

if TYPE_CHECKING:
    from finetune_api.model_shapes import ModelShape
    from finetune_api.spec import FineTuneJobSpec

# CUDA context, cuBLAS workspace and NCCL buffers: memory the process holds outside PyTorch's allocator.
RUNTIME_BYTES = 768 * 1024**2
FRAGMENTATION = 0.05  # allocator blocks reserved but not allocated, as a fraction of what is allocated


def tokens_per_step(spec: FineTuneJobSpec) -> tuple[int, int]:
    """(sequences, sequence length) of one micro-batch at the longest: padded or packed to maxSeqLength.

    A preference batch runs chosen and rejected answers together; prompt tuning prepends its tokens.
    """
    seqs = spec.training.batch_size_per_device * (2 if spec.task.type == "preference" else 1)
    length = spec.training.max_seq_length
    if spec.method.type == "prompt-tuning":
        length += (spec.method.prompt_tuning or PromptTuningOptions()).num_virtual_tokens
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


def layer_bytes_per_token(spec: FineTuneJobSpec, shape: ModelShape, precision: str) -> int:
    """Bytes one transformer layer keeps for the backward pass, per token."""
    a = 4 if precision == "fp32" else 2
    sb = _stream_bytes(spec, shape, precision)
    h, i = shape.hidden, shape.intermediate
    q = shape.heads * shape.head_dim
    kv = shape.kv_heads * shape.head_dim
    saves = lambda leaf: _saves_input(spec, shape, leaf)  # noqa: E731
    total = 0
    if shape.family == "decoder":
        # RMSNorm keeps its float32 input; the normalised copy only when its weight trains (for that gradient).
        norm = 4 + (sb if spec.method.type in ("full", "freeze") else 0)
        total += 2 * norm * h
        qkv_in = any(saves(x) for x in ("q_proj", "k_proj", "v_proj"))
        total += a * (h * qkv_in + q + 2 * kv + q + q * saves("o_proj"))
        total += 4 * shape.heads  # attention log-sum-exp (float32)
        mlp_in = saves("gate_proj") or saves("up_proj")
        total += a * (h * mlp_in + 3 * i + i * saves("down_proj"))
    else:
        total += 2 * sb * h  # two LayerNorm inputs
        qkv_in = any(saves(x) for x in ("query", "key", "value"))
        total += a * (h * qkv_in + 4 * h + h * saves("dense") + h * saves("dense") + 2 * i)
        total += 2 * h  # dropout masks after attention and MLP
    opts = spec.method.lora or LoraOptions()
    if spec.method.type in ("lora", "qlora") and opts.dropout > 0:
        from finetune_api.estimate import lora_targets

        adapted = len(lora_targets(spec, shape))
        total += adapted * (a * h + h)  # each adapter's dropped-out input and its mask
    return total


def _autocast_copies(spec: FineTuneJobSpec, shape: ModelShape, precision: str) -> int:
    """16-bit copies of float32 weights that autocast makes and autograd keeps until the backward pass."""
    from finetune_api.distributed import resolve_strategy

    if precision == "fp32" or _stream_bytes(spec, shape, precision) != 4:
        return 0
    if resolve_strategy(spec) == "deepspeed" or spec.method.type == "feature-extraction":
        return 0
    return sum(2 * p.numel for p in shape.params if p.linear and not (spec.method.type == "qlora" and p.quantisable))


def activation_bytes(spec: FineTuneJobSpec, shape: ModelShape, precision: str) -> int:
    """Bytes of activations at the peak of one training step, per GPU."""
    seqs, length = tokens_per_step(spec)
    tokens = seqs * length
    sb = _stream_bytes(spec, shape, precision)
    per_layer = layer_bytes_per_token(spec, shape, precision) * tokens
    mask = seqs * length * length  # the boolean padding mask sdpa receives
    if spec.method.type == "feature-extraction":
        return per_layer + tokens * sb * shape.hidden + mask  # a forward without grad: one layer live at a time
    working = per_layer  # the backward pass's gradients of one layer's activations
    if spec.training.gradient_checkpointing:
        working += per_layer  # the layer being recomputed
    return forward_bytes(spec, shape, precision) + working + mask + _autocast_copies(spec, shape, precision)


def forward_bytes(spec: FineTuneJobSpec, shape: ModelShape, precision: str) -> int:
    """What a training forward pass leaves alive for the backward pass: every layer's saved activations (only
    the layer inputs under gradient checkpointing), the embeddings' output, and for a language model the
    logits (returned in the output, upcast to float32 for the loss under 16-bit) and the loss's log-softmax."""
    seqs, length = tokens_per_step(spec)
    tokens = seqs * length
    a = 4 if precision == "fp32" else 2
    sb = _stream_bytes(spec, shape, precision)
    if spec.training.gradient_checkpointing:
        layers = shape.layers * tokens * sb * shape.hidden
    else:
        layers = shape.layers * layer_bytes_per_token(spec, shape, precision) * tokens
    logits = tokens * shape.vocab * (a + 4 + (4 if a != 4 else 0)) if shape.logits_over_vocab else 0
    return layers + tokens * sb * shape.hidden + logits


def overhead_bytes(spec: FineTuneJobSpec, step_bytes: int) -> int:
    """Optimizer-step temporaries: the foreach AdamW allocates one buffer the size of what it updates, and
    DeepSpeed a float32 copy of this rank's gradient partition."""
    from finetune_api.distributed import resolve_strategy

    deepspeed = resolve_strategy(spec) == "deepspeed"
    return step_bytes if deepspeed or spec.training.optimizer == "adamw_torch" else 0


def runtime_bytes(allocated: int) -> int:
    """Memory outside the allocator's count: CUDA context and workspaces, plus fragmentation."""
    return RUNTIME_BYTES + int(allocated * FRAGMENTATION)
