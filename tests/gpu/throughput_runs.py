"""The throughput options' runs of gpu_check.py, and the published figures they are printed beside.

Each run is LoRA SFT (bf16) on the check's ~1.1B Llama with one option changed, so pairs read directly:

* ``lora-sdpa`` vs ``lora-fa2``: attention sdpa vs flash_attention_2 (skipped where flash-attn is missing);
* ``lora-padded`` vs ``lora-padfree``: variable-length rows (1/8 to all of the sequence length) with dynamic
  padding vs ``training.paddingFree`` (flash attention where installed, else sdpa);
* ``lora-liger``: ``training.ligerKernels`` (against ``lora-sft``, which has them off);
* ``lora-compile``: ``training.compile`` (against ``lora-sft``).

In ``--dry-run`` (CPU) the runs whose options are GPU only are not trained: their spec is validated with
one GPU per pod and their TrainingArguments are checked to carry the option, and that is reported.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class OptionRun:
    """LoRA SFT with these training options, on the fixed-length or the variable-length rows."""

    training: dict[str, Any]
    data: str = "fixed"  # fixed: every row seq_len tokens; varlen: 1/8 to all of seq_len
    packages: tuple[str, ...] = ()  # skipped when one is missing
    gpu_only: bool = False  # not trained in --dry-run
    anchor: str = "lora"
    pairs_with: str = "lora-sft"
    kwargs_check: dict[str, Any] = field(default_factory=dict)  # TrainingArguments the option must set


OPTION_RUNS: dict[str, OptionRun] = {
    "lora-sdpa": OptionRun({"attention": "sdpa"}, pairs_with="lora-fa2"),
    "lora-fa2": OptionRun(
        {"attention": "flash_attention_2"}, packages=("flash_attn",), gpu_only=True, pairs_with="lora-sdpa"
    ),
    "lora-padded": OptionRun({}, data="varlen", pairs_with="lora-padfree"),
    "lora-padfree": OptionRun({"paddingFree": True}, data="varlen", pairs_with="lora-padded"),
    "lora-liger": OptionRun(
        {"ligerKernels": True}, packages=("liger_kernel",), gpu_only=True, kwargs_check={"use_liger_kernel": True}
    ),
    "lora-compile": OptionRun({"compile": True}, gpu_only=True, kwargs_check={"torch_compile": True}),
}


@dataclass(frozen=True)
class Anchor:
    """A published figure for the nearest setting, with where it comes from."""

    setting: str
    memory_gib: float | None
    tokens_per_s: float | None
    relative: str
    source: str


# torchtune's Llama-3.2-1B figures (single A100, from the torchtune README / Llama 3.2 recipes table, as quoted
# in this project's issue 15); Unsloth's and LLaMA-Factory's 7B figures are relative, as their READMEs give them.
ANCHORS: dict[str, list[Anchor]] = {
    "lora": [
        Anchor("torchtune Llama-3.2-1B LoRA, 1x A100", 8.5, 8210, "", "pytorch/torchtune README"),
        Anchor(
            "Unsloth Llama 7b QLoRA vs Hugging Face", None, None, "2.2x faster, -43% VRAM",
            "unslothai/unsloth README (first benchmark table)",
        ),
        Anchor(
            "LLaMA-Factory LoRA vs ChatGLM P-Tuning (ChatGLM2-6B, bs 4, cutoff 1024)", None, None,
            "up to 3.7x the samples/s (chart only)", "hiyouga/LLaMA-Factory README, Benchmark",
        ),
    ],
    "qlora": [Anchor("torchtune Llama-3.2-1B QLoRA, 1x A100", 4.6, 8035, "", "pytorch/torchtune README")],
    "full": [Anchor("torchtune Llama-3.2-1B full, 1x A100", 25.5, 2091, "", "pytorch/torchtune README")],
}  # fmt: skip
ANCHOR_OF_BASE_RUN = {"qlora-sft": "qlora", "lora-sft": "lora", "full-bf16": "full", "zero2": "full", "zero3": "full"}


def anchor_key(name: str) -> str:
    """Which published setting a run is nearest to (by method)."""
    run = OPTION_RUNS.get(name)
    return run.anchor if run is not None else ANCHOR_OF_BASE_RUN.get(name, "full")


def missing_packages(name: str) -> list[str]:
    """Packages a run needs that this environment lacks."""
    run = OPTION_RUNS.get(name)
    return [p for p in (run.packages if run else ()) if importlib.util.find_spec(p) is None]


def check_wiring(name: str, spec_dict: dict[str, Any]) -> str:
    """For a GPU-only run in --dry-run: the spec validates and its TrainingArguments carry the option."""
    from finetune_api.validation import parse_spec
    from finetune_trainer.arguments import DeviceCapability, training_kwargs
    from finetune_trainer.world import WorldInfo

    spec = parse_spec(spec_dict)
    gpu = DeviceCapability(kind="gpu", bf16=True)
    kwargs = training_kwargs(
        spec, "/tmp/x", world=WorldInfo(), device=gpu, metric_for_best_model="eval_loss", greater_is_better=False
    )
    run = OPTION_RUNS[name]
    wrong = {k: kwargs.get(k) for k, v in run.kwargs_check.items() if kwargs.get(k) != v}
    if wrong:
        raise AssertionError(f"{name}: TrainingArguments lack {run.kwargs_check}: {wrong}")
    options = ", ".join(f"{k}={v}" for k, v in run.training.items())
    return f"skipped in --dry-run: GPU only; spec with {options} validated, optim {kwargs['optim']}"


def print_anchors(outcomes: list[Any]) -> None:
    """Each measured run beside the published figures of its nearest setting, and the option pairs' ratios."""
    print("\nBeside published figures (nearest setting; different model, GPU and data: orders of magnitude only)")
    for key, anchors in ANCHORS.items():
        runs = [o for o in outcomes if o.ok and anchor_key(o.name) == key]
        if not runs:
            continue
        for a in anchors:
            published = a.relative or f"{a.tokens_per_s:,.0f} tok/s, {a.memory_gib} GiB"
            print(f"  {a.setting}: {published}  [{a.source}]")
        for o in runs:
            f = o.figures
            used = ", ".join(f"{k} {v}" for k, v in (f.get("runtime") or {}).items())
            print(
                f"    ours {o.name:<13} {f.get('tokens_per_s') or 0:>10,.0f} tok/s "
                f"{f.get('peak_mem_gib') or 0:6.1f} GiB  ({used})"
            )
    done = {o.name: o.figures for o in outcomes if o.ok}
    for name, run in OPTION_RUNS.items():
        other = done.get(run.pairs_with)
        if name in done and other and done[name].get("tokens_per_s") and other.get("tokens_per_s"):
            speed = done[name]["tokens_per_s"] / other["tokens_per_s"]
            memory = (done[name].get("peak_mem_gib") or 0) - (other.get("peak_mem_gib") or 0)
            print(f"  {name} / {run.pairs_with}: {speed:.2f}x tokens/s, {memory:+.1f} GiB peak")
