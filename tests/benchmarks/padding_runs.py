"""Runs for bench_padding.py beyond the classification pair: padding-free batches and our layer's cost.

Padding-free batches cannot serve sequence classification (its head reads one position per example, and
transformers' encoder masks ignore position ids on CPU; the spec refuses it), so padding-free is measured
where the trainer offers it: causal-LM SFT on the same texts, with a small random Llama (256 wide, 4 layers,
tied embeddings) that uses MiniLM's
tokenizer (so token counts, and the padding bound, are the classification benchmark's). Four pipelines:

- ``seed`` : every text padded to 256 tokens, a plain ``Trainer``, labels = inputs (the seed's layout);
- ``dynamic``: our trainer, causal-lm, each batch padded to its longest member (TRL's collator);
- ``padding-free``: our trainer with ``training.paddingFree``: the batch as one row, position ids per example;
- ``packing``: our trainer with ``training.packing``: best-fit-decreasing blocks of 256 tokens, padding-free.

The overhead pair trains MiniLM sequence classification twice with identical TrainingArguments (built by
our ``training_kwargs`` from one spec), model, data and collator: once through ``engine.train`` with status
reporting on (an in-process sink instead of the Kubernetes API), once with a plain ``transformers.Trainer``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.trainer import tiny

MAX_LENGTH = 256
CAUSAL_SIZE = {"hidden_size": 256, "intermediate_size": 1024, "num_hidden_layers": 4, "num_attention_heads": 4}


def build_causal_model(directory: Path) -> Path:
    """A small random Llama (256 wide, 4 layers), with MiniLM's tokenizer ([SEP] as end of text)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(str(tiny.MINILM_DIR))
    tokenizer.eos_token = tokenizer.sep_token
    tokenizer.save_pretrained(str(directory))
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        num_key_value_heads=CAUSAL_SIZE["num_attention_heads"],
        max_position_embeddings=512,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        **CAUSAL_SIZE,
    )
    LlamaForCausalLM(config).save_pretrained(str(directory))
    return directory


def _spec(model_dir: Path, data: Path, task: dict[str, Any], steps: int, batch_size: int, **training: Any) -> Any:
    from finetune_api.validation import parse_spec

    return parse_spec(
        {
            "model": {"path": str(model_dir)},
            "task": task,
            "dataset": {"files": {"train": str(data)}},
            "method": {"type": "full"},
            "training": {
                "maxSteps": steps,
                "batchSizePerDevice": batch_size,
                "learningRate": 2e-5,
                "warmupRatio": 0.1,
                "maxSeqLength": MAX_LENGTH,
                "evalStrategy": "no",
                "saveStrategy": "no",
                "loadBestModelAtEnd": False,
                "loggingSteps": 1000,
                **training,
            },
            "resources": {"gpusPerNode": 0},
        }
    )


def seed_training_arguments(out: Path, steps: int, batch_size: int, learning_rate: float) -> Any:
    """The seed pipeline's TrainingArguments: CPU, no saving, evaluation or logging, AdamW, seed 42."""
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=str(out),
        max_steps=steps,
        per_device_train_batch_size=batch_size,
        learning_rate=learning_rate,
        warmup_steps=0.1,
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        use_cpu=True,
        optim="adamw_torch",
        seed=42,
        disable_tqdm=True,
        logging_strategy="no",
    )


def seed_causal(model_dir: Path, data: Path, steps: int, batch_size: int, out: Path, timer: Any) -> float:
    """Plain Trainer, every text padded to 256 tokens; returns examples per optimiser step."""
    from datasets import load_dataset
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        DataCollatorForLanguageModeling,
        Trainer,
        set_seed,
    )

    set_seed(42)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    dataset = load_dataset("json", data_files={"train": str(data)})["train"]
    tokenized = dataset.map(
        lambda b: tokenizer(b["text"], truncation=True, padding="max_length", max_length=MAX_LENGTH),
        batched=True,
        remove_columns=dataset.column_names,
    )
    args = seed_training_arguments(out, steps, batch_size, 2e-5)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), attn_implementation="sdpa")
    collator = DataCollatorForLanguageModeling(tokenizer, mlm=False)  # labels = inputs, padding -> -100
    Trainer(model=model, args=args, train_dataset=tokenized, data_collator=collator, callbacks=[timer.callback]).train()
    return float(batch_size)


