"""Prompt tuning: trained virtual tokens prepended to every input (peft), plus a trainable task head."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from finetune_api.spec import PromptTuningOptions
from finetune_trainer.errors import ConfigError
from finetune_trainer.methods.base import HEAD_TASK_TYPES, MethodDefaults, head_module_names
from finetune_trainer.methods.lora import dedupe_modules_to_save

if TYPE_CHECKING:
    from peft import PromptTuningConfig
    from transformers import PreTrainedModel

    from finetune_api.spec import FineTuneJobSpec


def check_virtual_positions(spec: FineTuneJobSpec, model: PreTrainedModel, virtual: int, field: str) -> None:
    """Virtual tokens prepended to the input take positions: with maxSeqLength they must fit the model's."""
    limit = getattr(model.config, "max_position_embeddings", None)
    total = spec.training.max_seq_length + virtual
    if limit is not None and total > limit:
        raise ConfigError(
            f"{field}: {virtual} virtual tokens plus training.maxSeqLength {spec.training.max_seq_length} is "
            f"{total} positions, more than the model's {limit}; lower maxSeqLength to {limit - virtual} or use "
            "fewer virtual tokens"
        )


class PromptTuningMethod(MethodDefaults):
    """Soft prompt of method.promptTuning.numVirtualTokens; the saved artifact is the prompt plus the head."""

    name = "prompt-tuning"
    options_field = "prompt_tuning"
    options_model = PromptTuningOptions

    def fingerprint_fields(self, spec: FineTuneJobSpec) -> dict[str, Any]:
        """The number of virtual tokens decides the prompt's shape."""
        from finetune_api.spec import PromptTuningOptions

        opts = spec.method.prompt_tuning or PromptTuningOptions()
        return {"method.promptTuning.numVirtualTokens": opts.num_virtual_tokens}

    def load_kwargs(self, spec: FineTuneJobSpec) -> dict[str, Any]:
        """The base loads unchanged."""
        return {}

    def peft_config(self, spec: FineTuneJobSpec, model: PreTrainedModel, task_type: str) -> PromptTuningConfig:
        """PromptTuningConfig; initialised from initText's token embeddings when it is set, else randomly."""
        from peft import PromptTuningConfig, PromptTuningInit

        from finetune_api.spec import PromptTuningOptions

        opts = spec.method.prompt_tuning or PromptTuningOptions()
        heads = head_module_names(model) if task_type in HEAD_TASK_TYPES else []
        init_kwargs: dict[str, Any] = {"prompt_tuning_init": PromptTuningInit.RANDOM}
        if opts.init_text:
            # peft tokenises the text with the tokenizer saved beside the model (the directory it loaded from).
            init_kwargs = {
                "prompt_tuning_init": PromptTuningInit.TEXT,
                "prompt_tuning_init_text": opts.init_text,
                "tokenizer_name_or_path": model.name_or_path,
            }
        return PromptTuningConfig(
            task_type=task_type,
            num_virtual_tokens=opts.num_virtual_tokens,
            modules_to_save=heads or None,
            **init_kwargs,
        )

    def prepare(self, spec: FineTuneJobSpec, model: PreTrainedModel, task_type: str) -> Any:
        """The PeftModel: base frozen, virtual tokens and head trainable."""
        from peft import get_peft_model

        from finetune_api.spec import PromptTuningOptions

        opts = spec.method.prompt_tuning or PromptTuningOptions()
        check_virtual_positions(spec, model, opts.num_virtual_tokens, "method.promptTuning.numVirtualTokens")
        peft_model = get_peft_model(model, self.peft_config(spec, model, task_type))
        dedupe_modules_to_save(peft_model)
        return peft_model
