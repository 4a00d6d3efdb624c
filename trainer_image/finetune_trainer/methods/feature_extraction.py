"""Feature extraction: the pretrained body is frozen and only the task head trains."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from finetune_trainer.errors import ConfigError
from finetune_trainer.methods.base import MethodDefaults, head_module_names

if TYPE_CHECKING:
    from peft import PeftConfig
    from transformers import PreTrainedModel

    from finetune_api.spec import FineTuneJobSpec


class FeatureExtractionMethod(MethodDefaults):
    """Freeze the body (``model.base_model_prefix``), train the head; the saved artifact is the whole model.

    No peft adapter is involved: peft has nothing to add when no body weight changes, and
    saving the whole (small-headed) model keeps the artifact loadable with plain transformers.
    """

    name = "feature-extraction"

    def load_kwargs(self, spec: FineTuneJobSpec) -> dict[str, Any]:
        """No extra loading options."""
        return {}

    def peft_config(self, spec: FineTuneJobSpec, model: PreTrainedModel, task_type: str) -> PeftConfig | None:
        """No adapter."""
        return None

    def prepare(self, spec: FineTuneJobSpec, model: PreTrainedModel, task_type: str) -> Any:
        """Freeze the body's parameters; the head modules keep requires_grad."""
        heads = head_module_names(model)
        body = getattr(model, getattr(model, "base_model_prefix", ""), None)
        if body is None or body is model or not heads:
            raise ConfigError(
                f"method.type feature-extraction: {type(model).__name__} has no separate task head to train "
                "beside a frozen body; use lora or full"
            )
        for param in model.parameters():
            param.requires_grad_(False)
        for name in heads:
            for param in getattr(model, name).parameters():
                param.requires_grad_(True)
        return model
