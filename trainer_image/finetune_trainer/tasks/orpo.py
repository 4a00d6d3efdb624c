"""orpo: odds-ratio preference optimisation of a causal LM, with TRL's ORPOTrainer (experimental upstream).

The rows are the preference task's (``prompt``, ``chosen``, ``rejected``: text or chat turns, same
checks). ORPO adds to the chosen responses' language-modelling loss a term ``beta`` (``training.orpo.beta``)
times ``-log sigmoid(log odds(chosen) - log odds(rejected))``: alignment in the same pass as SFT, with no
reference model, so nothing but the policy is in memory whatever the method. Sequences are cut to
``maxSeqLength`` tokens. Evaluation reports ``eval_loss``, ``eval_nll_loss``, ``eval_log_odds_ratio``,
``eval_rewards/chosen``, ``eval_rewards/rejected``, ``eval_rewards/accuracies`` and ``eval_rewards/margins``;
with no reference, a test split is evaluated like the eval split.

TRL 1.16 ships ORPO only under ``trl.experimental.orpo``: its API may change in a TRL release without
notice, which is why the TRL pin matters for this task.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from finetune_trainer.tasks.base import RunContext
from finetune_trainer.tasks.causal_lm import check_kept_examples, trl_config_kwargs
from finetune_trainer.tasks.preference import PreferenceTask, format_pairs

if TYPE_CHECKING:
    from transformers import Trainer


class OrpoTask(PreferenceTask):
    """Preference pairs trained with ORPO: SFT on the chosen responses plus an odds-ratio penalty, no reference."""

    name = "orpo"
    test_split_refusal = None  # ORPO's metrics need only the policy
    default_metric = "eval_loss"
    greater_is_better = False

    def build_trainer(self, ctx: RunContext, model: Any) -> Trainer:
        """TRL's experimental ORPOTrainer on the pairs."""
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer

        spec = ctx.spec
        columns = self.column_roles(spec)
        train = format_pairs(ctx.datasets["train"], columns)
        eval_split = ctx.datasets.get("eval")
        evaluation = format_pairs(eval_split, columns) if eval_split is not None else None
        kwargs = trl_config_kwargs(ctx)
        kwargs.update(
            beta=spec.training.orpo.beta if spec.training.orpo else 0.1, max_length=spec.training.max_seq_length
        )
        trainer = ORPOTrainer(
            model=model,
            args=ORPOConfig(**kwargs),
            train_dataset=train,
            eval_dataset=evaluation,
            processing_class=ctx.tokenizer,
            callbacks=list(ctx.callbacks),
        )
        check_kept_examples(spec, "train", train.num_rows, trainer.train_dataset)
        return trainer
