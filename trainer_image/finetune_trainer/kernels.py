"""The spec's throughput options on this device: attention kernel, Liger kernels, compile, padding-free.

The spec's CEL rules refuse what the API server can judge (flash attention on CPU, padding-free for a
pooled head); what only the trainer can judge - the model's architecture, the packages in the image, the
device a local run landed on - is checked here, before training starts, with a ConfigError naming the
field. :func:`runtime` is what the run actually uses, for ``status.runtime`` and the resolved spec.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from finetune_trainer.errors import ConfigError

if TYPE_CHECKING:
    from finetune_api.spec import FineTuneJobSpec
    from finetune_api.status import Runtime
    from finetune_trainer.arguments import DeviceCapability

log = logging.getLogger(__name__)

# transformers' own fallback order; flash attention first where it can run (GPU, half precision, package).
FALLBACK_ORDER = ("sdpa", "eager")


def has_package(name: str) -> bool:
    """Whether a package is importable in this image (without importing it)."""
    return importlib.util.find_spec(name) is not None


def attention_candidates(requested: str, device: DeviceCapability, precision: str, flash_attn: bool) -> list[str]:
    """The attention implementations to try, fastest first: the one requested, or auto's order for this device."""
    if requested != "auto":
        return [requested]
    fast = ["flash_attention_2"] if device.kind == "gpu" and precision in ("bf16", "fp16") and flash_attn else []
    return [*fast, *FALLBACK_ORDER]


def check_attention(requested: str, device: DeviceCapability, precision: str, flash_attn: bool) -> None:
    """Refuse an explicit choice this process cannot run (the CEL rules cannot see the device or the image)."""
    if requested != "flash_attention_2":
        return
    if device.kind != "gpu" or precision == "fp32":
        raise ConfigError(
            f"training.attention: flash_attention_2 needs a GPU and bf16 or fp16, and this process runs on "
            f"{device.kind} in {precision}; use attention auto or sdpa"
        )
    if not flash_attn:
        raise ConfigError(
            "training.attention: flash_attention_2 needs the flash-attn package, which this trainer image lacks; "
            "use attention auto (it falls back to sdpa) or an image with flash-attn installed"
        )


def load_with_attention(
    load: Callable[[dict[str, Any]], Any], spec: FineTuneJobSpec, device: DeviceCapability, precision: str
) -> Any:
    """``load(extra_kwargs)`` with the first attention implementation the model supports.

    transformers checks the implementation while it builds the model, before any weight is read, so trying
    the next candidate after a refusal costs little.
    """
    requested = spec.training.attention
    flash_attn = has_package("flash_attn")
    check_attention(requested, device, precision, flash_attn)
    candidates = attention_candidates(requested, device, precision, flash_attn)
    refusals: list[str] = []
    for candidate in candidates:
        try:
            return load({"attn_implementation": candidate})
        except (ValueError, ImportError) as err:
            if "attn" not in str(err).lower() and "attention" not in str(err).lower():
                raise
            refusals.append(f"{candidate}: {err}")
            log.info("attention %s not usable with this model: %s", candidate, err)
    if requested == "auto":
        raise ConfigError(f"training.attention: the model supports none of {', '.join(candidates)}: {refusals}")
    raise ConfigError(
        f"training.attention: the model does not support {requested} ({refusals[-1]}); use attention auto"
    )


def check_gpu_options(spec: FineTuneJobSpec, device: DeviceCapability) -> None:
    """ligerKernels and compile need a GPU in this process (a local run may land on CPU whatever the spec says)."""
    for field, on in (("ligerKernels", spec.training.liger_kernels), ("compile", spec.training.compile)):
        if on and device.kind != "gpu":
            raise ConfigError(f"training.{field}: GPU only, and this process runs on CPU; remove it for CPU runs")


def check_liger(spec: FineTuneJobSpec, model: Any) -> None:
    """Liger kernels exist for some architectures only, and need the liger-kernel package."""
    if not spec.training.liger_kernels:
        return
    if not has_package("liger_kernel"):
        raise ConfigError(
            "training.ligerKernels: the liger-kernel package is not in this trainer image; install it "
            "(pip install liger-kernel) or remove ligerKernels"
        )
    from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN

    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in MODEL_TYPE_TO_APPLY_LIGER_FN:
        supported = ", ".join(sorted(MODEL_TYPE_TO_APPLY_LIGER_FN))
        raise ConfigError(
            f"training.ligerKernels: liger-kernel has no kernels for model type {model_type!r} (it has: "
            f"{supported}); remove ligerKernels for this model"
        )


def runtime(trainer: Any) -> Runtime:
    """What this run uses, for ``status.runtime``: read back from the built trainer, not from the spec."""
    from transformers import DataCollatorWithFlattening

    from finetune_api.status import Runtime

    args = trainer.args
    config = getattr(trainer.model, "config", None)
    # TRL's SFTTrainer decides padding-free itself (padding_free, or bfd packing); transformers' is a collator.
    padding_free = bool(getattr(trainer, "padding_free", False)) or isinstance(
        trainer.data_collator, DataCollatorWithFlattening
    )
    return Runtime(
        attention=getattr(config, "_attn_implementation", None),
        padding_free=padding_free,
        liger_kernels=bool(args.use_liger_kernel),
        compile=bool(args.torch_compile),
        optimizer=str(getattr(args.optim, "value", args.optim)),
        precision="bf16" if args.bf16 else "fp16" if args.fp16 else "fp32",
    )
