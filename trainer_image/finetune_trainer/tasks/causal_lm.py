"""causal-lm: supervised fine-tuning of a decoder-only model with TRL's SFTTrainer.

Formats (``task.format``; columns from ``task.columns`` over the defaults in ``TASK_COLUMN_ROLES``):

* ``text``: one plain-text column; the loss covers every token.
* ``alpaca``: instruction / input (optional) / output columns, rendered with the Alpaca prompt; the
  prompt is the context and the loss covers only the output (TRL's prompt-completion loss).
* ``chatml``: a column of chat turns ``[{role, content}, ...]`` rendered in ChatML
  (``<|im_start|>role\\n...<|im_end|>``) by a template with ``{% generation %}`` markers, so the loss
  covers only the assistant turns (TRL's assistant-only loss). The saved tokenizer keeps that template.
* ``messages``: the same turns through the model's own chat template. Where that template marks
  assistant turns (or TRL ships a training version of it) the loss covers every assistant turn;
  otherwise the conversation is split before its last assistant turn and the loss covers that turn.

Packing (``training.packing``) uses TRL's best-fit-decreasing packing into ``maxSeqLength`` blocks,
padding-free: each packed document keeps its own position ids, and its own labels (so prompt tokens
stay out of the loss). ``training.paddingFree`` without packing lays each batch's examples end to end in one
row (TRL's padding-free collator; position ids restart per example, so no attention crosses examples).
Evaluation reports ``eval_loss`` and ``eval_perplexity`` (= exp(eval_loss)).
"""

from __future__ import annotations

import copy
import functools
import json
import logging
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from finetune_trainer.errors import ConfigError, DataError
from finetune_trainer.losses import logits_loss_serves, sft_loss_from_logits
from finetune_trainer.tasks.base import RunContext, column_roles_for, pretrained_kwargs

if TYPE_CHECKING:
    from datasets import Dataset, DatasetDict
    from transformers import PreTrainedModel, PreTrainedTokenizerBase, Trainer

    from finetune_api.spec import FineTuneJobSpec

log = logging.getLogger(__name__)

CHAT_ROLES = ("system", "user", "assistant")

# The roles each format reads; the others in TASK_COLUMN_ROLES are ignored for that format.
FORMAT_ROLES: dict[str, tuple[str, ...]] = {
    "text": ("text",),
    "alpaca": ("instruction", "input", "output"),
    "chatml": ("messages",),
    "messages": ("messages",),
}
OPTIONAL_ROLES = {"input"}  # alpaca rows without context simply have no input column

ALPACA_PROMPT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)
ALPACA_PROMPT_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)

# ChatML with {% generation %} markers around each assistant reply and its <|im_end|>, so the tokenizer can
# return the assistant mask TRL turns into labels (the end-of-turn token is trained: the model learns to stop).
CHATML_TRAINING_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['role'] == 'assistant' %}"
    "{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\n' }}"
    "{% else %}"
    "{{ message['content'] + '<|im_end|>' + '\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def text_format(spec: FineTuneJobSpec) -> str:
    """The causal-lm format of this spec (``text`` when task.format is empty)."""
    return spec.task.format or "text"


def format_columns(spec: FineTuneJobSpec) -> dict[str, str]:
    """Role -> dataset column for the roles this spec's format reads."""
    roles = column_roles_for(spec)
    return {role: roles[role] for role in FORMAT_ROLES[text_format(spec)]}


# ---- chat turns: validation and normalisation, shared with the preference task ----


def as_messages(value: Any) -> Any:
    """Chat turns as a list; a JSON string holding a list (CSV files cannot hold lists) is decoded."""
    if isinstance(value, str) and value.lstrip().startswith("["):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def message_problem(value: Any, *, need_assistant: bool = True) -> str | None:
    """What is wrong with one row's chat turns, or None when they are a valid conversation."""
    turns = as_messages(value)
    if not isinstance(turns, list):
        return f"expected a list of {{role, content}} turns, got {type(turns).__name__}"
    if not turns:
        return "the conversation is empty"
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            return f"turn {i} is a {type(turn).__name__}, expected a mapping with role and content"
        role = turn.get("role")
        if role not in CHAT_ROLES:
            return f"turn {i} has role {role!r}; roles must be one of {', '.join(CHAT_ROLES)}"
        if not isinstance(turn.get("content"), str):
            return f"turn {i} ({role}) has no text content (content must be a string)"
    if need_assistant and not any(t["role"] == "assistant" for t in turns):
        return "no assistant turn, so there is nothing to learn"
    return None


