"""Where a causal-LM training step's CPU time goes, layout by layout: why padding-free stays short of the bound.

The padding bound assumes a step costs in proportion to its tokens. This section times one full optimiser step
(forward, backward, AdamW) of the benchmark's causal-LM model on fixed synthetic batches, one torch thread,
best of ``repeats``, in CPU seconds of this process, and varies one thing at a time:

- ``rows``: 8 rows of 256 tokens, the model's own loss - the seed's layout, the bound's baseline;
- ``rows, TRL head``: the same batch through TRL's fused LM head (``add_fused_lm_head`` with the outputs
  SFTTrainer asks for: log-probabilities, entropy, top-1) - what every SFTTrainer step runs;
- ``flat``: the same 2,048 tokens as one row of 8 documents with position ids restarting per document (a
  packed batch, padding-free), the model's own loss: transformers' sdpa then attends through a dense
  2,048 x 2,048 block-diagonal mask, where the rows layout computes 8 x 256 x 256;
- ``flat, TRL head``: both - the packing step with TRL's head (our CPU path takes the model's own loss, ``flat``);
- ``short flat``: 8 short documents (``short_tokens`` each) in one row - our padding-free step on short texts,
  whose cost is mostly what does not shrink with tokens (AdamW over every parameter, the dense gradient of the
  tied embedding);
- ``optimizer only``: the AdamW step alone.

The ratios against ``rows`` are the ceilings these layouts can reach on this CPU, whatever the collator does.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROWS, LENGTH = 8, 256


def _step(model: Any, optimizer: Any, batch: dict[str, Any], fused: bool) -> Callable[[], None]:
    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        out = model(**batch, fused_lm_head=True) if fused else model(**batch)
        out.loss.backward()
        optimizer.step()

    return step


def _cpu_seconds(fn: Callable[[], None], repeats: int) -> float:
    fn()  # warm-up: allocator, optimizer state
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        fn()
        best = min(best, time.process_time() - start)
    return best


def measure(model_dir: Path, short_tokens: int, repeats: int = 3) -> dict[str, float]:
    """CPU seconds per optimiser step for each layout (one torch thread)."""
    import torch
    from transformers import AutoModelForCausalLM
    from trl.trainer.utils import add_fused_lm_head

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        base = AutoModelForCausalLM.from_pretrained(str(model_dir), attn_implementation="sdpa")
        base.train()
        fused = copy.deepcopy(base)
        add_fused_lm_head(fused, outputs=("log_probs", "entropy", "is_top1"))
        ids = torch.randint(1000, base.config.vocab_size, (ROWS, LENGTH), generator=torch.Generator().manual_seed(0))
        flat = {
            "input_ids": ids.view(1, -1),
            "labels": ids.view(1, -1),
            "position_ids": torch.arange(LENGTH).repeat(ROWS)[None],
        }
        short = ids[:, :short_tokens].reshape(1, -1)
        short_flat = {
            "input_ids": short,
            "labels": short,
            "position_ids": torch.arange(short_tokens).repeat(ROWS)[None],
        }
        rows = {"input_ids": ids, "labels": ids}
        cases: dict[str, tuple[Any, dict[str, Any], bool]] = {
            "rows": (base, rows, False),
            "rows, TRL head": (fused, rows, True),
            "flat": (base, flat, False),
            "flat, TRL head": (fused, flat, True),
            "short flat": (base, short_flat, False),
            "short flat, TRL head": (fused, short_flat, True),
        }
        seconds = {}
        for name, (model, batch, is_fused) in cases.items():
            optimizer = torch.optim.AdamW(model.parameters(), lr=2e-5)
            seconds[name] = _cpu_seconds(_step(model, optimizer, batch, is_fused), repeats)
        optimizer = torch.optim.AdamW(base.parameters(), lr=2e-5)
        _step(base, optimizer, rows, False)()  # gradients and optimizer state exist

        seconds["optimizer only"] = _cpu_seconds(optimizer.step, repeats)
        return seconds
    finally:
        torch.set_num_threads(threads)


def report(seconds: dict[str, float], bound_short: float, short_tokens: int = 14) -> None:
    """The table: CPU seconds per step, relative to the seed's layout, and what that caps."""
    rows = seconds["rows"]
    print("\n| step layout (1 thread) | CPU-s per step | x seed layout |\n|---|---|---|")
    for name, value in seconds.items():
        print(f"| {name} | {value:.3f} | {value / rows:.2f} |")
    packing, with_trl = rows / seconds["flat"], rows / seconds["flat, TRL head"]
    short = rows / seconds["short flat"] / bound_short
    print(
        f"\nceilings on this CPU (each layout's step cost against the seed's): packing, as many tokens per step as the "
        f"seed, at most {packing:.2f} of the bound with the model's own loss (our CPU path), {with_trl:.2f} with TRL's "
        f"head; padding-free alone on {short_tokens}-token texts, 8 per step, at most {short:.2f} of the short-text "
        f"bound ({bound_short:.2f}x)."
    )
