"""What every method unit provides. One module per method implements it; ``methods/__init__.py``
maps method names to units."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from pathlib import Path

    from peft import PeftConfig
    from torch import nn
    from transformers import PreTrainedModel

    from finetune_api.spec import FineTuneJobSpec, MethodSpec

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

    def fingerprint_fields(self, spec: FineTuneJobSpec) -> dict[str, Any]:
        """The method options a checkpoint's weights depend on, by field path (e.g. the LoRA rank)."""
        ...

    def resolved(self, spec: FineTuneJobSpec, model: Any) -> MethodSpec:
        """spec.method with the defaults this run chose written in (for spec.resolved.yaml)."""
        ...

    def merge_load_kwargs(self, spec: FineTuneJobSpec) -> dict[str, Any]:
        """from_pretrained options to load the base again for merging the adapter (output.saveMergedModel)."""
        ...


class MethodDefaults:
    """The answers of a method without adapter options; units override what differs."""

    options_field: str | None = None  # the MethodSpec attribute holding this method's options block
    options_model: Any = None  # its model class, whose defaults fill a block the spec left out

    def fingerprint_fields(self, spec: FineTuneJobSpec) -> dict[str, Any]:
        """Every option of this method's block, when the spec sets one (older fingerprints stay valid without)."""
        from pydantic.alias_generators import to_camel

        from finetune_api.spec import wire

        options = getattr(spec.method, self.options_field) if self.options_field else None
        if options is None:
            return {}
        return {f"method.{to_camel(self.options_field or '')}.{k}": v for k, v in wire(options).items()}

    def resolved(self, spec: FineTuneJobSpec, model: Any) -> MethodSpec:
        """spec.method with this method's options block, defaults filled, when the spec left it out."""
        if self.options_field is None or getattr(spec.method, self.options_field) is not None:
            return spec.method
        return spec.method.model_copy(update={self.options_field: self.options_model()})

    def merge_load_kwargs(self, spec: FineTuneJobSpec) -> dict[str, Any]:
        """The base loads as saved."""
        return {}


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
