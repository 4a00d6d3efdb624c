"""How much GPU memory one trainer process needs: pure functions from the spec and the model's config.json.

The estimate is the model states (weights, gradients, optimizer states) counted tensor by tensor
the way the trainer builds them, plus activations from the transformer's shapes, plus overhead:

* **weights**: the checkpoint's dtype (``from_pretrained(dtype="auto")``); 4-bit NF4/FP4 weights
  as bitsandbytes packs them (two values a byte, one scale per 64 values, the scales themselves
  8-bit with double quantisation); LoRA matrices and soft prompts in float32 (peft upcasts
  adapters); for QLoRA the unquantised parameters upcast to float32 (peft's
  ``prepare_model_for_kbit_training``) and, under TRL's trainers, the adapters cast to bfloat16;
  a ``modules_to_save`` copy of the task head; for DPO and KTO without an adapter, TRL's frozen
  reference copy of the model (with an adapter the reference is the base with the adapter off).
* **gradients**: one per trainable value, in its dtype.
* **optimizer states**: AdamW two moments in the parameter's dtype plus a step counter per tensor;
  Adafactor factored second moments in float32; 8-bit AdamW one byte per moment and a float32 scale
  per 256 values (float32 moments below 4096 values); SGD none. DeepSpeed keeps a float32 master
  copy of the trainable weights beside the 16-bit ones.
* **sharding**: ZeRO-1 splits the optimizer states, ZeRO-2 also the gradients, ZeRO-3 and FSDP
  also the weights (plus the gathered layers in flight); offload moves them to CPU memory.
* **activations** and **overhead**: see :mod:`finetune_api.activations`.

Everything is in bytes, per GPU. The exact parts are pinned against real models in
``tests/trainer/test_estimate_accuracy.py``; the GPU check prints estimate vs measured peak.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from finetune_api.activations import activation_bytes, overhead_bytes, runtime_bytes
from finetune_api.distributed import resolve_strategy, world_size
from finetune_api.model_shapes import (
    DEFAULT_LORA_TARGETS,
    SCALAR_TASKS,
    EstimateUnavailable,
    ModelShape,
    Param,
    model_shape,
)
from finetune_api.peft_shapes import ia3_vectors, prefix_tensors, prompt_encoder_tensors
from finetune_api.spec import FineTuneJobSpec, FreezeOptions, LoraOptions, PromptTuningOptions, QuantizationOptions

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
PRECISION_DTYPE = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
HEAD_TASKS = ("sequence-classification", "token-classification", "question-answering", *SCALAR_TASKS)
# Tasks with a reference policy: TRL keeps a frozen copy of the model unless an adapter trains (then the
# reference is the same network with the adapter switched off: finetune_trainer/tasks/preference.py).
REFERENCE_TASKS = ("preference", "kto")
ADAPTER_METHODS = ("lora", "qlora", "prompt-tuning", "ia3", "prefix-tuning", "p-tuning")
# Trained by TRL trainers that cast a quantised model's trainable parameters to bfloat16 (ORPO's does not).
TRL_TASKS = ("causal-lm", "preference", "kto", "reward-modeling")
QUANT_BLOCK = 64  # values per 4-bit scale (bitsandbytes' default blocksize)
NESTED_BLOCK = 256  # 8-bit scales per float32 scale of the nested (double) quantisation
OPTIM8_BLOCK = 256
OPTIM8_MIN_SIZE = 4096
GIB = 1024**3


@dataclass(frozen=True)
class Tensor:
    """A parameter as it sits in GPU memory for this run."""

    shape: tuple[int, ...]
    dtype: str
    trainable: bool
    quantised: bool = False
    double_quant: bool = False

    @property
    def numel(self) -> int:
        """Number of values."""
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        """Bytes of storage: packed 4-bit values and their quantisation state, or numel x dtype size."""
        if not self.quantised:
            return self.numel * DTYPE_BYTES[self.dtype]
        return quantised_bytes(self.numel, self.double_quant)


def quantised_bytes(numel: int, double_quant: bool) -> int:
    """Bytes bitsandbytes holds for one 4-bit weight of ``numel`` values.

    Two values per byte; one absmax per 64 values (float32, or uint8 with double quantisation, whose
    own float32 absmax per 256 scales, 256-entry code and offset come on top); the 16-entry code.
    """
    packed = (numel + 1) // 2
    blocks = -(-numel // QUANT_BLOCK)
    code = 16 * 4
    if not double_quant:
        return packed + blocks * 4 + code
    nested_blocks = -(-blocks // NESTED_BLOCK)
    return packed + blocks + code + 4 + nested_blocks * 4 + 256 * 4


@dataclass(frozen=True)
class Breakdown:
    """Bytes per GPU by what holds them."""

    weights: int
    gradients: int
    optimizer_states: int
    activations: int
    overhead: int
    apart: int = 0  # bytes of the above never alive together (see step_overlap)

    @property
    def total(self) -> int:
        """The peak: everything together, less what is never alive at the same time."""
        return self.weights + self.gradients + self.optimizer_states + self.activations + self.overhead - self.apart


@dataclass(frozen=True)
class Estimate:
    """The estimate for one spec: parameter counts (as peft reports them), per-GPU bytes and how it runs."""

    trainable: int
    total: int
    per_gpu: Breakdown
    strategy: str  # e.g. "ddp", "deepspeed ZeRO-3 (offload optimizer)", "fsdp full_shard"
    world_size: int
    precision: str  # bf16 | fp16 | fp32
    model_states: Breakdown  # whole-model bytes before sharding (activations and overhead 0)
    runtime: int  # the part of the overhead outside PyTorch's allocator (context, workspaces, fragmentation)

    @property
    def allocated(self) -> int:
        """What ``torch.cuda.max_memory_allocated`` should report at the peak."""
        return self.per_gpu.total - self.runtime


def lora_targets(spec: FineTuneJobSpec, shape: ModelShape) -> tuple[str, ...]:
    """Leaf names LoRA adapts: method.lora.targetModules, else peft's default for the family."""
    opts = spec.method.lora or LoraOptions()
    return tuple(opts.target_modules) if opts.target_modules else DEFAULT_LORA_TARGETS[shape.family]