def clean_messages(value: Any) -> list[dict[str, str]]:
    """Turns reduced to role and content (Arrow adds null keys when rows' turns differ in shape)."""
    return [{"role": t["role"], "content": t["content"]} for t in as_messages(value)]


def _alpaca_prompt(instruction: str, context: str | None) -> str:
    if context and context.strip():
        return ALPACA_PROMPT_WITH_INPUT.format(instruction=instruction, input=context)
    return ALPACA_PROMPT.format(instruction=instruction)


def require_chat_template(tokenizer: PreTrainedTokenizerBase, what: str) -> None:
    """Raise ConfigError when the tokenizer has no chat template to render turns with."""
    if not tokenizer.chat_template:
        raise ConfigError(
            f"{what} with the model's chat template, and the tokenizer of {tokenizer.name_or_path} has none; "
            "use task.format chatml (ChatML markup, causal-lm) or a model whose tokenizer has a chat template"
        )


def template_marks_assistant(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether assistant-only loss works with this tokenizer's chat template (directly or via TRL's patch)."""
    from trl.chat_template_utils import get_training_chat_template, has_generation_markers

    template = tokenizer.chat_template
    if not template:
        return False
    if has_generation_markers(template):
        return True
    try:
        return get_training_chat_template(tokenizer) is not None
    except ValueError:
        return False


def split_last_assistant(turns: Sequence[dict[str, str]]) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """(prompt turns, [last assistant turn]): the conversation before its last reply, and that reply."""
    last = max(i for i, t in enumerate(turns) if t["role"] == "assistant")
    return list(turns[:last]), [dict(turns[last])]


class CausalLmTask:
    """Supervised fine-tuning of a causal LM (text, alpaca, chatml, messages) with TRL's SFTTrainer."""

    name = "causal-lm"
    peft_task_type = "CAUSAL_LM"  # which PeftModel wrapper (and so which head) an adapter gets
    default_metric = "eval_loss"
    greater_is_better = False

    def column_roles(self, spec: FineTuneJobSpec) -> dict[str, str]:
        """Role -> dataset column for this spec's format."""
        return format_columns(spec)

    def check_dataset(self, spec: FineTuneJobSpec, datasets: DatasetDict) -> None:
        """Every split has the format's columns, holding text or well-formed chat turns."""
        from finetune_trainer.data import require_columns
        from finetune_trainer.data_checks import CheckProblems, check_chat_column, require_string_column

        fmt = text_format(spec)
        columns = format_columns(spec)
        # An alpaca input column the user named explicitly must exist; the default one may be absent.
        optional = OPTIONAL_ROLES - set(spec.task.columns)
        problems = CheckProblems()  # every split and column checked, all problems reported at once
        for split, dataset in datasets.items():
            present = set(dataset.column_names)
            required = {role: col for role, col in columns.items() if role not in optional or col in present}
            with problems.check():
                require_columns(dataset, spec, split, required)
            if fmt in ("chatml", "messages"):
                if columns["messages"] in present:
                    with problems.check():
                        check_chat_column(spec, split, dataset, columns["messages"], "messages")
                continue
            for role, column in required.items():
                if column in present and not (role == "input" and _all_null(dataset, column)):
                    with problems.check():
                        require_string_column(spec, split, dataset, column, role)
        problems.raise_if_any()

    def check_with_tokenizer(
        self, spec: FineTuneJobSpec, datasets: DatasetDict, tokenizer: PreTrainedTokenizerBase
    ) -> None:
        """Format messages needs the model's chat template (checked by ``validate``, before any weights load)."""
        if text_format(spec) == "messages":
            require_chat_template(tokenizer, "task.format: messages renders the turns")

    def sample_prompts(
        self, spec: FineTuneJobSpec, dataset: Dataset, tokenizer: PreTrainedTokenizerBase
    ) -> list[tuple[str, str | None]]:
        """alpaca: the prompt and output; chat: the turns before the last reply, templated; text has no prompt."""
        fmt, columns = text_format(spec), format_columns(spec)
        if fmt == "alpaca":
            context = columns["input"]
            return [(_alpaca_prompt(r[columns["instruction"]], r.get(context)), r[columns["output"]]) for r in dataset]
        if fmt == "text":
            return []
        turns = [split_last_assistant(clean_messages(r[columns["messages"]])) for r in dataset]
        render = functools.partial(tokenizer.apply_chat_template, add_generation_prompt=True, tokenize=False)
        return [(str(render(prompt)), reply[0]["content"]) for prompt, reply in turns]

    def load_model(self, spec: FineTuneJobSpec, model_path: str, load_kwargs: dict[str, Any]) -> PreTrainedModel:
        """The base model with its language-modelling head."""
        from transformers import AutoModelForCausalLM

        model: PreTrainedModel = AutoModelForCausalLM.from_pretrained(
            model_path, **pretrained_kwargs(spec, model_path), **load_kwargs
        )
        return model

    def build_trainer(self, ctx: RunContext, model: Any) -> Trainer:
        """An SFTTrainer on the formatted splits, with the loss limited to responses where the format has them."""
        spec = ctx.spec
        fmt = text_format(spec)
        tokenizer = ctx.tokenizer
        loss_options: dict[str, Any] = {}
        if fmt == "chatml":
            tokenizer.chat_template = CHATML_TRAINING_TEMPLATE
            _warn_unless_single_tokens(tokenizer, ["<|im_start|>", "<|im_end|>"])
            loss_options["assistant_only_loss"] = True
            shape = "messages"
        elif fmt == "messages":
            require_chat_template(tokenizer, "task.format: messages renders the turns")
            if template_marks_assistant(tokenizer):
                loss_options["assistant_only_loss"] = True
                shape = "messages"
            else:
                log.warning(
                    "the chat template of %s does not mark assistant turns ({%% generation %%}); training on the "
                    "last assistant turn of each conversation, with the earlier turns as context",
                    ctx.model_path,
                )
                shape = "prompt-completion"
        elif fmt == "alpaca":
            shape = "prompt-completion"
        else:
            shape = "text"
        if shape == "prompt-completion":
            loss_options["completion_only_loss"] = True

        columns = format_columns(spec)
        train = format_split(ctx.datasets["train"], fmt, shape, columns)
        eval_split = ctx.datasets.get("eval")
        evaluation = format_split(eval_split, fmt, shape, columns) if eval_split is not None else None

        config = sft_config(ctx, **loss_options)
        trainer_class = perplexity_sft_trainer()
        trainer = trainer_class(
            model=model,
            args=config,
            train_dataset=train,
            eval_dataset=evaluation,
            processing_class=tokenizer,
            callbacks=list(ctx.callbacks),
            truncate_to=spec.training.max_seq_length if config.max_length is None else None,
        )
        check_kept_examples(spec, "train", train.num_rows, trainer.train_dataset)
        if evaluation is not None:
            check_kept_examples(spec, "eval", evaluation.num_rows, trainer.eval_dataset)
        return trainer


