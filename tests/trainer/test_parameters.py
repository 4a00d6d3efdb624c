"""Parameter accounting: our method units and count_parameters agree with peft, to the parameter.

The models are bert-base shaped (hidden 768, 12 layers, vocab 30522, intermediate 3072) and built
on the meta device: no weights are allocated or downloaded.
"""

from __future__ import annotations

from typing import Any

import pytest

from finetune_api.validation import parse_spec
from finetune_trainer.methods import get_method
from finetune_trainer.methods.base import count_parameters

BERT_BASE_WITH_2_LABEL_HEAD = 109_483_778  # 109,482,240 body and pooler + 768 * 2 + 2 head


def bert_base_classifier() -> Any:
    import torch
    from transformers import AutoModelForSequenceClassification, BertConfig

    with torch.device("meta"):
        return AutoModelForSequenceClassification.from_config(BertConfig(num_labels=2))


def spec_with(method: dict[str, Any]) -> Any:
    return parse_spec(
        {
            "model": {"name": "bert-base-uncased"},
            "task": {"type": "sequence-classification", "labels": ["neg", "pos"]},
            "dataset": {"name": "imdb"},
            "method": method,
        }
    )


def test_lora_r8_on_query_and_value_counts_like_peft() -> None:
    spec = spec_with({"type": "lora", "lora": {"r": 8, "alpha": 32, "targetModules": ["query", "value"]}})
    model = get_method("lora").prepare(spec, bert_base_classifier(), "SEQ_CLS")
    # 294,912 LoRA weights + the 1,538-parameter head; the total also holds the head's frozen original.
    assert count_parameters(model) == (296_450, 109_780_228)
    assert count_parameters(model) == model.get_nb_trainable_parameters()


def test_lora_default_targets_for_bert_are_query_and_value() -> None:
    model = get_method("lora").prepare(spec_with({"type": "lora"}), bert_base_classifier(), "SEQ_CLS")
    assert set(model.peft_config["default"].target_modules) == {"query", "value"}
    assert "classifier" in model.peft_config["default"].modules_to_save


def test_prompt_tuning_counts_like_peft() -> None:
    spec = spec_with({"type": "prompt-tuning", "promptTuning": {"numVirtualTokens": 20}})
    model = get_method("prompt-tuning").prepare(spec, bert_base_classifier(), "SEQ_CLS")
    trainable, total = count_parameters(model)
    assert (trainable, total) == model.get_nb_trainable_parameters()
    assert trainable == 20 * 768 + 1_538


@pytest.mark.parametrize(
    ("method", "trainable"), [("full", BERT_BASE_WITH_2_LABEL_HEAD), ("feature-extraction", 1_538)]
)
def test_methods_without_adapters_count_the_plain_model(method: str, trainable: int) -> None:
    model = get_method(method).prepare(spec_with({"type": method}), bert_base_classifier(), "SEQ_CLS")
    assert count_parameters(model) == (trainable, BERT_BASE_WITH_2_LABEL_HEAD)
