"""reward-modeling: a scalar score head trained on chosen/rejected pairs with TRL's RewardTrainer.

Rows are the preference task's (``prompt``, ``chosen``, ``rejected``: text or chat turns, same checks).
The model is the base with a one-output ``AutoModelForSequenceClassification`` head (causal LMs score
from their last non-padding token, encoders from their pooled output); the Bradley-Terry loss
``-log sigmoid(r_chosen - r_rejected)`` trains it. Evaluation reports ``eval_accuracy`` (the share of
held-out pairs whose chosen response scores higher; 0.5 is chance) and ``eval_margin``; the best
checkpoint is the one with the highest accuracy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from finetune_trainer.tasks.base import RunContext, pretrained_kwargs
from finetune_trainer.tasks.causal_lm import check_kept_examples, trl_config_kwargs
from finetune_trainer.tasks.preference import PreferenceTask, format_pairs

if TYPE_CHECKING:
    from transformers import PreTrainedModel, Trainer

    from finetune_api.spec import FineTuneJobSpec


class RewardModelingTask(PreferenceTask):
    """Preference pairs in, a reward model out: the data side is the preference task's, the model a scorer."""

    name = "reward-modeling"
    peft_task_type = "SEQ_CLS"  # a scalar score head on the causal LM
    test_split_refusal = None  # pair accuracy on a test split needs no reference model
    default_metric = "accuracy"
    greater_is_better = True

    def sample_prompts(self, spec: FineTuneJobSpec, dataset: Any, tokenizer: Any) -> list[tuple[str, str | None]]:
        """None: a reward model scores text, it generates none."""
        return []

    def load_model(self, spec: FineTuneJobSpec, model_path: str, load_kwargs: dict[str, Any]) -> PreTrainedModel:
        """The base with a one-output score head."""
        from transformers import AutoModelForSequenceClassification

        model: PreTrainedModel = AutoModelForSequenceClassification.from_pretrained(
            model_path,
            num_labels=1,
            ignore_mismatched_sizes=True,  # a classifier checkpoint's head has another size: replace it
            **pretrained_kwargs(spec, model_path),
            **load_kwargs,
        )
        return model

    def build_trainer(self, ctx: RunContext, model: Any) -> Trainer:
        """TRL's RewardTrainer on the pairs, sequences cut to maxSeqLength."""
        from trl import RewardConfig, RewardTrainer

        spec = ctx.spec
        if getattr(model.config, "pad_token_id", None) is None:
            # A causal LM scores from its last non-padding token and must know which id pads.
            model.config.pad_token_id = ctx.tokenizer.pad_token_id
        columns = self.column_roles(spec)
        train = format_pairs(ctx.datasets["train"], columns)
        eval_split = ctx.datasets.get("eval")
        evaluation = format_pairs(eval_split, columns) if eval_split is not None else None
        kwargs = trl_config_kwargs(ctx)
        kwargs.update(max_length=spec.training.max_seq_length)
        trainer = RewardTrainer(
            model=model,
            args=RewardConfig(**kwargs),
            train_dataset=train,
            eval_dataset=evaluation,
            processing_class=ctx.tokenizer,
            callbacks=list(ctx.callbacks),
        )
        check_kept_examples(spec, "train", train.num_rows, trainer.train_dataset)
        return trainer
