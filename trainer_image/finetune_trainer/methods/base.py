"""What every method unit provides. One module per method implements it; ``methods/__init__.py``
maps method names to units."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from peft import PeftConfig
    from transformers import PreTrainedModel

    from finetune_api.spec import FineTuneJobSpec


class MethodUnit(Protocol):
    """One method: how the base loads, and which parameters train."""

    name: str

    def load_kwargs(self, spec: FineTuneJobSpec) -> dict[str, Any]:
        """Extra from_pretrained keyword arguments (e.g. a 4-bit quantization_config)."""
        ...

    def peft_config(self, spec: FineTuneJobSpec, model: PreTrainedModel, task_type: str) -> PeftConfig | None:
        """The peft config for this method, or None when no adapter is used."""
        ...

    def prepare(self, spec: FineTuneJobSpec, model: PreTrainedModel, task_type: str) -> Any:
        """The model ready to train: frozen parts frozen, adapters attached."""
        ...
