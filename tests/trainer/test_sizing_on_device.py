"""training.sizing auto is resolved by the trainer for the GPU memory it has, and reported on the status.

On CPU the GPU memory comes from spec.resources.gpuMemory; the memory is chosen here from the estimate
itself so that the spec's micro-batch does not fit and a smaller one does.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from finetune_api.estimate import estimate_memory
from finetune_api.sizing import auto_size, with_changes
from finetune_api.validation import parse_spec
from finetune_trainer.arguments import DeviceCapability
from finetune_trainer.sizing_on_device import size_for_device
from tests.trainer import tiny


def _spec(model_dir: Path, train: Path, gpu_memory: int | None, **training: Any) -> Any:
    spec = tiny.spec_dict(
        model_dir,
        {"type": "sequence-classification", "labels": ["neg", "pos"]},
        {"train": str(train)},
        {"type": "full"},
        sizing="auto",
        batchSizePerDevice=64,
        maxSeqLength=512,
        maxSteps=1,
        evalStrategy="no",
        saveStrategy="no",
        loadBestModelAtEnd=False,
        **training,
    )
    if gpu_memory is not None:
        spec["resources"]["gpuMemory"] = str(gpu_memory)
    return parse_spec(spec)


def _memory_between_batches(spec: Any, config: dict[str, Any]) -> int:
    """Just enough for micro-batch 16 without checkpointing (so 64 and 32 do not fit, with or without)."""
    small = with_changes(spec, training={"batch_size_per_device": 16, "gradient_accumulation_steps": 4})
    return estimate_memory(small, config).per_gpu.total


class Recorder:
    def __init__(self) -> None:
        self.updates: list[Any] = []

    def update(self, status: Any) -> None:
        self.updates.append(status)


def test_auto_sizing_picks_a_smaller_micro_batch_and_reports_it(tiny_bert: Path, tmp_path: Path) -> None:
    train = tiny.write_jsonl(tmp_path / "train.jsonl", tiny.sentiment_rows(8))
    config = json.loads((tiny_bert / "config.json").read_text())
    memory = _memory_between_batches(_spec(tiny_bert, train, None), config)
    spec = _spec(tiny_bert, train, memory)
    recorder = Recorder()
    sized = size_for_device(spec, DeviceCapability(kind="cpu"), recorder)  # type: ignore[arg-type]
    expected = auto_size(spec, config, memory)
    assert expected is not None and sized.training == expected.training
    t = sized.training
    assert t.batch_size_per_device < 64 and t.batch_size_per_device * t.gradient_accumulation_steps == 64
    assert estimate_memory(sized, config).per_gpu.total <= memory
    (status,) = recorder.updates
    estimate = status.memory_estimate
    assert estimate.verdict == "FitsGPU" and estimate.gpu_memory_source == "spec.resources.gpuMemory"
    assert estimate.resolved.batch_size_per_device == t.batch_size_per_device
    assert estimate.resolved.gradient_accumulation_steps == t.gradient_accumulation_steps


def test_a_run_trains_with_the_resolved_batch(tiny_bert: Path, tmp_path: Path) -> None:
    from transformers import TrainerCallback

    from finetune_trainer import engine

    train = tiny.write_jsonl(tmp_path / "train.jsonl", tiny.sentiment_rows(64))
    config = json.loads((tiny_bert / "config.json").read_text())
    memory = _memory_between_batches(_spec(tiny_bert, train, None), config)
    spec = _spec(tiny_bert, train, memory)
    seen: dict[str, Any] = {}

    class Args(TrainerCallback):
        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            seen["batch"] = args.per_device_train_batch_size
            seen["accumulation"] = args.gradient_accumulation_steps

    engine.train(spec, tmp_path / "out", callbacks=[Args()])
    expected = auto_size(spec, config, memory)
    assert expected is not None
    assert (seen["batch"], seen["accumulation"]) == (
        expected.training.batch_size_per_device,
        expected.training.gradient_accumulation_steps,
    )
    assert seen["batch"] < 64


def test_without_a_gpu_or_gpu_memory_the_spec_runs_as_written(tiny_bert: Path, tmp_path: Path) -> None:
    train = tiny.write_jsonl(tmp_path / "train.jsonl", tiny.sentiment_rows(8))
    spec = _spec(tiny_bert, train, None)
    assert size_for_device(spec, DeviceCapability(kind="cpu")) is spec
