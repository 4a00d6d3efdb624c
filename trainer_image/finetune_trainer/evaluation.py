"""The final model evaluated on the test split (``dataset.testSplit`` / ``dataset.files.test``).

The task builds a second trainer around the trained model with the test split as its evaluation data,
so the test rows go through exactly the preprocessing, collator and metrics of evaluation during
training (QA's window post-processing, TRL's tokenisation). That trainer has no callbacks: it neither
reports progress nor uploads checkpoints. Metrics come back with a ``test_`` prefix.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from finetune_trainer.data import TEST

if TYPE_CHECKING:
    from finetune_trainer.tasks.base import RunContext, TaskUnit


def evaluate_test_split(task: TaskUnit, ctx: RunContext, model: Any) -> dict[str, float]:
    """``test_*`` metrics of ``model`` on the test split; empty when the spec has none."""
    from datasets import DatasetDict

    if TEST not in ctx.datasets:
        return {}
    test = ctx.datasets[TEST]
    # The test rows stand in for the train split too: the task preprocesses it, and the real one need not be again.
    test_ctx = dataclasses.replace(ctx, datasets=DatasetDict({"train": test, "eval": test}), callbacks=[])
    trainer = task.build_trainer(test_ctx, model)
    metrics = trainer.evaluate(metric_key_prefix="test")
    return {k: float(v) for k, v in metrics.items() if k.startswith("test_") and isinstance(v, int | float)}
