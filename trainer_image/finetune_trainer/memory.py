"""Bytes the trainer's tensors really hold: the measurements the memory estimate is checked against.

Used by the estimate's accuracy tests and by the GPU check (``tests/gpu/gpu_check.py``), which prints
these beside ``finetune_api.estimate`` for the same run.
"""

from __future__ import annotations

from typing import Any


def parameter_bytes(model: Any) -> int:
    """Bytes of every parameter, with each bitsandbytes 4-bit weight's quantisation state (scales, codes)."""
    import torch

    total = 0
    for param in model.parameters():
        total += param.nbytes
        state = getattr(param, "quant_state", None)
        if state is not None:
            nested = [state, state.state2] if state.state2 is not None else [state]
            total += sum(v.nbytes for s in nested for v in vars(s).values() if isinstance(v, torch.Tensor))
    return total


def gradient_bytes(model: Any) -> int:
    """Bytes of the gradients currently held."""
    return sum(p.grad.nbytes for p in model.parameters() if p.grad is not None)


def optimizer_state_bytes(optimizer: Any) -> int:
    """Bytes of an optimizer's per-parameter state (unwrapping accelerate's wrapper); shared 8-bit maps left out."""
    import torch

    inner = getattr(optimizer, "optimizer", optimizer)
    return sum(
        value.nbytes
        for state in inner.state.values()
        for key, value in state.items()
        if isinstance(value, torch.Tensor) and not key.startswith("qmap")
    )
