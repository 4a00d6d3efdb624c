"""LoRA: low-rank adapters on the attention projections (peft), plus a trainable task head."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from finetune_trainer.errors import ConfigError
from finetune_trainer.methods.base import HEAD_TASK_TYPES, head_module_names

if TYPE_CHECKING:
    from peft import LoraConfig
    from torch import nn
    from transformers import PreTrainedModel

    from finetune_api.spec import FineTuneJobSpec


def default_target_modules(model: nn.Module) -> list[str]:
    """The modules LoRA adapts when method.lora.targetModules is empty: the query and value projections.

    The table of names per architecture is peft's (``query``/``value`` for BERT, ``q_proj``/``v_proj``
    for Llama, ...), so a new architecture that peft knows works without a change here.
    """
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

    model_type = getattr(getattr(model, "config", None), "model_type", None)
    targets = TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING.get(model_type or "")
    if not targets:
        raise ConfigError(
            f"method.lora.targetModules: there is no default for model type {model_type!r}; name the modules "
            f"to adapt, e.g. some of: {', '.join(linear_module_names(model)[:20])}"
        )
    return list(targets)


def linear_module_names(model: nn.Module) -> list[str]:
    """Distinct leaf names of the linear layers in the model (what targetModules can name)."""
    from torch import nn

    names: list[str] = []
    for full_name, module in model.named_modules():
        leaf = full_name.rsplit(".", 1)[-1]
        is_linear = isinstance(module, nn.Linear) or type(module).__name__ in ("Linear4bit", "Linear8bitLt", "Conv1D")
        if is_linear and leaf not in names:
            names.append(leaf)
    return names


def lora_config(spec: FineTuneJobSpec, model: PreTrainedModel, task_type: str) -> LoraConfig:
    """The peft LoraConfig for the spec; shared with qlora, which only changes how the base loads."""
    from peft import LoraConfig

    from finetune_api.spec import LoraOptions

    opts = spec.method.lora or LoraOptions()
    targets = list(opts.target_modules) if opts.target_modules else default_target_modules(model)
    # The head of a classification/QA model is new and random: it must train and be saved with the
    # adapter (modules_to_save), or the adapter would be useless without the exact same random head.
    heads = head_module_names(model) if task_type in HEAD_TASK_TYPES else []
    return LoraConfig(
        r=opts.r,
        lora_alpha=opts.alpha,
        lora_dropout=opts.dropout,
        bias=opts.bias,
        target_modules=targets,
        modules_to_save=heads or None,
        task_type=task_type,
    )


def attach_adapter(model: PreTrainedModel, config: Any, field: str) -> Any:
    """get_peft_model, with peft's 'target not found' turned into a ConfigError naming the field."""
    from peft import get_peft_model

    try:
        peft_model = get_peft_model(model, config)
    except ValueError as err:
        if "not found in the base model" in str(err) or "Target modules" in str(err):
            raise ConfigError(
                f"{field}: {err}. Linear layers of this model: {', '.join(linear_module_names(model)[:30])}"
            ) from None
        raise
    dedupe_modules_to_save(peft_model)
    return peft_model


def dedupe_modules_to_save(peft_model: Any) -> None:
    """peft appends its default head names (classifier, score, qa_outputs) to ours; list each once."""
    for config in peft_model.peft_config.values():
        if getattr(config, "modules_to_save", None):
            config.modules_to_save = list(dict.fromkeys(config.modules_to_save))


class LoraMethod:
    """Low-rank adapters; the saved artifact is the adapter plus the task head (modules_to_save)."""

    name = "lora"

    def load_kwargs(self, spec: FineTuneJobSpec) -> dict[str, Any]:
        """The base loads as for full fine-tuning (qlora adds a quantization config)."""
        return {}

    def peft_config(self, spec: FineTuneJobSpec, model: PreTrainedModel, task_type: str) -> LoraConfig:
        """LoraConfig from method.lora, with per-architecture target modules when none are named."""
        return lora_config(spec, model, task_type)

    def prepare(self, spec: FineTuneJobSpec, model: PreTrainedModel, task_type: str) -> Any:
        """The PeftModel: base frozen, adapters and head trainable."""
        return attach_adapter(model, self.peft_config(spec, model, task_type), "method.lora.targetModules")
