"""What every method unit provides. One module per method implements it; ``methods/__init__.py``
maps method names to units."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from pathlib import Path

    from peft import PeftConfig
    from torch import nn
    from transformers import PreTrainedModel

    from finetune_api.spec import FineTuneJobSpec

# peft task types whose models carry a freshly initialised head that must train (and be saved) with the adapter.
HEAD_TASK_TYPES = ("SEQ_CLS", "TOKEN_CLS", "QUESTION_ANS")


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


@runtime_checkable
class HasRunHooks(Protocol):
    """Optional: a method that acts around training (e.g. converts its saved adapter at the end)."""

    def start(self, spec: FineTuneJobSpec, model: Any, output_dir: Path, is_main: bool) -> None:
        """Called once the model is prepared, before training."""
        ...

    def finish(self, spec: FineTuneJobSpec, model: Any, output_dir: Path, is_main: bool) -> None:
        """Called after the final model is saved in output_dir, before it is uploaded."""
        ...


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameters, counted exactly as peft's ``get_nb_trainable_parameters``.

    That means every named parameter once, including the frozen originals that peft keeps
    beside a ``modules_to_save`` copy; ZeRO-3 partitioned parameters by their full size
    (``ds_numel``); and bitsandbytes 4-bit weights, which pack two values per byte of storage,
    by the number of values they hold.
    """
    trainable = 0
    total = 0
    for _, param in model.named_parameters():
        n = param.numel()
        if n == 0 and hasattr(param, "ds_numel"):
            n = param.ds_numel
        if param.__class__.__name__ == "Params4bit":
            if hasattr(param, "element_size"):
                storage_bytes = param.element_size()
            elif hasattr(param, "quant_storage"):
                storage_bytes = param.quant_storage.itemsize
            else:
                storage_bytes = 1
            n = n * 2 * storage_bytes
        total += n
        if param.requires_grad:
            trainable += n
    return trainable, total


def head_module_names(model: PreTrainedModel) -> list[str]:
    """Names of the top-level modules that form the task head (everything beside the base model).

    ``AutoModelFor<Task>`` classes hold the pretrained body under ``base_model_prefix`` (``bert``,
    ``model``, ...) and the task layers beside it (``classifier``, ``qa_outputs``, ``pre_classifier``
    ...); modules without parameters (dropout) are left out.
    """
    prefix = getattr(model, "base_model_prefix", "")
    return [
        name
        for name, module in model.named_children()
        if name != prefix and any(True for _ in module.parameters(recurse=True))
    ]
