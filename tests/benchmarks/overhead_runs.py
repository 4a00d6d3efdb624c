"""Our layer's cost against a plain ``transformers.Trainer``: interleaved runs, each in a fresh process.

Both sides train MiniLM sequence classification on the same short texts with the same collator
(``DataCollatorWithPadding``), the very same ``TrainingArguments`` (built by our ``training_kwargs`` from one
spec, logging every step) and the same number of torch threads: once through ``engine.train`` with status
reporting on (progress every step, to an in-process sink with no throttling), once with a plain ``Trainer``.

Each run is its own Python process (``python -m tests.benchmarks.overhead_runs SIDE ...``), so neither side
inherits the other's warm allocator or caches, and the sides alternate in ABBA order, so a load change on the
shared machine hits both. Each process reports samples per CPU second of the whole process (every thread,
the status reporter's included) over the optimiser steps after the first, and the settings it trained with;
the parent refuses to compare runs whose settings differ anywhere but where our layer is meant to differ.

With one torch thread (the default here) the process's CPU time is the work itself: with more threads than
free cores, OpenMP workers spin while they wait, and that spinning counts as CPU time in whichever run the
load happened to hit.
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
SIDES = ("plain", "ours")
# Where our layer is meant to differ from a plain Trainer: its loss function, its callbacks, the labels'
# names in the model config (ours names them from task.labels), the output directory.
EXPECTED_DIFFERENCES = {"compute_loss_func", "callbacks", "id2label", "label2id", "problem_type"}


def settings(trainer: Any, loader: Any) -> dict[str, Any]:
    """What decides the work of a step, read back from the built trainer (printed and compared by the parent)."""
    import torch

    args = trainer.args.to_dict()
    for key in ("output_dir", "logging_dir", "label_names"):
        args.pop(key, None)  # label_names: ours names ["labels"], the Trainer infers the same
    config = trainer.model.config.to_dict()
    return {
        "torch_threads": torch.get_num_threads(),
        "training_arguments_sha": hashlib.sha256(json.dumps(args, sort_keys=True, default=str).encode()).hexdigest()[
            :12
        ],
        "optim": str(args["optim"]),
        "learning_rate": args["learning_rate"],
        "batch_size": args["per_device_train_batch_size"],
        "logging_steps": args["logging_steps"],
        "seed": args["seed"],
        "model": type(trainer.model).__name__,
        "attention": trainer.model.config._attn_implementation,
        "dropout": config.get("hidden_dropout_prob"),
        "parameters": sum(p.numel() for p in trainer.model.parameters()),
        "collator": type(trainer.data_collator).__name__,
        "pad_to_multiple_of": getattr(trainer.data_collator, "pad_to_multiple_of", None),
        "dataloader_workers": loader.num_workers,
        "train_rows": len(trainer.train_dataset),
        "train_columns": sorted(trainer.train_dataset.column_names),
        "compute_loss_func": getattr(trainer.compute_loss_func, "__name__", None),
        "callbacks": sorted(type(c).__name__ for c in trainer.callback_handler.callbacks),
        "id2label": config.get("id2label"),
        "label2id": config.get("label2id"),
        "problem_type": config.get("problem_type"),
    }


def child(side: str, data: Path, steps: int, batch_size: int, threads: int, out: Path) -> dict[str, Any]:
    """One run of one side in this process: its speed and its settings."""
    import torch
    import transformers
    from transformers import Trainer, TrainerCallback

    torch.set_num_threads(threads)
    transformers.logging.set_verbosity_error()
    from tests.benchmarks import padding_runs
    from tests.benchmarks.bench_padding import StepTimer

    seen: dict[str, Any] = {}
    timer = StepTimer(batch_size)
    current: list[Any] = []
    original = Trainer.train

    def train(self: Any, *args: Any, **kwargs: Any) -> Any:
        current.append(self)
        return original(self, *args, **kwargs)

    class _Callback(TrainerCallback):
        def on_train_begin(self, *args: Any, **kwargs: Any) -> None:
            seen.update(settings(current[0], kwargs["train_dataloader"]))

        def on_step_end(self, *args: Any, **kwargs: Any) -> None:
            timer.callback.on_step_end(*args, **kwargs)

    class _Timer:
        callback = _Callback()

    Trainer.train = train
    run = padding_runs.plain_classification if side == "plain" else padding_runs.ours_classification
    run(data, steps, batch_size, out, _Timer)
    speed = timer.speed()
    return {"side": side, "wall": speed.wall, "cpu": speed.cpu, "settings": seen}


def run_child(side: str, data: Path, steps: int, batch_size: int, threads: int, out: Path) -> dict[str, Any]:
    """``child`` in a fresh Python process; its JSON line."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    command = [sys.executable, "-m", "tests.benchmarks.overhead_runs", side, str(data), str(steps)]
    command += [str(batch_size), str(threads), str(out)]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"overhead run {side} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(lines[-1])  # type: ignore[no-any-return]


