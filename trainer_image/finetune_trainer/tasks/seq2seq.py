"""seq2seq: summarisation and translation with an encoder-decoder model (T5, BART, mT5, ...).

Columns (roles): ``source`` (the input text) and ``target`` (the text to produce). The model is
``AutoModelForSeq2SeqLM``; transformers' ``Seq2SeqTrainer`` trains it with teacher forcing and, at
evaluation, generates (``predict_with_generate``, greedy, at most ``maxSeqLength`` new tokens) and scores
the generations against the targets. Sources and targets are both cut to ``maxSeqLength`` tokens; a
target ends with the tokenizer's end-of-sequence token (added where the tokenizer does not), so the model
learns to stop.

Metrics: ``rouge1``, ``rouge2`` and ``rougeL`` (F-measure, 0..1, Porter stemming) and ``gen_len`` (mean
generated tokens); the best checkpoint is the one with the highest ``rougeL``. They are computed with the
``rouge-score`` package, which is what the ``evaluate`` library's ``rouge`` metric calls, but directly:
``evaluate.load("rouge")`` downloads its metric script from the Hugging Face hub at run time, which a
trainer pod without hub access (or an offline cluster) cannot do. rouge-score's tokenizer keeps only the
letters a-z and digits, so ROUGE means little for scripts without them; the loss is the guide there.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from finetune_trainer.data import describe_split, require_columns
from finetune_trainer.data_checks import RowProblems
from finetune_trainer.tasks.base import (
    RunContext,
    column_roles_for,
    pad_multiple,
    preprocessed_splits,
    pretrained_kwargs,
    task_trainer,
)
from finetune_trainer.tasks.sequence_classification import check_strings

if TYPE_CHECKING:
    from datasets import Dataset, DatasetDict
    from transformers import EvalPrediction, PreTrainedModel, PreTrainedTokenizerBase, Trainer

    from finetune_api.spec import FineTuneJobSpec

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


class Seq2SeqTask:
    """Source text in, target text out: teacher-forced training, generation and ROUGE at evaluation."""

    name = "seq2seq"
    peft_task_type = "SEQ_2_SEQ_LM"  # which PeftModel wrapper an adapter gets
    default_metric = "rougeL"
    greater_is_better = True

    def column_roles(self, spec: FineTuneJobSpec) -> dict[str, str]:
        """source and target columns (task.columns over the defaults)."""
        return column_roles_for(spec)

    def check_dataset(self, spec: FineTuneJobSpec, datasets: DatasetDict) -> None:
        """Both columns present in every split and every row holds text (all bad rows named at once)."""
        roles = self.column_roles(spec)
        problems = RowProblems()
        for split, dataset in datasets.items():
            require_columns(dataset, spec, split, roles)
            for role, column in roles.items():
                check_strings(dataset, describe_split(spec, split), column, role, problems)
        problems.raise_if_any()

    def load_model(self, spec: FineTuneJobSpec, model_path: str, load_kwargs: dict[str, Any]) -> PreTrainedModel:
        """The encoder-decoder with its language-modelling head."""
        from transformers import AutoModelForSeq2SeqLM

        model: PreTrainedModel = AutoModelForSeq2SeqLM.from_pretrained(
            model_path, **pretrained_kwargs(spec, model_path), **load_kwargs
        )
        return model

    def preprocess(self, spec: FineTuneJobSpec, dataset: Dataset, tokenizer: PreTrainedTokenizerBase) -> Dataset:
        """Tokenised sources and ``labels`` (target ids ending with end-of-sequence); raw columns dropped."""
        roles = self.column_roles(spec)
        limit = spec.training.max_seq_length
        eos = tokenizer.eos_token_id

        def tokenize(batch: dict[str, list[Any]]) -> dict[str, Any]:
            encoded = tokenizer(batch[roles["source"]], truncation=True, max_length=limit)
            targets = tokenizer(text_target=batch[roles["target"]], truncation=True, max_length=limit)["input_ids"]
            encoded["labels"] = [ends_with(ids, eos, limit) for ids in targets]
            return dict(encoded)

        return dataset.map(tokenize, batched=True, remove_columns=dataset.column_names)

    def sample_prompts(
        self, spec: FineTuneJobSpec, dataset: Dataset, tokenizer: PreTrainedTokenizerBase
    ) -> list[tuple[str, str | None]]:
        """(source, target) of each row."""
        roles = self.column_roles(spec)
        return [(row[roles["source"]], row[roles["target"]]) for row in dataset]

    def build_trainer(self, ctx: RunContext, model: Any) -> Trainer:
        """A Seq2SeqTrainer that generates at evaluation and scores the generations with ROUGE."""
        from transformers import DataCollatorForSeq2Seq, Seq2SeqTrainer, Seq2SeqTrainingArguments

        spec = ctx.spec
        args = Seq2SeqTrainingArguments(
            **ctx.training_kwargs,
            predict_with_generate=True,
            generation_max_length=spec.training.max_seq_length,
            generation_num_beams=1,
        )
        train, evaluation = preprocessed_splits(ctx, args, lambda d: self.preprocess(spec, d, ctx.tokenizer))
        collator = DataCollatorForSeq2Seq(ctx.tokenizer, model=model, pad_to_multiple_of=pad_multiple(ctx))
        return task_trainer(
            ctx,
            model,
            args,
            train=train,
            evaluation=evaluation,
            collator=collator,
            compute_metrics=rouge_metrics(ctx.tokenizer),
            trainer_class=Seq2SeqTrainer,
        )


def ends_with(ids: list[int], eos: int | None, limit: int) -> list[int]:
    """Target ids that end with ``eos`` and fit ``limit`` (a tokenizer without an eos post-processor adds none)."""
    if eos is None or (ids and ids[-1] == eos):
        return ids
    return [*ids[: limit - 1], eos]


def decode_generations(tokenizer: PreTrainedTokenizerBase, ids: Any) -> list[str]:
    """Token ids (labels' -100 padding included) as stripped texts."""
    import numpy as np

    array = np.asarray(ids)
    array = np.where(array < 0, tokenizer.pad_token_id, array)
    return [text.strip() for text in tokenizer.batch_decode(array, skip_special_tokens=True)]


def rouge_scores(predictions: list[str], references: list[str]) -> dict[str, float]:
    """Mean ROUGE-1/2/L F-measure of each prediction against its reference (0..1)."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    totals = dict.fromkeys(ROUGE_TYPES, 0.0)
    for prediction, reference in zip(predictions, references, strict=True):
        for kind, score in scorer.score(reference, prediction).items():
            totals[kind] += score.fmeasure
    count = max(len(predictions), 1)
    return {kind: total / count for kind, total in totals.items()}


def rouge_metrics(tokenizer: PreTrainedTokenizerBase) -> Any:
    """compute_metrics for Seq2SeqTrainer: ROUGE of the generations and their mean length in tokens."""
    import numpy as np

    def compute(prediction: EvalPrediction) -> dict[str, float]:
        generated = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
        predictions = decode_generations(tokenizer, generated)
        references = decode_generations(tokenizer, prediction.label_ids)
        lengths = [int(np.count_nonzero((row != tokenizer.pad_token_id) & (row >= 0))) for row in np.asarray(generated)]
        return {**rouge_scores(predictions, references), "gen_len": float(np.mean(lengths)) if lengths else 0.0}

    return compute
