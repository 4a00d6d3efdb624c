"""What every task unit provides. One module per task implements it; ``tasks/__init__.py``
maps task names to units."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from datasets import Dataset, DatasetDict
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
    peft_task_type: str  # peft TaskType: decides which PeftModel wrapper (and so which head) an adapter gets
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


# Optional capabilities: a unit implements them when it needs to; callers test with isinstance.


@runtime_checkable
class ChoosesMetricPerSpec(Protocol):
    """A task whose default best-model metric depends on the spec (e.g. multi-label classification)."""

    def default_metric_for(self, spec: FineTuneJobSpec) -> tuple[str, bool]:
        """(metric name, greater is better) used when training.metricForBestModel is empty."""
        ...


@runtime_checkable
class AdjustsTokenizer(Protocol):
    """A task that needs a tokenizer setting the model's own tokenizer lacks (e.g. prefix spaces for split words)."""

    def adjust_tokenizer(self, tokenizer: PreTrainedTokenizerBase) -> None:
        """Change the freshly loaded tokenizer in place."""
        ...


@runtime_checkable
class ChecksWithTokenizer(Protocol):
    """A task with data checks that need the tokenizer (never the model), run by ``validate`` and ``run``."""

    def check_with_tokenizer(
        self, spec: FineTuneJobSpec, datasets: DatasetDict, tokenizer: PreTrainedTokenizerBase
    ) -> None:
        """Raise DataError naming the example and the setting to change."""
        ...


@runtime_checkable
class GeneratesText(Protocol):
    """A generative task: its rows have a prompt the trained model can answer (sample generations in the model card)."""

    def sample_prompts(
        self, spec: FineTuneJobSpec, dataset: Dataset, tokenizer: PreTrainedTokenizerBase
    ) -> list[tuple[str, str | None]]:
        """(prompt as the model reads it, the row's reference response or None) for each row that has a prompt."""
        ...


class PredictionRecorder:
    """A Trainer's compute_metrics that also keeps what the model predicted for each evaluated example.

    ``score`` returns the metrics and one JSON-ready prediction per example (label names, tag lists, answer
    texts), in dataset order; the latest evaluation's are in ``predictions`` (the test split's predictions.jsonl).
    """

    def __init__(self, score: Callable[[Any], tuple[dict[str, float], list[Any]]]):
        self.score = score
        self.predictions: list[Any] = []

    def __call__(self, prediction: Any) -> dict[str, float]:
        metrics, self.predictions = self.score(prediction)
        return metrics


def best_model_metric(task: TaskUnit, spec: FineTuneJobSpec) -> tuple[str, bool]:
    """The metric that picks the best checkpoint and whether higher is better.

    A metric named in the spec wins; like transformers, anything ending in ``loss`` is minimised.
    """
    named = spec.training.metric_for_best_model
    if named:
        return named, not named.endswith("loss")
    if isinstance(task, ChoosesMetricPerSpec):
        return task.default_metric_for(spec)
    return task.default_metric, task.greater_is_better


def column_roles_for(spec: FineTuneJobSpec) -> dict[str, str]:
    """Role -> dataset column: the task's default column names overridden by task.columns."""
    from finetune_api.matrix import TASK_COLUMN_ROLES

    return {**TASK_COLUMN_ROLES[spec.task.type], **spec.task.columns}


def pretrained_kwargs(spec: FineTuneJobSpec, model_path: str) -> dict[str, Any]:
    """from_pretrained options from spec.model: the revision applies to hub ids only."""
    kwargs: dict[str, Any] = {"trust_remote_code": spec.model.trust_remote_code}
    if spec.model.name is not None and model_path == spec.model.name:
        kwargs["revision"] = spec.model.revision
    return kwargs


def training_arguments(ctx: RunContext, **overrides: Any) -> Any:
    """``TrainingArguments`` from the engine's keyword arguments plus task-specific overrides."""
    from transformers import TrainingArguments

    return TrainingArguments(**{**ctx.training_kwargs, **overrides})


