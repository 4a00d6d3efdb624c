"""preference: direct preference optimisation (DPO) of a causal LM with TRL's DPOTrainer.

Each row holds a prompt, a chosen and a rejected response (columns from ``task.columns`` over the
defaults ``prompt``/``chosen``/``rejected``), either all plain strings or all chat turns
(``[{role, content}, ...]``, rendered with the tokenizer's chat template). Chat rows may leave the
prompt out when chosen and rejected are whole conversations sharing it (TRL extracts the common prefix).

``training.dpo`` sets beta, the loss variant and ``maxPromptLength`` (prompts are cut to their last
that-many tokens, default half of ``maxSeqLength``; the whole sequence is cut to ``maxSeqLength``).

The reference policy: with an adapter (lora, qlora, prompt-tuning) it is the same network with the
adapter switched off, so no second model is held; with full fine-tuning TRL loads a frozen copy of the
base. Evaluation reports ``eval_loss``, ``eval_rewards/chosen``, ``eval_rewards/rejected``,
``eval_rewards/accuracies`` and ``eval_rewards/margins``.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from finetune_trainer.data_checks import check_chat_column
from finetune_trainer.errors import DataError
from finetune_trainer.tasks.base import RunContext, column_roles_for
from finetune_trainer.tasks.causal_lm import (
    CausalLmTask,
    as_messages,
    check_kept_examples,
    clean_messages,
    require_chat_template,
    trl_config_kwargs,
)

if TYPE_CHECKING:
    from datasets import Dataset, DatasetDict
    from transformers import PreTrainedModel, PreTrainedTokenizerBase, Trainer

    from finetune_api.spec import FineTuneJobSpec

log = logging.getLogger(__name__)

RESPONSE_ROLES = ("chosen", "rejected")


def _is_chat(dataset: Dataset, column: str) -> bool:
    first = as_messages(dataset[0][column])
    return isinstance(first, list)


def max_prompt_length(spec: FineTuneJobSpec) -> int:
    """Prompt tokens kept (the last ones): training.dpo.maxPromptLength, default half of maxSeqLength."""
    dpo = spec.training.dpo
    if dpo is not None and dpo.max_prompt_length is not None:
        return dpo.max_prompt_length
    return max(spec.training.max_seq_length // 2, 1)


class PreferenceTask:
    """DPO on prompt / chosen / rejected pairs; the reference is the adapter-free base where an adapter trains."""

    name = "preference"
    peft_task_type = "CAUSAL_LM"  # which PeftModel wrapper (and so which head) an adapter gets
    test_split_refusal: str | None = (
        f"a test split is not evaluated for task {name} (DPO's metrics need the starting policy, gone once "
        "training ends); name it in dataset.evalSplit or remove it"
    )
    default_metric = "eval_loss"
    greater_is_better = False
    response_roles: tuple[str, ...] = RESPONSE_ROLES  # the roles holding responses (text or chat turns)

    def column_roles(self, spec: FineTuneJobSpec) -> dict[str, str]:
        """Role -> dataset column (prompt, chosen, rejected)."""
        return column_roles_for(spec)

    def check_dataset(self, spec: FineTuneJobSpec, datasets: DatasetDict) -> None:
        """Every split has chosen/rejected (and prompt) columns, all plain text or all chat turns.

        Every split and role is checked, and all problems are reported in one error.
        """
        from finetune_trainer.data_checks import CheckProblems

        problems = CheckProblems()
        for split, dataset in datasets.items():
            for check in _split_checks(spec, self.column_roles(spec), split, dataset, self.response_roles):
                with problems.check():
                    check()
        problems.raise_if_any()

    def check_with_tokenizer(
        self, spec: FineTuneJobSpec, datasets: DatasetDict, tokenizer: PreTrainedTokenizerBase
    ) -> None:
        """Chat-turn pairs need the model's chat template (checked by ``validate``, before any weights load)."""
        response = self.column_roles(spec)[self.response_roles[0]]
        if any(_is_chat(dataset, response) for dataset in datasets.values()):
            require_chat_template(tokenizer, "preference pairs given as chat turns are rendered")

    def sample_prompts(
        self, spec: FineTuneJobSpec, dataset: Dataset, tokenizer: PreTrainedTokenizerBase
    ) -> list[tuple[str, str | None]]:
        """(prompt, first response) of each row with a prompt column; chat turns rendered with the chat template."""
        columns = self.column_roles(spec)
        if columns["prompt"] not in dataset.column_names:
            return []
        samples: list[tuple[str, str | None]] = []
        for row in dataset:
            prompt, response = as_messages(row[columns["prompt"]]), as_messages(row[columns[self.response_roles[0]]])
            if isinstance(prompt, list):
                text = tokenizer.apply_chat_template(clean_messages(prompt), add_generation_prompt=True, tokenize=False)
                samples.append((str(text), response[-1]["content"] if response else None))
            else:
                samples.append((prompt, response))
        return samples

    def load_model(self, spec: FineTuneJobSpec, model_path: str, load_kwargs: dict[str, Any]) -> PreTrainedModel:
        """The policy: the base causal LM with its language-modelling head."""
        return CausalLmTask().load_model(spec, model_path, load_kwargs)

    def build_trainer(self, ctx: RunContext, model: Any) -> Trainer:
        """A DPOTrainer; ``ref_model`` stays None (adapter off, or TRL's own frozen copy for full fine-tuning)."""
        from trl import DPOConfig

        spec = ctx.spec
        columns = self.column_roles(spec)
        train = format_pairs(ctx.datasets["train"], columns)
        eval_split = ctx.datasets.get("eval")
        evaluation = format_pairs(eval_split, columns) if eval_split is not None else None

        dpo = spec.training.dpo
        kwargs = trl_config_kwargs(ctx)
        kwargs.update(
            beta=dpo.beta if dpo else 0.1,
            loss_type=[dpo.loss_type if dpo else "sigmoid"],
            max_length=spec.training.max_seq_length,
        )
        trainer_class = dpo_trainer_class()
        trainer = trainer_class(
            model=model,
            ref_model=None,
            args=DPOConfig(**kwargs),
            train_dataset=train,
            eval_dataset=evaluation,
            processing_class=ctx.tokenizer,
            callbacks=list(ctx.callbacks),
            max_prompt_length=max_prompt_length(spec),
        )
        check_kept_examples(spec, "train", train.num_rows, trainer.train_dataset)
        return trainer