def check_kept_examples(spec: FineTuneJobSpec, split: str, before: int, prepared: Any) -> None:
    """Raise DataError when truncation left a split with no trainable tokens; warn when it dropped some.

    TRL drops examples whose response lies wholly beyond maxSeqLength (only the prompt survives truncation).
    """
    from finetune_trainer.data import describe_split

    after = len(prepared) if hasattr(prepared, "__len__") else before
    if spec.training.packing or after == before:
        return
    limit = spec.training.max_seq_length
    if after == 0:
        raise DataError(
            f"{describe_split(spec, split)}: in every example the prompt fills training.maxSeqLength ({limit} "
            "tokens), so no response token is left to learn from; raise training.maxSeqLength or shorten the prompts"
        )
    log.warning(
        "%s: %d of %d examples dropped because their prompt fills training.maxSeqLength (%d tokens)",
        describe_split(spec, split),
        before - after,
        before,
        limit,
    )


def _all_null(dataset: Dataset, column: str) -> bool:
    return all(v is None for v in dataset[column])


def _warn_unless_single_tokens(tokenizer: PreTrainedTokenizerBase, markers: list[str]) -> None:
    vocab = tokenizer.get_vocab()
    missing = [m for m in markers if m not in vocab]
    if missing:
        log.warning(
            "the tokenizer has no %s token(s): ChatML markup is learned as ordinary text; models trained for chat "
            "usually ship them as special tokens",
            ", ".join(missing),
        )


