"""kto: Kahneman-Tversky optimisation of a causal LM on unpaired feedback, with TRL's KTOTrainer.

Each row holds a ``prompt``, one ``completion`` and a boolean ``label`` (true: desirable, false:
undesirable); columns from ``task.columns``. Prompt and completion are both plain text or both chat turns
(rendered with the tokenizer's chat template), as in the preference task. Thumbs-up/down logs fit as they
are: no pairing is needed, and the two kinds need not be equally many (``training.kto.desirableWeight`` /
``undesirableWeight`` rebalance them).

``training.kto`` sets beta, the loss variant (``kto`` or ``apo_zero_unpaired``) and the weights; sequences
are cut to ``maxSeqLength``. The reference policy is the preference task's: the base with the adapter
switched off for adapter methods, a frozen copy of the base for full fine-tuning. KTO estimates its KL term
from mismatched prompt/completion pairs within a batch (a batch needs at least two rows), which TRL builds
from rows in a fixed order: the train split is shuffled once with ``training.seed`` and then read in that
order every epoch (``training.groupByLength`` is refused for kto). Evaluation
reports ``eval_loss``, ``eval_kl`` and the rewards and log-probabilities of each kind.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

from finetune_trainer.data import describe_split, require_columns
from finetune_trainer.data_checks import RowProblems
from finetune_trainer.tasks.base import RunContext
from finetune_trainer.tasks.causal_lm import check_kept_examples, trl_config_kwargs
from finetune_trainer.tasks.preference import PreferenceTask, format_pairs, settle_reference

if TYPE_CHECKING:
    from datasets import DatasetDict
    from transformers import Trainer

    from finetune_api.spec import FineTuneJobSpec


class KtoTask(PreferenceTask):
    """Unpaired desirable / undesirable completions trained with KTO against the adapter-free base."""

    name = "kto"
    response_roles = ("completion",)
    test_split_refusal: str | None = (
        f"a test split is not evaluated for task {name} (KTO's metrics need the starting policy, gone once training "
        "ends); name it in dataset.evalSplit or remove it"
    )
    default_metric = "eval_loss"
    greater_is_better = False

    def check_dataset(self, spec: FineTuneJobSpec, datasets: DatasetDict) -> None:
        """The preference checks on prompt and completion, then every label is true or false."""
        super().check_dataset(spec, datasets)
        label = self.column_roles(spec)["label"]
        problems = RowProblems()
        for split, dataset in datasets.items():
            require_columns(dataset, spec, split, {"label": label})
            for row, value in enumerate(dataset[label]):
                if not isinstance(value, bool):
                    problems.add(
                        describe_split(spec, split),
                        label,
                        row,
                        f"(label role) expected true (desirable) or false (undesirable), got {value!r}",
                    )
        problems.raise_if_any()

    def sample_prompts(self, spec: FineTuneJobSpec, dataset: Any, tokenizer: Any) -> list[tuple[str, str | None]]:
        """(prompt, completion) of each row; an undesirable completion is no reference, so it is left out."""
        samples = super().sample_prompts(spec, dataset, tokenizer)
        labels = dataset[self.column_roles(spec)["label"]]
        return [
            (prompt, reference if good else None) for (prompt, reference), good in zip(samples, labels, strict=True)
        ]

    def build_trainer(self, ctx: RunContext, model: Any) -> Trainer:
        """A KTOTrainer; ``ref_model`` stays None (adapter off, or TRL's frozen copy for full fine-tuning)."""
        from trl import KTOConfig

        spec = ctx.spec
        columns = self.column_roles(spec)
        rows = functools.partial(format_pairs, columns=columns, responses=self.response_roles, keep=("label",))
        # TRL reads KTO's batches in order (each row's KL completion is its neighbour's): shuffle the rows once.
        train = rows(ctx.datasets["train"].shuffle(seed=spec.training.seed))
        eval_split = ctx.datasets.get("eval")
        evaluation = rows(eval_split) if eval_split is not None else None
        kto = spec.training.kto
        kwargs = trl_config_kwargs(ctx)
        kwargs.update(max_length=spec.training.max_seq_length, train_sampling_strategy="sequential")
        if kto is not None:
            kwargs.update(
                beta=kto.beta,
                loss_type=kto.loss_type,
                desirable_weight=kto.desirable_weight,
                undesirable_weight=kto.undesirable_weight,
            )
        trainer = kto_trainer_class()(
            model=model,
            ref_model=None,
            args=KTOConfig(**kwargs),
            train_dataset=train,
            eval_dataset=evaluation,
            processing_class=ctx.tokenizer,
            callbacks=list(ctx.callbacks),
        )
        check_kept_examples(spec, "train", train.num_rows, trainer.train_dataset)
        return trainer


@functools.cache
def kto_trainer_class() -> type:
    """KTOTrainer with the adapter-free base as reference (built on first use: TRL is slow to import)."""
    from trl import KTOTrainer

    class AdapterReferenceKTOTrainer(KTOTrainer):
        """KTOTrainer whose reference is the adapter switched off, not a copied adapter."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            settle_reference(self, "KTO")

    return AdapterReferenceKTOTrainer