def num_labels(spec: FineTuneJobSpec) -> int:
    """Outputs of the classification head the trainer builds (one score for regression and reward models)."""
    if spec.task.type in SCALAR_TASKS:
        return 1
    return len(spec.task.labels) or 2


def reference_bytes(spec: FineTuneJobSpec, tensors: list[Tensor]) -> tuple[int, int]:
    """(bytes of the frozen reference copy, its bytes per GPU) for DPO and KTO without an adapter, else zeros.

    TRL copies the model as loaded; DeepSpeed casts the copy to 16-bit, and ZeRO-3 or FSDP shard it
    like the model itself."""
    if spec.task.type not in REFERENCE_TASKS or spec.method.type in ADAPTER_METHODS:
        return 0, 0
    strategy = resolve_strategy(spec)
    if strategy == "deepspeed" and resolved_precision(spec) != "fp32":
        copy = sum(t.numel * 2 for t in tensors)
    else:
        copy = sum(t.nbytes for t in tensors)
    if strategy == "deepspeed":
        return copy, copy // world_size(spec) if shards_parameters(spec) else copy
    if strategy == "fsdp":
        sharding, shard = fsdp_sharding(spec)
        # Like the policy's weights: held sharded, but whole under shard_grad_op and no_shard.
        return copy, copy // shard if sharding in ("full_shard", "hybrid_shard") else copy
    return copy, copy