def format_pairs(
    dataset: Dataset, columns: dict[str, str], responses: tuple[str, ...] = RESPONSE_ROLES, keep: tuple[str, ...] = ()
) -> Dataset:
    """A split with TRL's column names (prompt and the response roles, plus ``keep``); chat turns reduced to role
    and content."""
    original = dataset.column_names
    conversational = _is_chat(dataset, columns[responses[0]])
    has_prompt = columns["prompt"] in original

    def pair(row: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {role: row[columns[role]] for role in keep}
        for role in ("prompt", *responses):
            if role == "prompt" and not has_prompt:
                continue
            value = row[columns[role]]
            out[role] = clean_messages(value) if conversational else value
        return out

    return dataset.map(pair, remove_columns=original)


def drop_reference_adapter(model: Any) -> bool:
    """Remove the 'ref' adapter TRL copies from a ready PeftModel, so the reference is the adapter switched off.

    TRL's DPOTrainer, handed an already wrapped model, clones its adapter as a frozen 'ref' adapter (it
    assumes a pre-trained adapter). Ours are new: a fresh LoRA adapter (B = 0) leaves the base unchanged,
    so the base with adapters disabled is exactly the starting policy and the copy would only cost memory
    and an adapter pass per reference forward. For prompt tuning the reference becomes the base without
    virtual tokens: the KL anchor is the pretrained model itself, not the randomly initialised soft prompt
    (rewards then start near, not at, zero). Returns whether a copy was removed.
    """
    peft_config = getattr(model, "peft_config", None)
    if not isinstance(peft_config, dict) or "ref" not in peft_config:
        return False
    model.delete_adapter("ref")
    return True


def settle_reference(trainer: Any, what: str) -> None:
    """After a TRL trainer with a reference policy is built: the adapter-free base, or a frozen copy, as reference."""
    if drop_reference_adapter(trainer.model):
        log.info("%s reference: the base model with the adapter disabled (no second model in memory)", what)
    elif trainer.ref_model is not None:
        # TRL's copy of the base only ever runs under no_grad; freezing it says so and keeps it out of
        # anything that collects trainable parameters.
        trainer.ref_model.requires_grad_(False)
        trainer.ref_model.eval()
        log.info("%s reference: a frozen copy of the base model (full fine-tuning)", what)


@functools.cache
def dpo_trainer_class() -> type:
    """DPOTrainer with prompt truncation and an adapter-off reference (built on first use: TRL is slow to import)."""
    from trl import DPOTrainer

    class PreferenceDPOTrainer(DPOTrainer):
        """DPOTrainer that keeps the last ``max_prompt_length`` prompt tokens and references the adapter-free base."""

        def __init__(self, *args: Any, max_prompt_length: int | None = None, **kwargs: Any) -> None:
            # Read by _prepare_dataset, which the parent's __init__ calls.
            self._max_prompt_length = max_prompt_length
            super().__init__(*args, **kwargs)
            settle_reference(self, "DPO")

        def _prepare_dataset(self, dataset: Any, processing_class: Any, args: Any, dataset_name: str) -> Any:
            dataset = super()._prepare_dataset(dataset, processing_class, args, dataset_name)
            limit = self._max_prompt_length
            if limit is None:
                return dataset
            # The end of a prompt (the latest turn, the question itself) matters most next to the response.
            return dataset.map(
                lambda row: {"prompt_ids": row["prompt_ids"][-limit:]},
                desc=f"Truncating {dataset_name} prompts to {limit} tokens",
            )

    return PreferenceDPOTrainer


def _split_checks(
    spec: FineTuneJobSpec, columns: dict[str, str], split: str, dataset: Dataset, roles: tuple[str, ...]
) -> Iterator[Callable[[], None]]:
    """The checks of one split, each independent of the others' outcome once the columns exist."""
    from finetune_trainer.data import describe_split, require_columns

    where = describe_split(spec, split)
    responses = {role: columns[role] for role in roles}
    yield lambda: require_columns(dataset, spec, split, responses)
    if any(column not in dataset.column_names for column in responses.values()):
        return  # the row checks below need every response column
    conversational = _is_chat(dataset, columns[roles[0]])
    if any(_is_chat(dataset, column) != conversational for column in responses.values()):

        def mixed() -> None:
            named = " and ".join(f"{column!r} ({role} role)" for role, column in responses.items())
            raise DataError(f"{where}: columns {named} must all hold text or all hold chat turns")

        yield mixed
        return
    prompt = columns["prompt"]
    # Conversations may carry their shared prompt inside chosen/rejected; a text pair needs its prompt.
    if not (conversational and "prompt" not in spec.task.columns and prompt not in dataset.column_names):
        yield lambda: require_columns(dataset, spec, split, {"prompt": prompt})
    if conversational:
        for role, column in responses.items():
            yield functools.partial(check_chat_column, spec, split, dataset, column, role)
        if prompt in dataset.column_names:
            yield functools.partial(_check_chat_prompt, spec, split, dataset, prompt)
        return
    for role, column in {**responses, "prompt": prompt}.items():
        if column in dataset.column_names:
            yield functools.partial(_require_text_rows, where, dataset, column, role)


def _check_chat_prompt(spec: FineTuneJobSpec, split: str, dataset: Dataset, prompt: str) -> None:
    """A prompt column beside chat-turn responses holds chat turns too (without an assistant turn)."""
    from finetune_trainer.data import describe_split

    if not _is_chat(dataset, prompt):
        raise DataError(
            f"{describe_split(spec, split)}: column {prompt!r} (prompt role) holds text while chosen and rejected "
            "hold chat turns; give the prompt as turns too, e.g. [{'role': 'user', 'content': '...'}]"
        )
    check_chat_column(spec, split, dataset, prompt, "prompt", need_assistant=False)


def _require_text_rows(where: str, dataset: Dataset, column: str, role: str) -> None:
    """Every row of a text pair's column holds text."""
    bad = next((i for i, v in enumerate(dataset[column]) if not isinstance(v, str)), None)
    if bad is not None:
        raise DataError(
            f"{where}, row {bad}, column {column!r} ({role} role): expected text or chat turns, got "
            f"{type(dataset[bad][column]).__name__}; set spec.task.columns.{role} to the column that holds it."
        )
