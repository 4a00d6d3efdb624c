"""The classification losses handed to the Trainer equal the models' own losses on one process.

On one process the Trainer's item count is the batch's own, so ``losses.*`` must give exactly what
BERT's heads compute; a larger count (the items of every process) scales the sum down by that count.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from finetune_trainer.losses import IGNORE_INDEX, binary_cross_entropy_loss, cross_entropy_loss


def model_loss_and_outputs(model: Any, labels: Any) -> tuple[Any, Any]:
    import torch

    torch.manual_seed(0)
    inputs = {"input_ids": torch.randint(1000, 2000, (4, 7)), "attention_mask": torch.ones(4, 7, dtype=torch.long)}
    model.eval()
    with torch.no_grad():
        own = model(**inputs, labels=labels).loss
        outputs = model(**inputs)
    return own, outputs


def test_single_label_cross_entropy_is_the_models_own(tiny_bert: Path) -> None:
    import torch
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(str(tiny_bert), num_labels=3)
    labels = torch.tensor([0, 2, 1, 2])
    own, outputs = model_loss_and_outputs(model, labels)
    assert cross_entropy_loss(outputs, labels).item() == pytest.approx(own.item(), rel=1e-6)
    # Two processes with 4 rows each: this batch's sum over all 8 rows.
    assert cross_entropy_loss(outputs, labels, torch.tensor(8)).item() == pytest.approx(own.item() / 2, rel=1e-6)


def test_multi_label_binary_cross_entropy_is_the_models_own(tiny_bert: Path) -> None:
    import torch
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(
        str(tiny_bert), num_labels=3, problem_type="multi_label_classification"
    )
    labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0], [1.0, 1.0, 1.0], [0.0, 0.0, 0.0]])
    own, outputs = model_loss_and_outputs(model, labels)
    assert binary_cross_entropy_loss(outputs, labels).item() == pytest.approx(own.item(), rel=1e-6)


def test_token_cross_entropy_skips_ignored_positions_like_the_model(tiny_bert: Path) -> None:
    import torch
    from transformers import AutoModelForTokenClassification

    model = AutoModelForTokenClassification.from_pretrained(str(tiny_bert), num_labels=5)
    labels = torch.randint(0, 5, (4, 7))
    labels[:, 0] = IGNORE_INDEX  # [CLS]
    labels[1, 4:] = IGNORE_INDEX  # padding of a shorter row
    own, outputs = model_loss_and_outputs(model, labels)
    assert cross_entropy_loss(outputs, labels).item() == pytest.approx(own.item(), rel=1e-6)


class _SFTTrainerStub:
    """What ``sft_loss_from_logits`` reads of an SFTTrainer: the model, the args and the metric store."""

    def __init__(self, model: Any) -> None:
        from collections import defaultdict
        from types import SimpleNamespace

        self.model = model
        self.args = SimpleNamespace(average_tokens_across_devices=True, logging_steps=10, logging_first_step=True)
        self.state = SimpleNamespace(global_step=0, logging_steps=10, max_steps=100)  # the first step logs
        self.accelerator = SimpleNamespace(num_processes=1, gather_for_metrics=lambda x: x)
        self._metrics: dict[str, Any] = {"train": defaultdict(list), "eval": defaultdict(list)}
        self._total_train_tokens = 0


@pytest.mark.parametrize("layout", ["padded", "padding-free"])
def test_sft_loss_from_logits_matches_trl_s_fused_head(layout: str) -> None:
    """The CPU path of the causal-LM trainer: TRL's loss, gradients, entropy and token accuracy, in one pass."""
    import copy

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    from trl.trainer.utils import add_fused_lm_head

    from finetune_trainer.losses import sft_loss_from_logits

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, initializer_range=0.2, bos_token_id=None, eos_token_id=0, pad_token_id=1,
    )  # fmt: skip
    ours = LlamaForCausalLM(config).train()
    trl = copy.deepcopy(ours)
    add_fused_lm_head(trl, outputs=("log_probs", "entropy", "is_top1"))
    ids = torch.randint(2, 97, (3, 9))
    if layout == "padded":
        mask = torch.ones_like(ids)
        mask[1, 6:] = 0
        labels = ids.masked_fill(mask == 0, IGNORE_INDEX)
        labels[2, :4] = IGNORE_INDEX  # a prompt outside the loss
        inputs = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    else:  # three documents end to end, position ids restarting, first token of each outside the loss
        position_ids = torch.arange(9).repeat(3)[None]
        labels = ids.view(1, -1).masked_fill(position_ids == 0, IGNORE_INDEX)
        inputs = {"input_ids": ids.view(1, -1), "position_ids": position_ids, "labels": labels}
    items = torch.tensor(40)  # the Trainer's count over every process and accumulation step

    stub = _SFTTrainerStub(ours)
    loss = sft_loss_from_logits(stub, ours, dict(inputs), items)
    loss.backward()
    reference = trl(**inputs, fused_lm_head=True, num_items_in_batch=items)
    reference.loss.backward()

    assert loss.item() == pytest.approx(reference.loss.item(), rel=1e-5)
    for (name, mine), theirs in zip(ours.named_parameters(), trl.parameters(), strict=True):
        assert torch.allclose(mine.grad, theirs.grad, rtol=1e-4, atol=1e-6), name
    valid = reference.label_mask.sum()
    metrics = stub._metrics["train"]
    assert metrics["entropy"] == [pytest.approx((reference.entropy.sum() / valid).item(), rel=1e-5)]
    assert metrics["mean_token_accuracy"] == [pytest.approx((reference.is_top1.sum() / valid).item())]
    assert metrics["num_tokens"] == [24 if layout == "padded" else 27]  # tokens fed: padding excluded

    # A step that does not log: the same loss, the tokens counted, the metric passes skipped.
    stub.state.global_step = 4
    again = sft_loss_from_logits(stub, ours, dict(inputs), items)
    assert again.item() == pytest.approx(loss.item(), rel=1e-6)
    assert len(metrics["entropy"]) == 1
    assert metrics["num_tokens"] == [2 * (24 if layout == "padded" else 27)]