def fsdp_sharding(spec: FineTuneJobSpec) -> tuple[str, int]:
    """FSDP's sharding strategy and the ranks it shards over (a node's GPUs for hybrid_shard, else all)."""
    fsdp = spec.distributed.fsdp
    sharding = fsdp.sharding_strategy if fsdp else "full_shard"
    return sharding, spec.resources.gpus_per_node if sharding == "hybrid_shard" else world_size(spec)


def resolved_precision(spec: FineTuneJobSpec) -> str:
    """The precision on a GPU: ``auto`` is bf16 (the GPUs that fine-tune today have it)."""
    return "bf16" if spec.training.precision == "auto" else spec.training.precision


def shards_parameters(spec: FineTuneJobSpec) -> bool:
    """ZeRO-3 or FSDP: parameters are split across ranks (and QLoRA keeps one storage dtype)."""
    strategy = resolve_strategy(spec)
    ds = spec.distributed.deepspeed
    return strategy == "fsdp" or (strategy == "deepspeed" and ds is not None and ds.stage == 3)


def _adapted(param: Param, targets: tuple[str, ...]) -> bool:
    if not param.linear or param.head:
        return False
    if targets == ("all-linear",):  # every linear layer but the output layer (and the task head)
        return param.leaf != "lm_head"
    return param.leaf in targets


MODELLED_METHODS = (
    "full",
    "feature-extraction",
    "freeze",
    "lora",
    "qlora",
    "prompt-tuning",
    "ia3",
    "prefix-tuning",
    "p-tuning",
)
# What peft adds for these methods, from the model's shape: all float32 and trained.
ADDED_TENSORS = {"ia3": ia3_vectors, "prefix-tuning": prefix_tensors, "p-tuning": prompt_encoder_tensors}


def _trains_in_freeze(spec: FineTuneJobSpec, shape: ModelShape, param: Param) -> bool:
    """freeze: the last trainableLayers layers, the task head and an untied output layer."""
    n = (spec.method.freeze or FreezeOptions()).trainable_layers
    index = param.layer_index
    return (index is not None and index >= shape.layers - n) or param.head or param.leaf == "lm_head"


def model_tensors(spec: FineTuneJobSpec, shape: ModelShape) -> list[Tensor]:
    """Every parameter tensor the trainer holds for this method, with its dtype and whether it trains."""
    method = spec.method.type
    if method not in MODELLED_METHODS:
        raise EstimateUnavailable(f"method.type: the memory estimate has no model of {method} yet")
    dtype = shape.dtype
    heads_trained = spec.task.type in HEAD_TASKS
    quant = spec.method.quantization or QuantizationOptions()
    lora = spec.method.lora or LoraOptions()
    extra_saved = tuple(lora.modules_to_save) if method in ("lora", "qlora") else ()
    out: list[Tensor] = []
    for p in shape.params:
        if method == "full":
            out.append(Tensor(p.shape, dtype, True))
        elif method == "feature-extraction":
            out.append(Tensor(p.shape, dtype, p.head))
        elif method == "freeze":
            out.append(Tensor(p.shape, dtype, _trains_in_freeze(spec, shape, p)))
        elif method == "qlora" and p.quantisable:
            out.append(Tensor(p.shape, "float32", False, quantised=True, double_quant=quant.double_quant))
        else:
            # Frozen original; QLoRA without sharding upcasts the unquantised parameters to float32.
            frozen_dtype = "float32" if method == "qlora" and not shards_parameters(spec) else dtype
            out.append(Tensor(p.shape, frozen_dtype, False))
            if (p.head and heads_trained) or any(p.in_module(m) for m in extra_saved):
                # peft's modules_to_save: a trainable copy beside the frozen original
                out.append(Tensor(p.shape, frozen_dtype, True))
    magnitudes: list[Tensor] = []
    if method in ("lora", "qlora"):
        targets = lora_targets(spec, shape)
        for p in shape.params:
            if _adapted(p, targets):
                n_out, n_in = p.shape
                out += [Tensor((lora.r, n_in), "float32", True), Tensor((n_out, lora.r), "float32", True)]
                if lora.use_dora:  # DoRA's magnitude vector, one value per output feature
                    magnitudes.append(Tensor((n_out,), "float32", True))
    if method == "prompt-tuning":
        tokens = (spec.method.prompt_tuning or PromptTuningOptions()).num_virtual_tokens
        out.append(Tensor((tokens, shape.hidden), "float32", True))
    if method in ADDED_TENSORS:
        out += [Tensor(added, "float32", True) for added in ADDED_TENSORS[method](spec, shape)]
    if method == "qlora" and spec.task.type in TRL_TASKS:
        # TRL's SFT and DPO trainers cast the trainable parameters of a quantised model to bfloat16 (as in the
        # paper), all but DoRA's magnitude vectors.
        out = [Tensor(t.shape, "bfloat16", True) if t.trainable else t for t in out]
    return out + magnitudes


