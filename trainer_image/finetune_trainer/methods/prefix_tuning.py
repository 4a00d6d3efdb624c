"""Prefix tuning: trained key/value vectors prepended to the attention of every layer (peft), plus the task head.

The prefix is not part of the input sequence, so token positions and offsets stay as they are: unlike
prompt tuning it suits token classification and extractive question answering.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from finetune_api.spec import PrefixTuningOptions
from finetune_trainer.methods.base import HEAD_TASK_TYPES, MethodDefaults, head_module_names
from finetune_trainer.methods.lora import attach_adapter

if TYPE_CHECKING:
    from peft import PrefixTuningConfig
    from transformers import PreTrainedModel

    from finetune_api.spec import FineTuneJobSpec


class PrefixTuningMethod(MethodDefaults):
    """Prefix of method.prefixTuning.numVirtualTokens positions; the artifact is the prefix plus the head."""

    name = "prefix-tuning"
    options_field = "prefix_tuning"
    options_model = PrefixTuningOptions

    def load_kwargs(self, spec: FineTuneJobSpec) -> dict[str, Any]:
        """The base loads unchanged."""
        return {}

    def peft_config(self, spec: FineTuneJobSpec, model: PreTrainedModel, task_type: str) -> PrefixTuningConfig:
        """PrefixTuningConfig; with projection, an MLP of encoderHidden size (default: the model's) makes the prefix."""
        from peft import PrefixTuningConfig

        from finetune_api.spec import PrefixTuningOptions

        opts = spec.method.prefix_tuning or PrefixTuningOptions()
        heads = head_module_names(model) if task_type in HEAD_TASK_TYPES else []
        return PrefixTuningConfig(
            task_type=task_type,
            num_virtual_tokens=opts.num_virtual_tokens,
            prefix_projection=opts.projection,
            encoder_hidden_size=opts.encoder_hidden_size or model.config.hidden_size,
            modules_to_save=heads or None,
        )

    def prepare(self, spec: FineTuneJobSpec, model: PreTrainedModel, task_type: str) -> Any:
        """The PeftModel: base frozen, prefix (and its MLP) and head trainable."""
        return attach_adapter(model, self.peft_config(spec, model, task_type), "method.type")