def format_split(dataset: Dataset, fmt: str, shape: str, columns: dict[str, str]) -> Dataset:
    """One split in the shape SFTTrainer reads: ``text``, ``prompt``/``completion`` or ``messages``."""
    original = dataset.column_names
    if fmt == "text":
        return dataset.map(lambda row: {"text": row[columns["text"]]}, remove_columns=original)
    if fmt == "alpaca":
        has_input = columns["input"] in original

        def alpaca(row: dict[str, Any]) -> dict[str, str]:
            context = row[columns["input"]] if has_input else None
            return {
                "prompt": _alpaca_prompt(row[columns["instruction"]], context),
                "completion": row[columns["output"]],
            }

        return dataset.map(alpaca, remove_columns=original)
    if shape == "messages":
        return dataset.map(lambda row: {"messages": clean_messages(row[columns["messages"]])}, remove_columns=original)

    def split_turns(row: dict[str, Any]) -> dict[str, Any]:
        prompt, completion = split_last_assistant(clean_messages(row[columns["messages"]]))
        return {"prompt": prompt, "completion": completion}

    return dataset.map(split_turns, remove_columns=original)


def trl_config_kwargs(ctx: RunContext) -> dict[str, Any]:
    """TrainingArguments keywords for a TRL config: TRL's own defaults (bf16 on, checkpointing on) neutralised.

    TRL configs turn bf16 and activation checkpointing on unless told otherwise; the spec decides both, so
    they are always written out.
    """
    kwargs = dict(ctx.training_kwargs)
    checkpointing = kwargs.pop("gradient_checkpointing", None)
    if kwargs.get("activation_checkpointing") is None:
        kwargs["activation_checkpointing"] = (
            checkpointing if checkpointing is not None else ctx.spec.training.gradient_checkpointing
        )
    kwargs.setdefault("bf16", False)
    kwargs.setdefault("fp16", False)
    return kwargs


def sft_config(ctx: RunContext, **overrides: Any) -> Any:
    """The SFTConfig for this run: training arguments from the spec, plus the SFT data options."""
    from trl import SFTConfig

    spec = ctx.spec
    kwargs = trl_config_kwargs(ctx)
    # TRL's bfd packing is padding-free by itself; without packing, TRL flattens each batch when padding_free is
    # set, but then refuses max_length (it is applied in _prepare_dataset instead, see perplexity_sft_trainer).
    flatten_only = spec.training.padding_free and not spec.training.packing
    kwargs.update(
        max_length=None if flatten_only else spec.training.max_seq_length,
        packing=spec.training.packing,
        packing_strategy="bfd",
        padding_free=spec.training.padding_free,
        dataset_text_field="text",
    )
    kwargs.update(overrides)
    return SFTConfig(**kwargs)


def perplexity(loss: float) -> float:
    """exp(loss), the perplexity of a mean token cross-entropy (inf where it overflows)."""
    return math.exp(loss) if loss < 700 else math.inf


@functools.cache
def perplexity_sft_trainer() -> type:
    """SFTTrainer that adds ``eval_perplexity`` beside ``eval_loss`` (built on first use: TRL is slow to import)."""
    from trl import SFTTrainer

    class PerplexitySFTTrainer(SFTTrainer):
        """SFTTrainer whose evaluation logs also carry the perplexity, which truncates padding-free data, and which
        computes the loss from the model's own logits where TRL's fused LM head is slow (CPU)."""

        def __init__(self, *args: Any, truncate_to: int | None = None, **kwargs: Any) -> None:
            # Read by _prepare_dataset, which the parent's __init__ calls.
            self._truncate_to = truncate_to
            super().__init__(*args, **kwargs)

        def _prepare_dataset(self, dataset: Any, processing_class: Any, args: Any, *rest: Any) -> Any:
            if self._truncate_to is not None:
                # Padding-free without packing: TRL refuses max_length in the config, so its own truncation (and
                # its dropping of examples left without a trainable token) runs here with a copy that has it.
                args = copy.copy(args)
                args.max_length = self._truncate_to
            return super()._prepare_dataset(dataset, processing_class, args, *rest)

        def compute_loss(
            self, model: Any, inputs: Any, return_outputs: Any = False, num_items_in_batch: Any = None
        ) -> Any:
            if logits_loss_serves(self, return_outputs):  # on CPU: one pass through the model's own logits
                return sft_loss_from_logits(self, model, inputs, num_items_in_batch)
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

        def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
            # Trainer.evaluate logs and returns the same dict, so the metric reaches both the log history
            # (progress, best-checkpoint choice) and the returned metrics.
            if "eval_loss" in logs:
                logs["eval_perplexity"] = perplexity(float(logs["eval_loss"]))
            super().log(logs, start_time)

    return PerplexitySFTTrainer