def optimizer_state_bytes(tensor: Tensor, optimizer: str) -> int:
    """Bytes one trainable tensor's optimizer state takes after the first step."""
    n = tensor.numel
    if optimizer in ("auto", "adamw_torch", "adamw_torch_fused"):  # auto is AdamW (fused on GPUs)
        return 2 * tensor.nbytes + 4  # exp_avg, exp_avg_sq, and a float32 step tensor
    if optimizer == "adafactor":
        # Float32 second moment, factored (one value per row and per column) for matrices; plus the RMS scalar.
        if len(tensor.shape) >= 2:
            return (n // tensor.shape[-1] + n // tensor.shape[-2]) * 4 + 4
        return n * 4 + 4
    if optimizer in ("adamw_bnb_8bit", "paged_adamw_8bit"):
        if n < OPTIM8_MIN_SIZE:
            return 2 * n * 4
        return 2 * n + 2 * (-(-n // OPTIM8_BLOCK)) * 4
    return 0  # sgd without momentum


def _zero_stage(spec: FineTuneJobSpec) -> tuple[int, bool, bool]:
    ds = spec.distributed.deepspeed
    stage = ds.stage if ds else 2
    return stage, bool(ds and ds.offload_optimizer), bool(ds and ds.offload_params and stage == 3)


def strategy_label(spec: FineTuneJobSpec) -> str:
    """The resolved strategy in words, e.g. ``deepspeed ZeRO-3 (offload optimizer)``."""
    strategy = resolve_strategy(spec)
    if strategy == "deepspeed":
        stage, off_opt, off_par = _zero_stage(spec)
        offload = [w for w, on in (("optimizer", off_opt), ("params", off_par)) if on]
        return f"deepspeed ZeRO-{stage}" + (f" (offload {' + '.join(offload)})" if offload else "")
    if strategy == "fsdp":
        fsdp = spec.distributed.fsdp
        label = f"fsdp {fsdp.sharding_strategy if fsdp else 'full_shard'}"
        return label + (" (offload params)" if fsdp and fsdp.offload_params else "")
    return strategy


def estimate_memory(spec: FineTuneJobSpec, config: Mapping[str, Any]) -> Estimate:
    """The per-GPU estimate for ``spec`` on the model ``config`` (a config.json mapping)."""
    shape = model_shape(config, spec.task.type, num_labels(spec))
    tensors = model_tensors(spec, shape)
    precision = resolved_precision(spec)
    strategy = resolve_strategy(spec)
    n = world_size(spec)
    optimizer = spec.training.optimizer
    trainable = [t for t in tensors if t.trainable]

    weights = sum(t.nbytes for t in tensors)
    grads = sum(t.nbytes for t in trainable)
    optim = sum(optimizer_state_bytes(t, optimizer) for t in trainable)
    if strategy == "deepspeed" and precision != "fp32":
        # DeepSpeed trains 16-bit weights and gradients and keeps a float32 master copy with the optimizer.
        half = 2
        weights = sum(t.numel * half if not t.quantised and t.dtype == "float32" else t.nbytes for t in tensors)
        grads = sum(t.numel * half for t in trainable)
        optim = sum(optimizer_state_bytes(Tensor(t.shape, "float32", True), optimizer) + t.numel * 4 for t in trainable)
    reference, reference_per_gpu = reference_bytes(spec, tensors)
    states = Breakdown(weights + reference, grads, optim, 0, 0)

    largest = shape.largest_layer() * 2  # one gathered layer in 16-bit
    step_bytes = sum(t.nbytes for t in trainable)  # what the optimizer step updates on this GPU
    if strategy == "deepspeed":
        stage, off_opt, off_par = _zero_stage(spec)
        step_bytes = 0 if off_opt else sum(t.numel * 4 for t in trainable) // n
        optim = 0 if off_opt else optim // n
        if stage >= 2:
            grads = 0 if off_opt else grads // n
        if stage == 3:
            # Partitioned weights plus the layers gathered for compute (the current one and the prefetched one).
            weights = (0 if off_par else weights // n) + 2 * largest
    elif strategy == "fsdp":
        fsdp = spec.distributed.fsdp
        sharding, shard = fsdp_sharding(spec)
        if sharding != "no_shard":
            step_bytes //= shard
            optim //= shard
            grads //= shard
            keep = 0 if fsdp and fsdp.offload_params else weights // shard
            weights = keep + (2 * largest if sharding != "shard_grad_op" else weights - weights // shard)
    weights += reference_per_gpu
    activations = activation_bytes(spec, shape, precision)
    step = overhead_bytes(spec, step_bytes)
    overhead = step
    if strategy == "ddp":
        overhead += sum(t.nbytes for t in trainable)  # DDP's gradient buckets: a second copy of the gradients
    apart = step_overlap(spec, grads, activations, step)
    runtime = runtime_bytes(weights + grads + optim + activations + overhead - apart)
    return Estimate(
        trainable=sum(t.numel for t in trainable),
        total=sum(t.numel for t in tensors),
        per_gpu=Breakdown(weights, grads, optim, activations, overhead + runtime, apart),
        strategy=strategy_label(spec),
        world_size=n,
        precision=precision,
        model_states=states,
        runtime=runtime,
    )


def step_overlap(spec: FineTuneJobSpec, grads: int, activations: int, step: int) -> int:
    """Bytes the sum of the breakdown counts twice: a training step peaks either in the backward pass
    (activations, and only the gradients already there) or in the optimizer step (all gradients and the step's
    temporaries, the activations freed), never both. The trainer frees the gradients after each step, so the
    backward holds none at its peak (the loss, before any layer's gradient) unless gradients accumulate over
    micro-batches, or DeepSpeed allocates its whole gradient partition at the first bucket it reduces (early
    in the backward, while most activations are still alive)."""
    strategy = resolve_strategy(spec)
    held = grads if spec.training.gradient_accumulation_steps > 1 or strategy in ("deepspeed", "fsdp") else 0
    peak = max(activations + held, grads + step)
    return grads + activations + step - peak


def parse_memory(text: str) -> int:
    """Bytes in a Kubernetes quantity (``80Gi``, ``81559Mi``, ``40G``) or a plain number of bytes."""
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}
    value = text.strip()
    for suffix in sorted(units, key=len, reverse=True):
        if value.endswith(suffix):
            return int(float(value[: -len(suffix)]) * units[suffix])
    return int(float(value))


def gib(nbytes: int) -> str:
    """Bytes as GiB with one decimal, e.g. ``71.2 GiB`` (MiB below one GiB, e.g. ``12.4 MiB``)."""
    if abs(nbytes) < GIB:
        return f"{nbytes / 2**20:.1f} MiB"
    return f"{nbytes / GIB:.1f} GiB"
