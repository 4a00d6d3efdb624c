"""Regression: one real-valued score per text or text pair (STS-B style), mean squared error.

Columns (roles): ``text``, optional ``textPair`` and ``label`` (a number per row). The head is a
one-output ``AutoModelForSequenceClassification`` (``problem_type: regression``). Evaluation reports
``mse``, ``rmse``, ``mae`` and the Pearson and Spearman correlations between predictions and targets;
the best checkpoint is the one with the lowest ``mse``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from finetune_trainer.data import describe_split, require_columns
from finetune_trainer.data_checks import RowProblems
from finetune_trainer.losses import mean_squared_error_loss
from finetune_trainer.tasks.base import RunContext, column_roles_for, pretrained_kwargs
from finetune_trainer.tasks.sequence_classification import check_strings, text_roles, text_trainer, tokenize_texts

if TYPE_CHECKING:
    from datasets import Dataset, DatasetDict
    from transformers import EvalPrediction, PreTrainedModel, PreTrainedTokenizerBase, Trainer

    from finetune_api.spec import FineTuneJobSpec


def score_of(value: Any) -> float:
    """A row's target as a float; ValueError naming the value when it is not a finite number."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"label {value!r} is not a number; regression needs a numeric score per row")
    if not math.isfinite(value):
        raise ValueError(f"label {value!r} is not a finite number; fill or drop the row")
    return float(value)


class RegressionTask:
    """A single-output head trained with mean squared error; MSE, RMSE, MAE, Pearson and Spearman at evaluation."""

    name = "regression"
    peft_task_type = "SEQ_CLS"  # which PeftModel wrapper (and so which head) an adapter gets
    default_metric = "mse"
    greater_is_better = False

    def column_roles(self, spec: FineTuneJobSpec) -> dict[str, str]:
        """text, textPair and label columns (task.columns over the defaults)."""
        return column_roles_for(spec)

    def check_dataset(self, spec: FineTuneJobSpec, datasets: DatasetDict) -> None:
        """Columns present, texts are strings, every label a finite number (all bad rows named at once)."""
        problems = RowProblems()
        for split, dataset in datasets.items():
            roles = text_roles(spec, self.column_roles(spec), dataset)
            require_columns(dataset, spec, split, roles)
            where = describe_split(spec, split)
            for role in ("text", "textPair"):
                if role in roles:
                    check_strings(dataset, where, roles[role], role, problems)
            for row, value in enumerate(dataset[roles["label"]]):
                try:
                    score_of(value)
                except ValueError as err:
                    problems.add(where, roles["label"], row, str(err))
        problems.raise_if_any()

    def load_model(self, spec: FineTuneJobSpec, model_path: str, load_kwargs: dict[str, Any]) -> PreTrainedModel:
        """The model with a one-output regression head."""
        from transformers import AutoModelForSequenceClassification

        model: PreTrainedModel = AutoModelForSequenceClassification.from_pretrained(
            model_path,
            num_labels=1,
            problem_type="regression",
            ignore_mismatched_sizes=True,  # a classification checkpoint's head has another size: replace it
            **pretrained_kwargs(spec, model_path),
            **load_kwargs,
        )
        return model

    def preprocess(self, spec: FineTuneJobSpec, dataset: Dataset, tokenizer: PreTrainedTokenizerBase) -> Dataset:
        """Tokenised inputs and float ``labels``; the raw columns dropped."""
        roles = text_roles(spec, self.column_roles(spec), dataset)
        return tokenize_texts(spec, dataset, tokenizer, roles, score_of)

    def build_trainer(self, ctx: RunContext, model: Any) -> Trainer:
        """A Trainer with padded batches, squared-error loss and regression metrics."""
        return text_trainer(ctx, model, self.preprocess, regression_metrics, mean_squared_error_loss)


def regression_metrics(prediction: EvalPrediction) -> dict[str, float]:
    """MSE, RMSE, MAE, and Pearson / Spearman correlation (0 when the predictions are constant)."""
    import numpy as np
    from scipy.stats import pearsonr, spearmanr

    raw = prediction.predictions
    predicted = np.asarray(raw[0] if isinstance(raw, tuple) else raw, dtype=np.float64).reshape(-1)
    truth = np.asarray(prediction.label_ids, dtype=np.float64).reshape(-1)
    error = predicted - truth
    constant = np.ptp(predicted) == 0 or np.ptp(truth) == 0
    return {
        "mse": float(np.mean(error**2)),
        "rmse": float(np.sqrt(np.mean(error**2))),
        "mae": float(np.mean(np.abs(error))),
        "pearson": 0.0 if constant else float(pearsonr(predicted, truth).statistic),
        "spearman": 0.0 if constant else float(spearmanr(predicted, truth).statistic),
    }
