"""Classification losses the Trainer can scale correctly across processes and accumulation steps.

transformers 5's ``Trainer`` assumes that a model whose ``forward`` takes ``**kwargs`` divides its
loss by ``num_items_in_batch`` (the labelled items of the whole accumulated batch, summed over every
process). It then multiplies the loss by the number of processes (DDP averages the gradients back)
and skips the division by the gradient accumulation steps. Encoder heads such as BERT's take
``**kwargs`` for attention options but return a per-batch *mean*: the loss and its gradients came out
multiplied by the number of processes (and by the accumulation steps), so two processes logged
twice the loss, eval_loss and grad_norm of one.

Handing the Trainer these functions as ``compute_loss_func`` makes the loss what the Trainer expects
for every architecture: the sum over labelled items divided by ``num_items_in_batch``. The logged
loss is then the mean over the global batch, and the gradient that of that mean, whatever the
number of processes, nodes or accumulation steps.
"""

from __future__ import annotations

from typing import Any

IGNORE_INDEX = -100  # label of positions without a target (padding, later sub-tokens)


def _items(num_items_in_batch: Any, labels: Any) -> Any:
    """The divisor: the Trainer's global count, else this batch's labelled items (at least 1)."""
    import torch

    count = labels.ne(IGNORE_INDEX).sum() if num_items_in_batch is None else num_items_in_batch
    return torch.as_tensor(count).clamp(min=1)


def _logits(outputs: Any) -> Any:
    return outputs["logits"] if isinstance(outputs, dict) else outputs[0]


def cross_entropy_loss(outputs: Any, labels: Any, num_items_in_batch: Any = None) -> Any:
    """Softmax cross-entropy summed over labelled items (one per row, or one per token) / the item count."""
    import torch.nn.functional as F

    logits = _logits(outputs).float()
    classes = logits.size(-1)
    labels = labels.to(logits.device)
    total = F.cross_entropy(logits.view(-1, classes), labels.view(-1), ignore_index=IGNORE_INDEX, reduction="sum")
    return total / _items(num_items_in_batch, labels).to(total.device)


def binary_cross_entropy_loss(outputs: Any, labels: Any, num_items_in_batch: Any = None) -> Any:
    """Sigmoid cross-entropy summed over every (row, label) entry / the entry count (multi-label)."""
    import torch.nn.functional as F

    logits = _logits(outputs).float()
    labels = labels.to(logits.device, dtype=logits.dtype)
    total = F.binary_cross_entropy_with_logits(logits, labels, reduction="sum")
    return total / _items(num_items_in_batch, labels).to(total.device)


def mean_squared_error_loss(outputs: Any, labels: Any, num_items_in_batch: Any = None) -> Any:
    """Squared error summed over rows / the row count (regression: one score per row)."""
    logits = _logits(outputs).float().view(-1)
    labels = labels.to(logits.device, dtype=logits.dtype).view(-1)
    total = ((logits - labels) ** 2).sum()
    return total / _items(num_items_in_batch, labels).to(total.device)
