"""Token classification (NER, POS): one tag per word, learned on the first sub-token of each word.

Columns (roles): ``tokens`` (a list of words) and ``tags`` (a list of tag names or ids, one per
word). Words are split into sub-tokens by the model's tokenizer; the word's tag goes to its first
sub-token and every other sub-token (and every special token) gets -100, which the loss and the
metrics ignore. Metrics are seqeval's entity-level precision/recall/F1 plus token accuracy, so
tags should follow the IOB scheme (``O``, ``B-PER``, ``I-PER``, ...).
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, Any

from finetune_trainer.data import describe_split, require_columns
from finetune_trainer.data_checks import RowProblems
from finetune_trainer.losses import IGNORE_INDEX, cross_entropy_loss
from finetune_trainer.tasks.base import (
    LabelIndex,
    PredictionRecorder,
    RunContext,
    column_roles_for,
    flattening_collator,
    load_labelled_model,
    pad_multiple,
    preprocessed_splits,
    task_trainer,
    training_arguments,
)

if TYPE_CHECKING:
    from datasets import Dataset, DatasetDict
    from transformers import EvalPrediction, PreTrainedModel, PreTrainedTokenizerBase, Trainer

    from finetune_api.spec import FineTuneJobSpec

log = logging.getLogger(__name__)
IOB_TAG = re.compile(r"^(O|[BIESLU]-.+)$")


def align_tags(word_ids: list[int | None], tag_ids: list[int]) -> list[int]:
    """Sub-token labels from word tags: the first sub-token of a word gets its tag, the rest -100."""
    labels = []
    previous: int | None = None
    for word in word_ids:
        if word is None or word == previous:
            labels.append(IGNORE_INDEX)
        else:
            labels.append(tag_ids[word])
        previous = word
    return labels


def prefix_space_for_split_words(tokenizer: PreTrainedTokenizerBase) -> None:
    """Make a byte-level BPE tokenizer (RoBERTa, GPT-2, Llama 3) add a prefix space to every pre-split word.

    Byte-level BPE encodes a word differently at the start of a text than after a space; pre-split
    words must all get the in-sentence form. ``from_pretrained(add_prefix_space=True)`` reaches the
    pre-tokenizer only for the RoBERTa/GPT-2 classes, so the backend's pre-tokenizer is set here
    (pinned by tests/trainer/test_library_contracts.py).
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    pre_tokenizer = getattr(backend, "pre_tokenizer", None)
    if (
        backend is not None
        and pre_tokenizer is not None
        and type(pre_tokenizer).__name__ == "ByteLevel"
        and not getattr(pre_tokenizer, "add_prefix_space", True)
    ):
        pre_tokenizer.add_prefix_space = True
        backend.pre_tokenizer = pre_tokenizer


