"""P-tuning: virtual tokens produced by a small trained encoder (MLP or LSTM) and prepended to every input (peft)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from finetune_api.spec import PTuningOptions
from finetune_trainer.methods.base import HEAD_TASK_TYPES, MethodDefaults, head_module_names
from finetune_trainer.methods.lora import attach_adapter
from finetune_trainer.methods.prompt_tuning import check_virtual_positions

if TYPE_CHECKING:
    from peft import PromptEncoderConfig
    from transformers import PreTrainedModel

    from finetune_api.spec import FineTuneJobSpec


class PTuningMethod(MethodDefaults):
    """Prompt encoder of method.pTuning; the saved artifact is the encoder's virtual tokens plus the head."""

    name = "p-tuning"
    options_field = "p_tuning"
    options_model = PTuningOptions

    def load_kwargs(self, spec: FineTuneJobSpec) -> dict[str, Any]:
        """The base loads unchanged."""
        return {}

    def peft_config(self, spec: FineTuneJobSpec, model: PreTrainedModel, task_type: str) -> PromptEncoderConfig:
        """PromptEncoderConfig; the encoder's hidden size defaults to the model's."""
        from peft import PromptEncoderConfig, PromptEncoderReparameterizationType

        from finetune_api.spec import PTuningOptions

        opts = spec.method.p_tuning or PTuningOptions()
        heads = head_module_names(model) if task_type in HEAD_TASK_TYPES else []
        return PromptEncoderConfig(
            task_type=task_type,
            num_virtual_tokens=opts.num_virtual_tokens,
            encoder_reparameterization_type=PromptEncoderReparameterizationType(opts.encoder_type.upper()),
            encoder_hidden_size=opts.encoder_hidden_size or model.config.hidden_size,
            modules_to_save=heads or None,
        )

    def prepare(self, spec: FineTuneJobSpec, model: PreTrainedModel, task_type: str) -> Any:
        """The PeftModel: base frozen, prompt encoder and head trainable."""
        from finetune_api.spec import PTuningOptions

        opts = spec.method.p_tuning or PTuningOptions()
        check_virtual_positions(spec, model, opts.num_virtual_tokens, "method.pTuning.numVirtualTokens")
        return attach_adapter(model, self.peft_config(spec, model, task_type), "method.type")
