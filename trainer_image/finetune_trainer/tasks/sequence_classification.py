"""Sequence classification: one label per text (softmax, cross-entropy) or several (sigmoid, BCE).

Columns (roles): ``text``, optional ``textPair`` (a second segment, e.g. NLI hypotheses) and
``label``. Single-label rows hold a label name or id; multi-label rows hold a list of label
names or a multi-hot list with one 0/1 entry per label of task.labels.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from finetune_trainer.data import describe_split, require_columns
from finetune_trainer.data_checks import RowProblems
from finetune_trainer.losses import binary_cross_entropy_loss, cross_entropy_loss
from finetune_trainer.tasks.base import (
    LabelIndex,
    PredictionRecorder,
    RunContext,
    column_roles_for,
    load_labelled_model,
    pad_multiple,
    preprocessed_splits,
    task_trainer,
    training_arguments,
)

if TYPE_CHECKING:
    import numpy as np
    from datasets import Dataset, DatasetDict
    from transformers import EvalPrediction, PreTrainedModel, PreTrainedTokenizerBase, Trainer

    from finetune_api.spec import FineTuneJobSpec


class LabelEncoder:
    """Row label values -> training targets: an id (single label) or a multi-hot float list (multi-label)."""

    def __init__(self, labels: list[str], multi_label: bool):
        self.index = LabelIndex(labels)
        self.multi_label = multi_label

    def encode(self, value: Any) -> int | list[float]:
        """The target for one row; ValueError with a message a person can act on."""
        if not self.multi_label:
            if isinstance(value, list):
                raise ValueError(
                    f"label {value!r} is a list, but task.multiLabel is false; give one label per row "
                    "or set task.multiLabel: true"
                )
            return self.index.id_of(value)
        n = len(self.index.labels)
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            raise ValueError(
                f"label {value!r} is not a list; with task.multiLabel give each row's label as a list of label "
                f"names or a multi-hot list of {n} zeros and ones"
            )
        hot = [0.0] * n
        if value and all(not isinstance(v, str) for v in value):
            # Numbers: a multi-hot vector, one entry per label of task.labels.
            if len(value) != n or any(v not in (0, 1) for v in value):
                raise ValueError(
                    f"label {value!r} is not a multi-hot list of {n} zeros and ones (one per task.labels entry: "
                    f"{', '.join(self.index.labels)}); give label names instead, or fix the list"
                )
            return [float(v) for v in value]
        for name in value:
            if not isinstance(name, str) or name not in self.index.by_name:
                raise ValueError(self.index.unknown(name))
            hot[self.index.by_name[name]] = 1.0
        return hot


class SequenceClassificationTask:
    """AutoModelForSequenceClassification with dynamic padding; accuracy/F1 (single) or micro/macro F1 (multi)."""

    name = "sequence-classification"
    peft_task_type = "SEQ_CLS"  # which PeftModel wrapper (and so which head) an adapter gets
    default_metric = "accuracy"
    greater_is_better = True

    def default_metric_for(self, spec: FineTuneJobSpec) -> tuple[str, bool]:
        """Micro F1 picks the best multi-label checkpoint (subset accuracy is too coarse); accuracy otherwise."""
        return ("f1_micro", True) if spec.task.multi_label else ("accuracy", True)

    def column_roles(self, spec: FineTuneJobSpec) -> dict[str, str]:
        """text, textPair and label columns (task.columns over the defaults)."""
        return column_roles_for(spec)

    def _read_roles(self, spec: FineTuneJobSpec, dataset: Dataset) -> dict[str, str]:
        """The roles this dataset feeds: textPair only when named in the spec or its default column exists."""
        return text_roles(spec, self.column_roles(spec), dataset)

    def check_dataset(self, spec: FineTuneJobSpec, datasets: DatasetDict) -> None:
        """Columns present, texts are strings, every label is in task.labels."""
        encoder = LabelEncoder(spec.task.labels, spec.task.multi_label)
        problems = RowProblems()
        for split, dataset in datasets.items():
            roles = self._read_roles(spec, dataset)
            require_columns(dataset, spec, split, roles)
            where = describe_split(spec, split)
            for role in ("text", "textPair"):
                if role in roles:
                    check_strings(dataset, where, roles[role], role, problems)
            for row, value in enumerate(dataset[roles["label"]]):
                try:
                    encoder.encode(value)
                except ValueError as err:
                    problems.add(where, roles["label"], row, str(err))
        problems.raise_if_any()

    def load_model(self, spec: FineTuneJobSpec, model_path: str, load_kwargs: dict[str, Any]) -> PreTrainedModel:
        """The model with a classification head of len(task.labels) outputs, labelled by name."""
        from transformers import AutoModelForSequenceClassification

        problem = "multi_label_classification" if spec.task.multi_label else "single_label_classification"
        return load_labelled_model(
            AutoModelForSequenceClassification, spec, model_path, load_kwargs, problem_type=problem
        )

    def preprocess(self, spec: FineTuneJobSpec, dataset: Dataset, tokenizer: PreTrainedTokenizerBase) -> Dataset:
        """Tokenised inputs (truncated to maxSeqLength, not padded) and ``labels``; the raw columns dropped."""
        encoder = LabelEncoder(spec.task.labels, spec.task.multi_label)
        return tokenize_texts(spec, dataset, tokenizer, self._read_roles(spec, dataset), encoder.encode)

    def build_trainer(self, ctx: RunContext, model: Any) -> Trainer:
        """A Trainer with dynamically padded batches and this task's metrics."""
        # The loss normalised by the Trainer's item count: the same under any number of processes.
        loss = binary_cross_entropy_loss if ctx.spec.task.multi_label else cross_entropy_loss
        return text_trainer(ctx, model, self.preprocess, metrics_function(ctx.spec), loss)


