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


# Counts worked out by hand for bert-base (hidden 768, 12 layers, intermediate 3072) with the 2-label head (1,538).
HEAD = 1_538
LORA_QV_R8 = 24 * 8 * (768 + 768)  # 24 query/value projections, A (8x768) + B (768x8) each
PER_LAYER = 4 * (768 * 768 + 768) + 2 * 768 + (768 * 3072 + 3072) + (3072 * 768 + 768) + 2 * 768


@pytest.mark.parametrize(
    ("method", "trainable"),
    [
        # DoRA adds one magnitude per output feature of each adapted projection.
        (
            {"type": "lora", "lora": {"r": 8, "targetModules": ["query", "value"], "useDora": True}},
            LORA_QV_R8 + 24 * 768 + HEAD,
        ),
        # rsLoRA changes the scaling, not the shapes.
        ({"type": "lora", "lora": {"r": 8, "targetModules": ["query", "value"], "useRslora": True}}, LORA_QV_R8 + HEAD),
        # all-linear: q, k, v, attention output (768x768), intermediate (768->3072), output (3072->768) per layer, the
        # pooler; never the classifier.
        (
            {"type": "lora", "lora": {"r": 8, "targetModules": ["all-linear"]}},
            12 * 8 * (4 * 1536 + 2 * (768 + 3072)) + 8 * 1536 + HEAD,
        ),
        # modulesToSave: the pooler trains in full beside the adapter.
        (
            {"type": "lora", "lora": {"r": 8, "targetModules": ["query", "value"], "modulesToSave": ["pooler"]}},
            LORA_QV_R8 + 768 * 768 + 768 + HEAD,
        ),
        # IA3 with peft's BERT defaults: key and value (768 outputs each) and the two output.dense layers, which are
        # feed-forward, so rescaled on their input (768 and 3072).
        ({"type": "ia3"}, 12 * (768 + 768 + 768 + 3072) + HEAD),
        # Prefix tuning: one key and one value vector per layer per virtual token.
        ({"type": "prefix-tuning", "prefixTuning": {"numVirtualTokens": 20}}, 20 * 12 * 2 * 768 + HEAD),
        # P-tuning: 20 token embeddings and an MLP encoder of 768 -> 768 -> 768 -> 768.
        ({"type": "p-tuning", "pTuning": {"numVirtualTokens": 20}}, 20 * 768 + 3 * (768 * 768 + 768) + HEAD),
    ],
    ids=["dora", "rslora", "all-linear", "modules-to-save", "ia3", "prefix-tuning", "p-tuning"],
)
def test_adapter_methods_count_like_peft(method: dict[str, Any], trainable: int) -> None:
    model = get_method(method["type"]).prepare(spec_with(method), bert_base_classifier(), "SEQ_CLS")
    assert count_parameters(model) == model.get_nb_trainable_parameters()
    assert count_parameters(model)[0] == trainable


def test_freeze_trains_the_last_layers_and_the_head() -> None:
    spec = spec_with({"type": "freeze", "freeze": {"trainableLayers": 2}})
    model = get_method("freeze").prepare(spec, bert_base_classifier(), "SEQ_CLS")
    assert count_parameters(model) == (2 * PER_LAYER + HEAD, BERT_BASE_WITH_2_LABEL_HEAD)
    trainable_layers = {n.split(".")[3] for n, p in model.named_parameters() if p.requires_grad and ".layer." in n}
    assert trainable_layers == {"10", "11"}
