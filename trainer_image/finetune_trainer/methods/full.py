"""Full fine-tuning: every parameter of the base and the head trains."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from finetune_trainer.methods.base import MethodDefaults

if TYPE_CHECKING:
    from peft import PeftConfig
    from transformers import PreTrainedModel

    from finetune_api.spec import FineTuneJobSpec


class FullMethod(MethodDefaults):
    """Train all weights; the saved artifact is the whole model."""

    name = "full"

    def load_kwargs(self, spec: FineTuneJobSpec) -> dict[str, Any]:
        """No extra loading options: the base loads in full precision."""
        return {}

    def peft_config(self, spec: FineTuneJobSpec, model: PreTrainedModel, task_type: str) -> PeftConfig | None:
        """No adapter."""
        return None

    def prepare(self, spec: FineTuneJobSpec, model: PreTrainedModel, task_type: str) -> Any:
        """Unfreeze everything (a checkpoint may have been saved with frozen parts)."""
        for param in model.parameters():
            param.requires_grad_(True)
        return model