def text_trainer(ctx: RunContext, model: Any, preprocess: Any, compute_metrics: Any, loss: Any) -> Trainer:
    """A Trainer for one prediction per text (or text pair): padded batches, the given metrics and loss."""
    from transformers import DataCollatorWithPadding

    args = training_arguments(ctx, label_names=["labels"])
    tokenizer = ctx.tokenizer
    config = model.config
    if getattr(config, "pad_token_id", None) is None and tokenizer.pad_token_id is not None:
        # Decoder models classify from the last non-pad token and need to know which id is padding.
        config.pad_token_id = tokenizer.pad_token_id
    train, evaluation = preprocessed_splits(ctx, args, lambda split: preprocess(ctx.spec, split, tokenizer))
    return task_trainer(
        ctx,
        model,
        args,
        train=train,
        evaluation=evaluation,
        collator=DataCollatorWithPadding(tokenizer, pad_to_multiple_of=pad_multiple(ctx)),
        compute_metrics=compute_metrics,
        compute_loss_func=loss,
    )


def text_roles(spec: FineTuneJobSpec, roles: dict[str, str], dataset: Dataset) -> dict[str, str]:
    """The roles a text task reads: text, label, and textPair when named in the spec or its default column exists."""
    read = {"text": roles["text"], "label": roles["label"]}
    if "textPair" in spec.task.columns or roles["textPair"] in dataset.column_names:
        read["textPair"] = roles["textPair"]
    return read


def tokenize_texts(spec: FineTuneJobSpec, dataset: Dataset, tokenizer: Any, roles: dict[str, str], target: Any) -> Any:
    """Tokenised text (pairs), truncated to maxSeqLength and not padded, with ``labels`` = target(label value)."""
    max_length = spec.training.max_seq_length

    def tokenize(batch: dict[str, list[Any]]) -> dict[str, Any]:
        pairs = batch[roles["textPair"]] if "textPair" in roles else None
        encoded = tokenizer(batch[roles["text"]], pairs, truncation=True, max_length=max_length)
        encoded["labels"] = [target(v) for v in batch[roles["label"]]]
        return dict(encoded)

    return dataset.map(tokenize, batched=True, remove_columns=dataset.column_names, desc="Tokenising")


def check_strings(dataset: Dataset, where: str, column: str, role: str, problems: RowProblems) -> None:
    """Record every row whose column (a text role) does not hold a string."""
    for row, value in enumerate(dataset[column]):
        if not isinstance(value, str):
            problems.add(where, column, row, f"({role}) expected text, got {value!r}; fill or drop the row")


def _logits(predictions: Any) -> np.ndarray:
    import numpy as np

    # Some models return extra outputs (hidden states) after the logits.
    return np.asarray(predictions[0] if isinstance(predictions, tuple) else predictions)


def metrics_function(spec: FineTuneJobSpec) -> Any:
    """compute_metrics for the Trainer: accuracy + macro F1, or (multi-label) micro/macro F1 + subset accuracy.

    Records each example's predicted label name (multi-label: the list of names over the threshold).
    """
    threshold = spec.task.threshold
    multi_label = spec.task.multi_label
    names = spec.task.labels

    def score(prediction: EvalPrediction) -> tuple[dict[str, float], list[Any]]:
        import numpy as np
        from sklearn.metrics import accuracy_score, f1_score

        logits = _logits(prediction.predictions)
        labels = np.asarray(prediction.label_ids)
        if multi_label:
            # sigmoid(x) > t  <=>  x > logit(t); no overflow for large logits.
            predicted = (logits > np.log(threshold / (1 - threshold))).astype(int)
            truth = labels.astype(int)
            chosen = [[names[i] for i in np.flatnonzero(row)] for row in predicted]
            return {
                "f1_micro": float(f1_score(truth, predicted, average="micro", zero_division=0)),
                "f1_macro": float(f1_score(truth, predicted, average="macro", zero_division=0)),
                "subset_accuracy": float(accuracy_score(truth, predicted)),
            }, chosen
        predicted = logits.argmax(axis=-1)
        return {
            "accuracy": float(accuracy_score(labels, predicted)),
            "f1_macro": float(f1_score(labels, predicted, average="macro", zero_division=0)),
        }, [names[i] for i in predicted]

    return PredictionRecorder(score)