class TokenClassificationTask:
    """AutoModelForTokenClassification with DataCollatorForTokenClassification; seqeval metrics."""

    name = "token-classification"
    peft_task_type = "TOKEN_CLS"  # which PeftModel wrapper (and so which head) an adapter gets
    default_metric = "f1"
    greater_is_better = True

    def column_roles(self, spec: FineTuneJobSpec) -> dict[str, str]:
        """tokens and tags columns (task.columns over the defaults)."""
        return column_roles_for(spec)

    def adjust_tokenizer(self, tokenizer: PreTrainedTokenizerBase) -> None:
        """Pre-split words all get the in-sentence encoding (see :func:`prefix_space_for_split_words`)."""
        prefix_space_for_split_words(tokenizer)

    def check_dataset(self, spec: FineTuneJobSpec, datasets: DatasetDict) -> None:
        """Columns present, tokens are lists of words, one known tag per word."""
        roles = self.column_roles(spec)
        index = LabelIndex(spec.task.labels)
        odd = [name for name in spec.task.labels if not IOB_TAG.match(name)]
        if odd:
            log.warning(
                "task.labels %s do not follow the IOB scheme (O, B-X, I-X); seqeval's entity F1 will be misleading",
                ", ".join(odd),
            )
        problems = RowProblems()
        for split, dataset in datasets.items():
            require_columns(dataset, spec, split, roles)
            where = describe_split(spec, split)
            for row, (words, tags) in enumerate(zip(dataset[roles["tokens"]], dataset[roles["tags"]], strict=True)):
                if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
                    problems.add(where, roles["tokens"], row, f"expected a list of words, got {words!r}")
                elif not isinstance(tags, list) or len(tags) != len(words):
                    count = len(tags) if isinstance(tags, list) else repr(tags)
                    problems.add(
                        where,
                        roles["tags"],
                        row,
                        f"{count} tags for {len(words)} words in {roles['tokens']!r}; give exactly one tag per word",
                    )
                else:
                    for tag in tags:
                        try:
                            index.id_of(tag)
                        except ValueError as err:
                            problems.add(where, roles["tags"], row, str(err))
        problems.raise_if_any()

    def load_model(self, spec: FineTuneJobSpec, model_path: str, load_kwargs: dict[str, Any]) -> PreTrainedModel:
        """The model with a per-token classifier over task.labels."""
        from transformers import AutoModelForTokenClassification

        return load_labelled_model(AutoModelForTokenClassification, spec, model_path, load_kwargs)

    def preprocess(self, spec: FineTuneJobSpec, dataset: Dataset, tokenizer: PreTrainedTokenizerBase) -> Dataset:
        """Sub-word inputs (truncated, unpadded) with word tags aligned to first sub-tokens."""
        roles = self.column_roles(spec)
        index = LabelIndex(spec.task.labels)
        max_length = spec.training.max_seq_length

        def tokenize(batch: dict[str, list[Any]]) -> dict[str, Any]:
            words = batch[roles["tokens"]]
            encoded = tokenizer(words, is_split_into_words=True, truncation=True, max_length=max_length)
            encoded["labels"] = [
                align_tags(encoded.word_ids(batch_index=i), [index.id_of(t) for t in tags])
                for i, tags in enumerate(batch[roles["tags"]])
            ]
            return dict(encoded)

        return dataset.map(tokenize, batched=True, remove_columns=dataset.column_names, desc="Tokenising")

    def build_trainer(self, ctx: RunContext, model: Any) -> Trainer:
        """A Trainer whose collator pads inputs and labels (with -100) per batch, or flattens it (paddingFree)."""
        from transformers import DataCollatorForTokenClassification

        args = training_arguments(ctx, label_names=["labels"])
        train, evaluation = preprocessed_splits(
            ctx, args, lambda split: self.preprocess(ctx.spec, split, ctx.tokenizer)
        )
        collator: Any = (
            flattening_collator(model)
            if ctx.spec.training.padding_free
            else DataCollatorForTokenClassification(ctx.tokenizer, pad_to_multiple_of=pad_multiple(ctx))
        )
        return task_trainer(
            ctx,
            model,
            args,
            train=train,
            evaluation=evaluation,
            collator=collator,
            compute_metrics=metrics_function(ctx.spec.task.labels),
            # The loss normalised by the Trainer's token count: the same under any number of processes.
            compute_loss_func=cross_entropy_loss,
        )


def metrics_function(labels: list[str]) -> Any:
    """compute_metrics: seqeval precision, recall, F1 (entity level) and accuracy (tag level).

    Records each example's predicted tags, one per word (the tag of its first sub-token).
    """

    def score(prediction: EvalPrediction) -> tuple[dict[str, float], list[Any]]:
        import numpy as np
        from seqeval.metrics import accuracy_score, f1_score, precision_score, recall_score

        logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
        predicted = np.asarray(logits).argmax(axis=-1)
        gold = np.asarray(prediction.label_ids)
        truth: list[list[str]] = []
        guess: list[list[str]] = []
        for pred_row, gold_row in zip(predicted, gold, strict=True):
            keep = gold_row != IGNORE_INDEX
            truth.append([labels[i] for i in gold_row[keep]])
            guess.append([labels[i] for i in pred_row[keep]])
        return {
            "precision": float(precision_score(truth, guess, zero_division=0)),
            "recall": float(recall_score(truth, guess, zero_division=0)),
            "f1": float(f1_score(truth, guess, zero_division=0)),
            "accuracy": float(accuracy_score(truth, guess)),
        }, guess

    return PredictionRecorder(score)
