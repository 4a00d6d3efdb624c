"""Padding-free batches keep examples apart: an example's logits are the same packed with others and alone.

Causal LM: the trainer's own padding-free collator (TRL's, as ``training.paddingFree`` configures it) on the
tiny Llama, under each attention kernel that trains on CPU (flex_attention has no CPU backward). Encoder:
transformers' flattening collator on the tiny BERT under sdpa and eager mixes the examples - which is why
the spec refuses padding-free token-classification unless the attention is flash_attention_2 - and, where a
CUDA GPU with flash-attn is present, flash_attention_2 keeps them apart.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from finetune_api.validation import parse_spec
from tests.trainer import tiny, tiny_causal

pytestmark = pytest.mark.slow

TOLERANCE = 1e-4  # fp32 on CPU: the packed row sums the same products in another order
EXAMPLES = [
    "the apple is red and the apple is here.",
    "Repeat the word: river. river river",
    "the forest is black and the forest is here. the glass is blue and the glass is here.",
    "the tiger is green.",
]


@pytest.fixture(scope="module")
def causal_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_causal.cached_tiny_causal(tmp_path_factory)


def _max_gap(packed: Any, alone: list[Any]) -> float:
    """Largest absolute difference between each example's logits alone and its slice of the packed row."""
    offset, gap = 0, 0.0
    for logits in alone:
        n = logits.shape[0]
        gap = max(gap, (packed[offset : offset + n] - logits).abs().max().item())
        offset += n
    assert offset == packed.shape[0]
    return gap


def _padding_free_sft_trainer(model_dir: Path, data: Path, out: Path, attention: str) -> Any:
    """The SFT trainer the engine builds for a padding-free spec, trained for one step."""
    from finetune_trainer import engine

    spec = parse_spec(
        tiny_causal.causal_spec(
            model_dir,
            {"type": "causal-lm", "format": "text"},
            {"train": str(data)},
            maxSteps=1,
            paddingFree=True,
            attention=attention,
        )
    )
    return engine.train(spec, out).trainer


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_causal_lm_example_logits_are_the_same_packed_and_alone(
    causal_model: Path, tmp_path: Path, attention: str
) -> None:
    import torch

    data = tiny.write_jsonl(tmp_path / "train.jsonl", [{"text": t} for t in EXAMPLES * 4])
    trainer = _padding_free_sft_trainer(causal_model, data, tmp_path / "run", attention)
    assert trainer.model.config._attn_implementation == attention
    tokenizer = trainer.processing_class
    features = [{"input_ids": tokenizer(t)["input_ids"]} for t in EXAMPLES]
    batch = trainer.data_collator(features)
    assert batch["input_ids"].shape[0] == 1  # one row, no padding
    assert batch["input_ids"].shape[1] == sum(len(f["input_ids"]) for f in features)
    assert "attention_mask" not in batch

    model = trainer.model.eval()
    with torch.no_grad():
        # use_cache=False as in training (TRL sets it): with a cache transformers skips the packed-sequence mask.
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits[0]
        alone = [model(input_ids=torch.tensor([f["input_ids"]]), use_cache=False).logits[0] for f in features]
        # Control: the same row without per-example position ids is one long text, and later examples see earlier ones.
        joined = model(input_ids=batch["input_ids"], use_cache=False).logits[0]
    assert _max_gap(packed, alone) < TOLERANCE
    assert _max_gap(joined, alone) > 100 * TOLERANCE


def _flattened_token_classifier(model_dir: Path, attention: str) -> tuple[Any, list[dict[str, Any]], dict[str, Any]]:
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    from finetune_trainer.tasks.base import flattening_collator

    model = AutoModelForTokenClassification.from_pretrained(str(model_dir), num_labels=3, attn_implementation=attention)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    features = [{"input_ids": tokenizer(t)["input_ids"]} for t in EXAMPLES]
    return model.eval(), features, flattening_collator(model)(features)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_encoder_attention_on_cpu_mixes_flattened_examples(tiny_bert: Path, attention: str) -> None:
    """Why the spec refuses padding-free token-classification without flash_attention_2."""
    import torch

    model, features, batch = _flattened_token_classifier(tiny_bert, attention)
    assert batch["position_ids"][0].tolist()[: len(features[0]["input_ids"]) + 1] == [
        *range(len(features[0]["input_ids"])),
        0,
    ]
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits[0]
        alone = [model(input_ids=torch.tensor([f["input_ids"]])).logits[0] for f in features]
    assert _max_gap(packed, alone) > 100 * TOLERANCE

    refused = tiny.spec_dict(
        tiny_bert,
        {"type": "token-classification", "labels": tiny.NER_LABELS},
        {"train": "/data/train.jsonl"},
        paddingFree=True,
        attention=attention,
    )
    with pytest.raises(ValueError, match="flash_attention_2"):
        parse_spec(refused)


def _cuda_with_flash_attn() -> bool:
    import importlib.util

    import torch

    return torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None


@pytest.mark.skipif(not _cuda_with_flash_attn(), reason="flash_attention_2 needs a CUDA GPU and flash-attn")
def test_encoder_example_logits_are_the_same_flattened_and_alone_with_flash_attention(tiny_bert: Path) -> None:
    import torch

    model, features, batch = _flattened_token_classifier(tiny_bert, "flash_attention_2")
    model = model.to("cuda", torch.bfloat16)
    with torch.no_grad():
        packed = model(**{k: v.cuda() for k, v in batch.items() if k != "labels"}).logits[0].float()
        alone = [model(input_ids=torch.tensor([f["input_ids"]]).cuda()).logits[0].float() for f in features]
    assert _max_gap(packed, alone) < 2e-2  # bf16
