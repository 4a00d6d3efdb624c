"""QLoRA: the frozen base quantised to 4 bits by bitsandbytes (NF4 or FP4), LoRA adapters trained on top.

The 4-bit settings come from ``method.quantization`` (quant type, double quantisation of the scales,
the dtype the weights are dequantised to for each matmul); the adapter is exactly the lora method's
(:func:`finetune_trainer.methods.lora.lora_config`: same defaults, same target modules).

bitsandbytes 0.50 has a CPU backend, so QLoRA also trains without a GPU (slowly: every matmul
dequantises its weight first). One CPU quirk is switched off here, see :func:`keep_cpu_weights_trainable`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from finetune_trainer.errors import ConfigError
from finetune_trainer.methods.lora import LoraMethod, attach_adapter

if TYPE_CHECKING:
    from torch import nn
    from transformers import BitsAndBytesConfig, PreTrainedModel

    from finetune_api.spec import FineTuneJobSpec, MethodSpec


def shards_parameters(spec: FineTuneJobSpec) -> bool:
    """Whether the strategy splits parameters across ranks (ZeRO-3, FSDP), which needs uniform storage dtypes."""
    strategy = spec.distributed.strategy
    if strategy == "fsdp":
        return True
    return strategy == "deepspeed" and spec.distributed.deepspeed is not None and spec.distributed.deepspeed.stage == 3


def bnb_config(spec: FineTuneJobSpec) -> BitsAndBytesConfig:
    """The BitsAndBytesConfig from method.quantization (defaults: NF4, double quantisation, bfloat16 compute)."""
    import torch
    from transformers import BitsAndBytesConfig

    from finetune_api.spec import QuantizationOptions

    opts = spec.method.quantization or QuantizationOptions()
    compute_dtype = getattr(torch, opts.compute_dtype)
    kwargs: dict[str, Any] = {
        "load_in_4bit": True,
        "bnb_4bit_quant_type": opts.quant_type,
        "bnb_4bit_use_double_quant": opts.double_quant,
        "bnb_4bit_compute_dtype": compute_dtype,
    }
    if shards_parameters(spec):
        # ZeRO-3 and FSDP flatten parameters of one dtype into shards: store the packed 4-bit values in the
        # compute dtype so they shard beside the (same-dtype) unquantised parameters.
        kwargs["bnb_4bit_quant_storage"] = compute_dtype
    return BitsAndBytesConfig(**kwargs)


def quantized_layers(model: nn.Module) -> list[str]:
    """Names of the bitsandbytes 4-bit linear layers in the model."""
    import bitsandbytes as bnb

    return [name for name, module in model.named_modules() if isinstance(module, bnb.nn.Linear4bit)]


def keep_cpu_weights_trainable(model: nn.Module) -> None:
    """Stop bitsandbytes from repacking 4-bit weights for CPU inference the first time the model evaluates.

    On CPUs with AVX512-BF16, ``Linear4bit.forward`` in eval mode rewrites its weight in place into an
    inference-only layout whose matmul (``gemv_4bit``) has no autograd formula. Training after the first
    evaluation then backpropagates through it without gradients, silently: every LoRA gradient is None
    and the loss stops moving. The plain dequantise-and-matmul path is used for evaluation instead.
    """
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            setattr(module, "support_avx512bf16_for_cpu", False)  # noqa: B010 (a bitsandbytes attribute)


def cast_inputs_of_trained_copies(peft_model: nn.Module) -> None:
    """Feed each ``modules_to_save`` copy (a task head, an output layer) its input in the copy's own dtype.

    TRL's trainers cast every trainable parameter of a quantised model to bfloat16, the copies included.
    LoRA layers cast their input to the adapter's dtype; a copy is a plain layer and does not, so without a
    16-bit autocast (``precision: fp32``, or a CPU) its float32 input meets a bfloat16 weight and the
    matmul fails ("expected m1 and m2 to have the same dtype"). Under autocast the cast changes nothing.
    """
    from peft.utils.other import ModulesToSaveWrapper

    for wrapper in peft_model.modules():
        if isinstance(wrapper, ModulesToSaveWrapper):
            for copy in wrapper.modules_to_save.values():
                copy.register_forward_pre_hook(_input_in_weight_dtype)


def _input_in_weight_dtype(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
    import torch

    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor) or not weight.is_floating_point():
        return args
    return tuple(
        a.to(weight.dtype) if isinstance(a, torch.Tensor) and a.is_floating_point() and a.dtype != weight.dtype else a
        for a in args
    )


class QloraMethod(LoraMethod):
    """4-bit base (bitsandbytes) + LoRA; the adapter, its fingerprint, its saved artifact and its OLoRA
    conversion (start/finish) are lora's."""

    name = "qlora"

    def load_kwargs(self, spec: FineTuneJobSpec) -> dict[str, Any]:
        """``quantization_config`` for from_pretrained; unquantised parts keep the checkpoint's dtype.

        On GPUs each process places its whole model on its own device (``LOCAL_RANK``): bitsandbytes
        quantises while loading, onto the device it is loaded to.
        """
        import torch

        kwargs: dict[str, Any] = {"quantization_config": bnb_config(spec)}
        # ZeRO-3 and FSDP place (and shard) the parameters themselves and refuse a device map.
        if torch.cuda.is_available() and not shards_parameters(spec):
            kwargs["device_map"] = {"": int(os.environ.get("LOCAL_RANK", "0"))}
        return kwargs

    def resolved(self, spec: FineTuneJobSpec, model: Any) -> MethodSpec:
        """The LoRA options as lora resolves them, and method.quantization with its defaults filled."""
        from finetune_api.spec import QuantizationOptions

        method = super().resolved(spec, model)
        return method.model_copy(update={"quantization": method.quantization or QuantizationOptions()})

    def merge_load_kwargs(self, spec: FineTuneJobSpec) -> dict[str, Any]:
        """Unquantised, in the quantisation's compute dtype: 4-bit weights cannot take a merged update."""
        import torch

        from finetune_api.spec import QuantizationOptions

        return {"dtype": getattr(torch, (spec.method.quantization or QuantizationOptions()).compute_dtype)}

    def prepare(self, spec: FineTuneJobSpec, model: PreTrainedModel, task_type: str) -> Any:
        """Freeze and prepare the 4-bit base (peft's prepare_model_for_kbit_training), then attach LoRA."""
        from peft import prepare_model_for_kbit_training

        if not quantized_layers(model):
            raise ConfigError(
                "method.type: qlora loaded no 4-bit layers (bitsandbytes found no nn.Linear to quantise in this "
                "architecture); use method lora"
            )
        keep_cpu_weights_trainable(model)
        if shards_parameters(spec):
            # prepare_model_for_kbit_training upcasts every unquantised parameter to float32, which would break
            # the single storage dtype that ZeRO-3/FSDP shards need; freeze the base and keep its dtypes instead.
            for param in model.parameters():
                param.requires_grad_(False)
            if spec.training.gradient_checkpointing:
                model.enable_input_require_grads()
        else:
            model = prepare_model_for_kbit_training(
                model,
                use_gradient_checkpointing=spec.training.gradient_checkpointing,
                gradient_checkpointing_kwargs={"use_reentrant": False},
            )
        peft_model = attach_adapter(model, self.peft_config(spec, model, task_type), "method.lora.targetModules")
        cast_inputs_of_trained_copies(peft_model)
        if spec.method.lora is not None and spec.method.lora.init_lora_weights == "loftq":
            loftq_init(peft_model)
        return peft_model


def loftq_init(peft_model: Any) -> None:
    """Initialise every LoRA pair so that base + adapter approximates the unquantised weights (LoftQ).

    peft reads the full-precision weights from the model's safetensors file: the model directory it was
    loaded from, or the local hub cache for a hub id.
    """
    import torch
    from peft import replace_lora_weights_loftq

    if not torch.cuda.is_available():
        raise ConfigError(
            "method.lora.initLoraWeights: peft computes the LoftQ initialisation on a CUDA GPU and this process "
            "has none; run on a GPU node, or use initLoraWeights default or olora"
        )
    source = getattr(peft_model.get_base_model(), "name_or_path", None)
    local = source if source and Path(source).is_dir() else None
    try:
        replace_lora_weights_loftq(peft_model, model_path=local)
    except (ValueError, FileNotFoundError) as err:
        raise ConfigError(
            f"method.lora.initLoraWeights loftq needs the base model's weights as safetensors: {err}; "
            "use initLoraWeights default or olora"
        ) from None
