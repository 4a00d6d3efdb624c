"""What every task unit provides. One module per task implements it; ``tasks/__init__.py``
maps task names to units."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from datasets import DatasetDict
    from transformers import PreTrainedModel, PreTrainedTokenizerBase, Trainer

    from finetune_api.spec import FineTuneJobSpec
    from finetune_trainer.methods.base import MethodUnit


@dataclass
class RunContext:
    """Everything a task needs to build its trainer, assembled by the engine."""

    spec: FineTuneJobSpec
    output_dir: Path
    model_path: str  # local directory or hub id the model and tokenizer load from
    tokenizer: PreTrainedTokenizerBase
    method: MethodUnit
    datasets: DatasetDict  # raw splits: "train" and optionally "eval", columns validated
    training_kwargs: dict[str, Any]  # TrainingArguments keyword arguments from the spec
    callbacks: list[Any] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


class TaskUnit(Protocol):
    """One task: columns it reads, model head, preprocessing, collator, metrics, trainer."""

    name: str
    default_metric: str  # metric_for_best_model when the spec leaves it empty
    greater_is_better: bool

    def column_roles(self, spec: FineTuneJobSpec) -> dict[str, str]:
        """Role -> dataset column this spec reads (defaults merged with task.columns)."""
        ...

    def check_dataset(self, spec: FineTuneJobSpec, datasets: DatasetDict) -> None:
        """Raise DataError naming the column/split and the fix when the data does not fit."""
        ...

    def load_model(self, spec: FineTuneJobSpec, model_path: str, load_kwargs: dict[str, Any]) -> PreTrainedModel:
        """The base model with this task's head."""
        ...

    def build_trainer(self, ctx: RunContext, model: Any) -> Trainer:
        """A ready transformers (or TRL) trainer: preprocessed data, collator, metrics."""
        ...