def load_labelled_model(
    auto_class: Any, spec: FineTuneJobSpec, model_path: str, load_kwargs: dict[str, Any], **options: Any
) -> PreTrainedModel:
    """``auto_class.from_pretrained`` with a head over task.labels, labelled by name (id2label/label2id)."""
    labels = spec.task.labels
    model: PreTrainedModel = auto_class.from_pretrained(
        model_path,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={name: i for i, name in enumerate(labels)},
        # A checkpoint fine-tuned on other labels has a head of another size: replace it.
        ignore_mismatched_sizes=True,
        **options,
        **pretrained_kwargs(spec, model_path),
        **load_kwargs,
    )
    return model


def preprocessed_splits(
    ctx: RunContext, args: Any, preprocess: Callable[[Dataset], Dataset], desc: str = "tokenising"
) -> tuple[Dataset, Dataset | None]:
    """The train and (if any) eval split through ``preprocess``, the main process first (it fills the cache)."""
    with args.main_process_first(desc=desc):
        train = preprocess(ctx.datasets["train"])
        evaluation = preprocess(ctx.datasets["eval"]) if "eval" in ctx.datasets else None
    return train, evaluation


def task_trainer(
    ctx: RunContext,
    model: Any,
    args: Any,
    *,
    train: Dataset,
    evaluation: Dataset | None,
    collator: Any,
    compute_metrics: Any,
    compute_loss_func: Any = None,
    trainer_class: type[Trainer] | None = None,
) -> Trainer:
    """The Trainer (or ``trainer_class``) of an encoder task: its data, collator, metrics and the run's callbacks."""
    from transformers import Trainer

    return (trainer_class or Trainer)(
        model=model,
        args=args,
        data_collator=collator,
        train_dataset=train,
        eval_dataset=evaluation,
        processing_class=ctx.tokenizer,
        compute_metrics=compute_metrics,
        compute_loss_func=compute_loss_func,
        callbacks=ctx.callbacks,
    )


def pad_multiple(ctx: RunContext) -> int | None:
    """Pad batches to a multiple of 8 under mixed precision (tensor cores), not at all otherwise."""
    mixed = ctx.training_kwargs.get("bf16") or ctx.training_kwargs.get("fp16")
    return 8 if mixed else None


def flattening_collator(model: Any) -> Any:
    """transformers' padding-free collator: a batch's examples end to end in one row, position ids per example.

    RoBERTa-like embeddings number positions from ``padding_idx + 1``; the collator is told so, or every
    position embedding would shift by two.
    """
    from transformers import DataCollatorWithFlattening

    base = getattr(model, "get_base_model", lambda: model)()
    embeddings = getattr(getattr(base, "base_model", base), "embeddings", None)
    padding_idx = getattr(embeddings, "padding_idx", None)
    start = padding_idx + 1 if isinstance(padding_idx, int) else 0
    return DataCollatorWithFlattening(position_ids_start=start)


class LabelIndex:
    """Label names or ids -> ids, in the order of task.labels.

    Strings are label names. Integers are ids (0..n-1), except when every label name is itself a
    number (star ratings ``["1", ..., "5"]`` read back from CSV as integers): then integers are names.
    """

    def __init__(self, labels: list[str]):
        self.labels = list(labels)
        self.by_name = {name: i for i, name in enumerate(self.labels)}
        self.numeric_names = all(name.lstrip("-").isdigit() for name in self.labels)

    def id_of(self, value: Any) -> int:
        """The id of one label value; ValueError with a message naming the value and the allowed labels."""
        if isinstance(value, str):
            if value in self.by_name:
                return self.by_name[value]
        elif isinstance(value, bool | int) or (isinstance(value, float) and value.is_integer()):
            number = int(value)
            if self.numeric_names:
                if str(number) in self.by_name:
                    return self.by_name[str(number)]
            elif 0 <= number < len(self.labels):
                return number
        elif hasattr(value, "item"):  # numpy/torch scalars
            return self.id_of(value.item())
        raise ValueError(self.unknown(value))

    def unknown(self, value: Any) -> str:
        """Message for a value outside task.labels."""
        ids = "" if self.numeric_names else f", or their ids 0..{len(self.labels) - 1}"
        return (
            f"label {value!r} is not in task.labels; allowed: {', '.join(self.labels)}{ids}. "
            "Add it to task.labels or fix the data"
        )