def ours_causal(model_dir: Path, data: Path, steps: int, batch_size: int, out: Path, timer: Any, mode: str) -> None:
    """engine.train, causal-lm text; mode dynamic | padding-free | packing."""
    from finetune_trainer import engine

    options = {"dynamic": {}, "padding-free": {"paddingFree": True}, "packing": {"packing": True}}[mode]
    spec = _spec(model_dir, data, {"type": "causal-lm", "format": "text"}, steps, batch_size, **options)
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    collate = DataCollatorForLanguageModeling.__call__
    # The timer counts the examples of each batch as TRL's collator makes it (a packed row holds several).
    DataCollatorForLanguageModeling.__call__ = lambda self, examples: timer.count(collate(self, examples))
    try:
        result = engine.train(spec, out, callbacks=[timer.callback])
    finally:
        DataCollatorForLanguageModeling.__call__ = collate
    assert result.trainer.model.config._attn_implementation == "sdpa"
    assert len(timer.examples) >= steps, "the collator was not counted"


def classification_spec(data: Path, steps: int, batch_size: int) -> Any:
    """The MiniLM sequence-classification spec both sides of the overhead pair train."""
    from tests.trainer.sentiment import LABELS

    # Logging (and so status reporting) every step: the most our layer ever does per step.
    task = {"type": "sequence-classification", "labels": LABELS}
    return _spec(tiny.MINILM_DIR, data, task, steps, batch_size, loggingSteps=1)


def ours_classification(data: Path, steps: int, batch_size: int, out: Path, timer: Any) -> None:
    """engine.train with status reporting on: progress every step to an in-process sink."""
    from finetune_trainer import engine
    from finetune_trainer.status_reporter import StatusReporter

    spec = classification_spec(data, steps, batch_size)
    sent: list[dict[str, Any]] = []
    original = StatusReporter.from_env
    StatusReporter.from_env = classmethod(lambda cls: cls(sent.append, interval=0.0))  # type: ignore[method-assign]
    try:
        engine.train(spec, out, callbacks=[timer.callback])
    finally:
        StatusReporter.from_env = original  # type: ignore[method-assign]
    assert any("progress" in s for s in sent), "status reporting did not run"


def plain_classification(data: Path, steps: int, batch_size: int, out: Path, timer: Any) -> None:
    """The same model, data, collator and TrainingArguments with a plain transformers Trainer."""
    from datasets import load_dataset
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
        set_seed,
    )

    from finetune_trainer.arguments import DeviceCapability, training_kwargs
    from finetune_trainer.world import WorldInfo
    from tests.trainer.sentiment import LABELS

    spec = classification_spec(data, steps, batch_size)
    kwargs = training_kwargs(
        spec,
        out,
        world=WorldInfo(),
        device=DeviceCapability(),
        metric_for_best_model="accuracy",
        greater_is_better=True,
    )
    set_seed(42)
    tokenizer = AutoTokenizer.from_pretrained(str(tiny.MINILM_DIR))
    dataset = load_dataset("json", data_files={"train": str(data)})["train"]
    tokenized = dataset.map(
        lambda b: {
            **tokenizer(b["text"], truncation=True, max_length=MAX_LENGTH),
            "labels": [LABELS.index(x) for x in b["label"]],
        },
        batched=True,
        remove_columns=dataset.column_names,
    )
    model = AutoModelForSequenceClassification.from_pretrained(
        str(tiny.MINILM_DIR), num_labels=len(LABELS), attn_implementation="sdpa"
    )
    Trainer(
        model=model,
        args=TrainingArguments(**kwargs),
        train_dataset=tokenized,
        data_collator=DataCollatorWithPadding(tokenizer),
        processing_class=tokenizer,
        callbacks=[timer.callback],
    ).train()
