"""The final model evaluated on the test split (``dataset.testSplit`` / ``dataset.files.test``).

The task builds a second trainer around the trained model with the test split as its evaluation data,
so the test rows go through exactly the preprocessing, collator and metrics of evaluation during
training (QA's window post-processing, TRL's tokenisation). That trainer has no callbacks: it neither
reports progress nor uploads checkpoints. Metrics come back with a ``test_`` prefix.

Generative tasks also answer a few prompts of the test split (else the eval split) with the final model,
greedily: :func:`sample_generations`, written to ``samples.jsonl`` and into the model card (not under FSDP or
DeepSpeed, whose sharded weights ``generate`` cannot gather).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from finetune_trainer.data import TEST

if TYPE_CHECKING:
    from finetune_trainer.tasks.base import RunContext, TaskUnit

SAMPLE_COUNT = 3  # prompts answered for the model card
SAMPLE_MAX_NEW_TOKENS = 64


def evaluate_test_split(task: TaskUnit, ctx: RunContext, model: Any) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """``test_*`` metrics of ``model`` on the test split, and its predictions; both empty without a test split.

    The predictions (``{row, prediction}`` per test row, in order) come from tasks whose metrics record them
    (:class:`~finetune_trainer.tasks.base.PredictionRecorder`: classification, token classification, QA).
    """
    from datasets import DatasetDict

    from finetune_trainer.tasks.base import PredictionRecorder

    if TEST not in ctx.datasets:
        return {}, []
    test = ctx.datasets[TEST]
    # The test rows stand in for the train split too: the task preprocesses it, and the real one need not be again.
    test_ctx = dataclasses.replace(ctx, datasets=DatasetDict({"train": test, "eval": test}), callbacks=[])
    trainer = task.build_trainer(test_ctx, model)
    metrics = trainer.evaluate(metric_key_prefix="test")
    scores = {k: float(v) for k, v in metrics.items() if k.startswith("test_") and isinstance(v, int | float)}
    recorder = trainer.compute_metrics
    predicted = recorder.predictions if isinstance(recorder, PredictionRecorder) else []
    return scores, [{"row": i, "prediction": p} for i, p in enumerate(predicted)]


def sample_generations(task: TaskUnit, ctx: RunContext, model: Any, count: int = SAMPLE_COUNT) -> list[dict[str, Any]]:
    """The model's greedy answers to the first ``count`` prompts of the test (else eval) split.

    Each sample is ``{prompt, generated, reference}`` (reference: the row's own response, or None). Empty for
    a task that does not generate text, or with neither split.
    """
    import torch

    from finetune_trainer.tasks.base import GeneratesText

    split = ctx.datasets.get(TEST, ctx.datasets.get("eval"))
    if not isinstance(task, GeneratesText) or split is None:
        return []
    prompts = task.sample_prompts(ctx.spec, split.select(range(min(count, len(split)))), ctx.tokenizer)
    tokenizer, device = ctx.tokenizer, next(model.parameters()).device
    decoder_only = not model.config.is_encoder_decoder
    was_training = model.training
    model.eval()
    samples = []
    try:
        for prompt, reference in prompts:
            # The prompt as training rendered it: a chat template already put its BOS token in the text.
            bos = tokenizer.bos_token
            specials = not decoder_only or not (bos and prompt.startswith(bos))
            inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=specials).to(device)
            with torch.no_grad():
                ids = model.generate(
                    **inputs,
                    max_new_tokens=SAMPLE_MAX_NEW_TOKENS,
                    do_sample=False,
                    pad_token_id=tokenizer.pad_token_id,
                )
            new = ids[0, inputs["input_ids"].shape[1] :] if decoder_only else ids[0]
            generated = str(tokenizer.decode(new.tolist(), skip_special_tokens=True)).strip()
            samples.append({"prompt": prompt, "generated": generated, "reference": reference})
    finally:
        model.train(was_training)
    return samples