def compare_settings(plain: dict[str, Any], ours: dict[str, Any]) -> list[str]:
    """The settings that differ where they should not (empty: a fair comparison)."""
    keys = set(plain) | set(ours)
    return sorted(k for k in keys if k not in EXPECTED_DIFFERENCES and plain.get(k) != ours.get(k))


def measure(data: Path, tmp: Path, steps: int, batch_size: int, rounds: int, threads: int) -> dict[str, Any]:
    """ABBA-interleaved rounds; per-round ratios ours/plain per CPU second and per wall second."""
    runs: dict[str, list[dict[str, Any]]] = {side: [] for side in SIDES}
    for index in range(rounds):
        order = SIDES if index % 2 == 0 else SIDES[::-1]
        for side in order:
            start = time.perf_counter()
            result = run_child(side, data, steps, batch_size, threads, tmp / f"{side}-{index}")
            runs[side].append(result)
            print(
                f"  round {index + 1} {side:5s} {result['wall']:7.2f} samples/s {result['cpu']:7.2f} samples/CPU-s"
                f"   ({time.perf_counter() - start:.0f} s wall, load {os.getloadavg()[0]:.1f})",
                flush=True,
            )
    plain_settings, ours_settings = runs["plain"][0]["settings"], runs["ours"][0]["settings"]
    unfair = compare_settings(plain_settings, ours_settings)
    if unfair:
        raise SystemExit(
            "overhead: the two sides trained with different settings: "
            + "; ".join(f"{k}: plain {plain_settings.get(k)!r}, ours {ours_settings.get(k)!r}" for k in unfair)
        )
    cpu_ratios = [o["cpu"] / p["cpu"] for p, o in zip(runs["plain"], runs["ours"], strict=True)]
    wall_ratios = [o["wall"] / p["wall"] for p, o in zip(runs["plain"], runs["ours"], strict=True)]
    return {
        "runs": runs,
        "settings": {"plain": plain_settings, "ours": ours_settings},
        "cpu_ratios": cpu_ratios,
        "wall_ratios": wall_ratios,
        "median_cpu_ratio": statistics.median(cpu_ratios),
        "median_wall_ratio": statistics.median(wall_ratios),
    }


def report(result: dict[str, Any]) -> None:
    """The settings both sides trained with, each run, and the ratios with their spread."""
    plain, ours = result["settings"]["plain"], result["settings"]["ours"]
    print("\n| setting | plain Trainer | ours |\n|---|---|---|")
    for key in sorted(set(plain) | set(ours)):
        mark = "" if key in EXPECTED_DIFFERENCES or plain.get(key) == ours.get(key) else " (DIFFERS)"
        print(f"| {key} | {plain.get(key)} | {ours.get(key)}{mark} |")
    print("\n| side | samples/CPU-s per run | median | samples/s per run |\n|---|---|---|---|")
    for side in SIDES:
        cpu = [r["cpu"] for r in result["runs"][side]]
        wall = [r["wall"] for r in result["runs"][side]]
        print(
            f"| {side} | {', '.join(f'{x:.2f}' for x in cpu)} | {statistics.median(cpu):.2f} "
            f"| {', '.join(f'{x:.2f}' for x in wall)} |"
        )
    cpu_ratios, wall_ratios = result["cpu_ratios"], result["wall_ratios"]
    print(
        f"\noverhead: ours/plain per CPU second, per round: {', '.join(f'{x:.3f}' for x in cpu_ratios)}; "
        f"median {result['median_cpu_ratio']:.3f} (min {min(cpu_ratios):.3f}, max {max(cpu_ratios):.3f}); "
        f"per wall second median {result['median_wall_ratio']:.3f} "
        f"(min {min(wall_ratios):.3f}, max {max(wall_ratios):.3f}); goal >= 0.98"
    )


if __name__ == "__main__":
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    side, data, steps, batch, threads, out = sys.argv[1:7]
    print(json.dumps(child(side, Path(data), int(steps), int(batch), int(threads), Path(out))))
