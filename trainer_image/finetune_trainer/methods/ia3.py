"""IA3: learned vectors rescale the keys, values and feed-forward activations (peft), plus a trainable task head."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from finetune_api.spec import Ia3Options
from finetune_trainer.errors import ConfigError
from finetune_trainer.methods.base import HEAD_TASK_TYPES, MethodDefaults, head_module_names
from finetune_trainer.methods.lora import attach_adapter, linear_module_names

if TYPE_CHECKING:
    from peft import IA3Config
    from torch import nn
    from transformers import PreTrainedModel

    from finetune_api.spec import FineTuneJobSpec


def default_ia3_modules(model: nn.Module) -> tuple[list[str], list[str]]:
    """(target, feed-forward) modules from peft's per-architecture tables, for an empty method.ia3."""
    from peft.utils.constants import (
        TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING,
        TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING,
    )

    model_type = getattr(getattr(model, "config", None), "model_type", None) or ""
    targets = TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING.get(model_type)
    if not targets:
        raise ConfigError(
            f"method.ia3.targetModules: there is no default for model type {model_type!r}; name the modules to "
            f"rescale (and which of them are feed-forward), e.g. some of: {', '.join(linear_module_names(model)[:20])}"
        )
    return list(targets), list(TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING.get(model_type, []))


class Ia3Method(MethodDefaults):
    """IA3 vectors (initialised to ones: the start is the base model); the artifact is the adapter plus the head."""

    name = "ia3"
    options_field = "ia3"
    options_model = Ia3Options

    def load_kwargs(self, spec: FineTuneJobSpec) -> dict[str, Any]:
        """The base loads unchanged."""
        return {}

    def peft_config(self, spec: FineTuneJobSpec, model: PreTrainedModel, task_type: str) -> IA3Config:
        """IA3Config from method.ia3, peft's per-architecture modules where it names none."""
        from peft import IA3Config

        from finetune_api.spec import Ia3Options

        opts = spec.method.ia3 or Ia3Options()
        default_targets, default_feedforward = default_ia3_modules(model) if not opts.target_modules else ([], [])
        targets = list(opts.target_modules or default_targets)
        feedforward = list(opts.feedforward_modules if opts.feedforward_modules is not None else default_feedforward)
        stray = [m for m in feedforward if m not in targets]
        if stray:
            raise ConfigError(
                f"method.ia3.feedforwardModules: {', '.join(stray)} not in targetModules ({', '.join(targets)}); "
                "every feed-forward module must also be a target"
            )
        heads = head_module_names(model) if task_type in HEAD_TASK_TYPES else []
        return IA3Config(
            task_type=task_type,
            target_modules=targets,
            feedforward_modules=feedforward,
            modules_to_save=heads or None,
        )

    def prepare(self, spec: FineTuneJobSpec, model: PreTrainedModel, task_type: str) -> Any:
        """The PeftModel: base frozen, IA3 vectors and head trainable."""
        return attach_adapter(model, self.peft_config(spec, model, task_type), "method.ia3.targetModules")
