"""Freeze: the last N transformer layers (of every layer stack) and the task head train; the rest stays frozen.

Partial fine-tuning as LLaMA-Factory's ``freeze`` offers it: no adapter, the saved artifact is the whole
model, loadable with plain transformers. The layer stacks are the ``nn.ModuleList``s whose length is one
of the config's layer counts (``num_hidden_layers``; an encoder-decoder's two stacks each).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from finetune_api.spec import FreezeOptions
from finetune_trainer.errors import ConfigError
from finetune_trainer.methods.base import MethodDefaults, head_module_names

if TYPE_CHECKING:
    from peft import PeftConfig
    from torch import nn
    from transformers import PreTrainedModel

    from finetune_api.spec import FineTuneJobSpec

LAYER_COUNT_KEYS = (
    "num_hidden_layers",
    "num_layers",
    "num_decoder_layers",
    "n_layer",
    "encoder_layers",
    "decoder_layers",
)


def layer_stacks(model: nn.Module) -> list[tuple[str, Any]]:
    """(name, ModuleList) of each stack of transformer layers, outermost only."""
    from torch import nn

    config = getattr(model, "config", None)
    counts = {getattr(config, key, None) for key in LAYER_COUNT_KEYS} - {None}
    stacks: list[tuple[str, Any]] = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) not in counts:
            continue
        if any(name.startswith(f"{outer}.") for outer, _ in stacks):
            continue
        stacks.append((name, module))
    return stacks


def untied_heads(model: PreTrainedModel) -> list[str]:
    """The task head modules, without an output layer tied to the input embeddings (that would train them too)."""
    embeddings = model.get_input_embeddings()
    shared = {id(p) for p in embeddings.parameters()} if embeddings is not None else set()
    return [
        name for name in head_module_names(model) if not any(id(p) in shared for p in getattr(model, name).parameters())
    ]


class FreezeMethod(MethodDefaults):
    """Train the last method.freeze.trainableLayers layers of each stack and the head; the artifact is the model."""

    name = "freeze"
    options_field = "freeze"
    options_model = FreezeOptions

    def load_kwargs(self, spec: FineTuneJobSpec) -> dict[str, Any]:
        """No extra loading options."""
        return {}

    def peft_config(self, spec: FineTuneJobSpec, model: PreTrainedModel, task_type: str) -> PeftConfig | None:
        """No adapter."""
        return None

    def prepare(self, spec: FineTuneJobSpec, model: PreTrainedModel, task_type: str) -> Any:
        """Freeze everything, then unfreeze the last N layers of each stack and the (untied) head."""
        from finetune_api.spec import FreezeOptions

        n = (spec.method.freeze or FreezeOptions()).trainable_layers
        stacks = layer_stacks(model)
        if not stacks:
            raise ConfigError(
                f"method.type freeze: no stack of transformer layers found in {type(model).__name__}; use lora or full"
            )
        fewest = min(len(layers) for _, layers in stacks)
        if n > fewest:
            raise ConfigError(
                f"method.freeze.trainableLayers: {n} is more than the model's {fewest} layers; set it to {fewest} or "
                "fewer, or use method full"
            )
        for param in model.parameters():
            param.requires_grad_(False)
        for _, layers in stacks:
            for layer in list(layers)[-n:]:
                for param in layer.parameters():
                    param.requires_grad_(True)
        for name in untied_heads(model):
            for param in getattr(model, name).parameters():
                param.requires_grad_(True)
        return model
