"""The few places the trainer relies on a library's private behaviour, each pinned here.

Every test names the override it protects. When a library upgrade breaks one, the test fails with
what to change, instead of training going silently wrong (unshuffled QA windows, a second DPO
reference in memory, LoRA gradients of None, mis-tokenised words). methods/lora.py reads peft's public
``NoMatchingPeftModuleError`` instead of parsing its messages, so nothing of peft is pinned here.
"""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path

import pytest

from finetune_api.validation import parse_spec
from tests.trainer import tiny_causal


def test_trl_prepares_dpo_datasets_in_the_hook_the_preference_task_truncates_prompts_in() -> None:
    """tasks/preference.py overrides DPOTrainer._prepare_dataset to keep the last maxPromptLength tokens."""
    from trl import DPOConfig, DPOTrainer

    params = list(inspect.signature(DPOTrainer._prepare_dataset).parameters)
    assert params == ["self", "dataset", "processing_class", "args", "dataset_name"], (
        "TRL changed DPOTrainer._prepare_dataset: update PreferenceDPOTrainer._prepare_dataset in tasks/preference.py"
    )
    assert 'output["prompt_ids"]' in inspect.getsource(DPOTrainer._prepare_dataset), (
        "TRL renamed the prompt_ids column the preference task truncates"
    )
    assert "max_prompt_length" not in {f.name for f in dataclasses.fields(DPOConfig)}, (
        "TRL has a public max_prompt_length again: set it in DPOConfig and drop the _prepare_dataset override"
    )


def test_trl_copies_a_wrapped_adapter_as_ref_and_falls_back_to_the_base_without_it() -> None:
    """tasks/preference.py deletes the 'ref' adapter so the reference is the base with adapters disabled."""
    from trl import DPOTrainer

    source = inspect.getsource(DPOTrainer)
    assert 'model.add_adapter("ref"' in source, "TRL no longer copies the adapter as 'ref': drop_reference_adapter"
    assert '"ref" if "ref" in' in source, (
        "TRL no longer falls back to disabled adapters without 'ref': deleting it in tasks/preference.py is unsafe"
    )


def test_question_answering_evaluation_keeps_windows_in_dataset_order() -> None:
    """tasks/question_answering.py overrides Trainer._get_eval_sampler: span post-processing needs the order."""
    from datasets import Dataset
    from torch.utils.data import SequentialSampler
    from transformers import Trainer, TrainingArguments

    from finetune_trainer.tasks.question_answering import _trainer_class

    args = TrainingArguments(output_dir="/tmp/unused", report_to="none", train_sampling_strategy="group_by_length")
    data = Dataset.from_dict({"input_ids": [[1] * n for n in (5, 1, 9, 3)]})
    stock = Trainer.__new__(Trainer)
    stock.args, stock.processing_class = args, None
    qa = _trainer_class().__new__(_trainer_class())
    qa.args, qa.processing_class = args, None
    # Why the override exists: the stock evaluation sampler groups by length, out of dataset order.
    assert not isinstance(stock._get_eval_sampler(data), SequentialSampler)
    assert isinstance(qa._get_eval_sampler(data), SequentialSampler)


def test_bitsandbytes_still_reads_the_cpu_repacking_flag_qlora_switches_off() -> None:
    """methods/qlora.py sets Linear4bit.support_avx512bf16_for_cpu = False (keep_cpu_weights_trainable)."""
    bnb = pytest.importorskip("bitsandbytes")
    assert "support_avx512bf16_for_cpu" in inspect.getsource(bnb.nn.Linear4bit), (
        "bitsandbytes renamed or dropped the CPU repacking flag: check keep_cpu_weights_trainable in methods/qlora.py"
    )


def test_pre_split_words_tokenise_as_they_do_inside_a_sentence(tmp_path: Path) -> None:
    """tasks/token_classification.py sets add_prefix_space on a byte-level pre-tokenizer (prefix_space_for_split_words).

    Byte-level BPE encodes a word after a space (as in running text) differently from one at the start
    of a text; pre-split words should get the in-sentence form the model was trained on. The public
    ``add_prefix_space=True`` argument of from_pretrained does not reach a generic fast tokenizer's
    pre-tokenizer (only the RoBERTa/GPT-2 classes apply it); when it does, use it instead.
    """
    from transformers import AutoTokenizer

    from finetune_trainer.engine import load_tokenizer

    tiny_causal.build_tokenizer(tmp_path)
    public = AutoTokenizer.from_pretrained(str(tmp_path), add_prefix_space=True)
    assert not public.backend_tokenizer.pre_tokenizer.add_prefix_space, (
        "from_pretrained(add_prefix_space=True) reaches the pre-tokenizer now: drop prefix_space_for_split_words"
    )
    in_sentence = public(" cat", add_special_tokens=False)["input_ids"]
    at_start = public("cat", add_special_tokens=False)["input_ids"]
    assert in_sentence != at_start  # why it matters: the two forms are different tokens
    spec = parse_spec(
        {
            "model": {"path": str(tmp_path)},
            "task": {"type": "token-classification", "labels": ["O", "X"]},
            "dataset": {"files": {"train": "t.jsonl"}},
            "method": {"type": "full"},
        }
    )
    ours = load_tokenizer(spec, str(tmp_path))
    words = ours(["cat", "cat"], is_split_into_words=True, add_special_tokens=False)["input_ids"]
    assert words == in_sentence * 2
