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


def logits_loss_serves(trainer: Any, return_outputs: bool) -> bool:
    """Whether an SFTTrainer step should take :func:`sft_loss_from_logits` instead of TRL's fused LM head.

    The fused head is fast only where its Triton kernels run (CUDA, XPU). Elsewhere (CPU) it falls back to torch
    ops per vocabulary tile and recomputes every tile in the backward: a full step of the benchmark's causal LM
    costs about twice the model's own loss (docs/benchmarks.md). TRL's own paths for MoE auxiliary losses, custom
    loss functions, label smoothing and returned outputs stay as they are.
    """
    from trl.kernels.chunked_logprob import _use_triton

    plain = not (return_outputs or trainer.aux_loss_enabled or trainer.compute_loss_func or trainer.label_smoother)
    return plain and not _use_triton(trainer.args.device)


def sft_loss_from_logits(trainer: Any, model: Any, inputs: dict[str, Any], num_items_in_batch: Any = None) -> Any:
    """SFTTrainer's training loss and logged metrics from the model's own logits, in one forward pass.

    The loss is TRL's (and the model's own): the next-token cross-entropy summed over labelled tokens / the
    Trainer's item count, scaled by the process count like TRL's. TRL's ``entropy`` and ``mean_token_accuracy``
    take a full pass over the logits each, on CPU as much as the loss itself, so in training they are computed on
    the steps that log (the logged value is that step's, where TRL's is the mean since the last log); in evaluation
    on every batch. ``num_tokens`` counts every step. For devices where TRL's head is slow (:func:`logits_loss_serves`).
    """
    import torch
    import torch.nn.functional as F

    training = trainer.model.training
    labels = inputs["labels"]
    outputs = model(**{k: v for k, v in inputs.items() if k != "labels"}, use_cache=False)
    extra = outputs.logits.size(1) - labels.size(1)
    if extra > 0:  # prompt-learning PEFT prepends virtual tokens: they carry no labels (the last predicts the first)
        labels = F.pad(labels, (extra, 0), value=IGNORE_INDEX)
    # Like the model's own loss: the labels shift left (the last position predicts nothing), not the logits, so
    # the (tokens x vocabulary) logits are not copied.
    logits = outputs.logits.flatten(0, 1)
    targets = F.pad(labels, (0, 1), value=IGNORE_INDEX)[:, 1:].to(logits.device).flatten()
    total = F.cross_entropy(logits.float(), targets, ignore_index=IGNORE_INDEX, reduction="sum")
    mask = targets != IGNORE_INDEX
    count = mask.sum() if num_items_in_batch is None else num_items_in_batch
    loss = total / torch.as_tensor(count).clamp(min=1)
    if trainer.args.average_tokens_across_devices and num_items_in_batch is not None:
        loss = loss * trainer.accelerator.num_processes

    gather = trainer.accelerator.gather_for_metrics
    metrics = trainer._metrics["train" if training else "eval"]
    if not training or _logs_this_step(trainer):
        with torch.no_grad():
            scored = logits.detach()[mask].float()
            log_probs = F.log_softmax(scored, dim=-1)
            num_valid = gather(mask.sum()).sum()
            entropy = gather(-(log_probs.exp() * log_probs).sum()).sum()
            correct = gather((scored.argmax(-1) == targets[mask]).sum()).sum()
        metrics["entropy"].append((entropy / num_valid).item() if num_valid > 0 else 0.0)
        metrics["mean_token_accuracy"].append((correct / num_valid).item() if num_valid > 0 else 0.0)
    if training:
        present = inputs.get("attention_mask")  # padding-free batches have none: every position is a token
        tokens = present.sum() if present is not None else torch.tensor(inputs["position_ids"].size(1))
        trainer._total_train_tokens += gather(tokens.to(mask.device)).sum().item()
    metrics["num_tokens"] = [trainer._total_train_tokens]
    return loss


def _logs_this_step(trainer: Any) -> bool:
    """Whether the optimizer step this micro-batch belongs to ends in a log (the Trainer's own rule)."""
    state, args = trainer.state, trainer.args
    step = state.global_step + 1
    every = state.logging_steps or args.logging_steps
    return bool((every and step % every == 0) or (step == 1 and args.logging_first_step))
