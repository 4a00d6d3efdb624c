"""The API's one table of tasks and methods: the column roles each task reads, and the refused pairs.

The names themselves are the ``TaskType``/``MethodType`` literals of :mod:`finetune_api.spec`. The
trainer's units live in ``finetune_trainer.tasks``/``methods`` (one module and one registry line
each); what the API needs to know about them (the CRD's rules, the reference) is written here, once.
"""

from __future__ import annotations

from typing import get_args

from finetune_api.spec import MethodType, TaskType

TASKS: tuple[str, ...] = get_args(TaskType)
METHODS: tuple[str, ...] = get_args(MethodType)

# Dataset column roles each task reads (keys of spec.task.columns) and their defaults.
TASK_COLUMN_ROLES: dict[str, dict[str, str]] = {
    "sequence-classification": {"text": "text", "textPair": "text_pair", "label": "label"},
    "regression": {"text": "text", "textPair": "text_pair", "label": "label"},
    "token-classification": {"tokens": "tokens", "tags": "tags"},
    "question-answering": {"id": "id", "question": "question", "context": "context", "answers": "answers"},
    "seq2seq": {"source": "source", "target": "target"},
    "causal-lm": {
        "text": "text",
        "instruction": "instruction",
        "input": "input",
        "output": "output",
        "messages": "messages",
    },
    "preference": {"prompt": "prompt", "chosen": "chosen", "rejected": "rejected"},
    "orpo": {"prompt": "prompt", "chosen": "chosen", "rejected": "rejected"},
    "kto": {"prompt": "prompt", "completion": "completion", "label": "label"},
    "reward-modeling": {"prompt": "prompt", "chosen": "chosen", "rejected": "rejected"},
}

# Each refused pair with the reason a person reads, and what to use instead.
UNSUPPORTED: dict[tuple[str, str], str] = {
    ("causal-lm", "feature-extraction"): (
        "a causal LM has no separate head to train: its output layer is tied to the input embeddings, "
        "so freezing the base leaves nothing to learn; use lora, qlora or prompt-tuning"
    ),
    ("seq2seq", "feature-extraction"): (
        "an encoder-decoder's output layer is tied to its input embeddings, so freezing the base leaves nothing "
        "to learn; use lora, freeze or full"
    ),
    ("preference", "feature-extraction"): (
        "DPO shifts the whole policy's token probabilities, which a frozen base with no head cannot do; "
        "use lora or qlora"
    ),
    ("orpo", "feature-extraction"): (
        "ORPO shifts the whole policy's token probabilities, which a frozen base with no head cannot do; "
        "use lora or qlora"
    ),
    ("orpo", "prompt-tuning"): (
        "TRL's experimental ORPO trainer reads per-token log-probabilities at the input's positions, which the "
        "prepended virtual tokens shift; use lora or prefix-tuning (its prefix is not part of the input)"
    ),
    ("orpo", "p-tuning"): (
        "TRL's experimental ORPO trainer reads per-token log-probabilities at the input's positions, which "
        "p-tuning's prepended virtual tokens shift; use lora or prefix-tuning (its prefix is not part of the input)"
    ),
    ("kto", "feature-extraction"): (
        "KTO shifts the whole policy's token probabilities, which a frozen base with no head cannot do; "
        "use lora or qlora"
    ),
    ("question-answering", "prompt-tuning"): (
        "virtual tokens prepended to the input shift every position, which breaks the offset mapping that "
        "extractive answers are read from; use lora or qlora"
    ),
    ("token-classification", "prompt-tuning"): (
        "virtual tokens prepended to the input shift the word-to-token alignment the labels rely on; use lora or qlora"
    ),
    ("question-answering", "p-tuning"): (
        "p-tuning's virtual tokens are prepended to the input like prompt tuning's, which breaks the offset mapping "
        "that extractive answers are read from; use lora or prefix-tuning (its prefix is not part of the input)"
    ),
    ("token-classification", "p-tuning"): (
        "p-tuning's virtual tokens are prepended to the input like prompt tuning's, which shifts the word-to-token "
        "alignment the labels rely on; use lora or prefix-tuning (its prefix is not part of the input)"
    ),
}


def unsupported_reason(task: str, method: str) -> str | None:
    """Why a task x method pair is refused, or None when it is supported."""
    return UNSUPPORTED.get((task, method))


def supported_pairs() -> list[tuple[str, str]]:
    """Every supported (task, method) pair, in a stable order."""
    return [(t, m) for t in TASKS for m in METHODS if (t, m) not in UNSUPPORTED]


def matrix_markdown() -> str:
    """The support matrix as a Markdown table (for the README)."""
    lines = ["| task | " + " | ".join(METHODS) + " |", "|---|" + "---|" * len(METHODS)]
    for task in TASKS:
        cells = ["yes" if (task, m) not in UNSUPPORTED else "no" for m in METHODS]
        lines.append(f"| {task} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
