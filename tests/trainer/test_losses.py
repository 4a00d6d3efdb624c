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
