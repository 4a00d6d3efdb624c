"""The engine's run lifecycle on the tiny BERT: resuming from checkpoints, early stopping, the resolved spec."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from finetune_api.validation import parse_spec
from finetune_trainer import engine
from tests.trainer import tiny
from tests.trainer.tiny import StepCounter


def sentiment_spec(model_dir: Path, data: dict[str, Path], **training: Any) -> Any:
    return parse_spec(
        tiny.spec_dict(
            model_dir,
            {"type": "sequence-classification", "labels": ["neg", "pos"]},
            {"train": str(data["seq_train"]), "validation": str(data["seq_val"])},
            {"type": "lora"},
            **{"learningRate": 1e-2, **training},
        )
    )


@pytest.mark.slow
def test_a_rerun_resumes_from_the_newest_checkpoint(
    tmp_path: Path, tiny_bert: Path, encoder_data: dict[str, Path]
) -> None:
    schedule = {"evalStrategy": "no", "saveStrategy": "steps", "saveSteps": 2, "loadBestModelAtEnd": False}
    out = tmp_path / "out"
    engine.train(sentiment_spec(tiny_bert, encoder_data, maxSteps=4, **schedule), out)
    assert engine.latest_checkpoint(out) == str(out / "checkpoint-4")

    counter = StepCounter()
    result = engine.train(
        sentiment_spec(tiny_bert, encoder_data, maxSteps=8, **schedule), out, callbacks=[counter.callback]
    )
    assert result.metrics["global_step"] == 8
    assert counter.steps == 4  # steps 5..8 only


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_at_that_step_and_the_rerun_resumes_from_it(
    tmp_path: Path, tiny_bert: Path, encoder_data: dict[str, Path]
) -> None:
    import os
    import signal

    from transformers import TrainerCallback

    from finetune_trainer.preemption import Preempted

    class TermAtStep3(TrainerCallback):  # what the kubelet does to an evicted pod
        def on_step_end(self, args: Any, state: Any, control: Any, **_: Any) -> None:
            if state.global_step == 3:
                os.kill(os.getpid(), signal.SIGTERM)

    # No scheduled checkpoint before the end: the one found after the signal is the signal's.
    schedule = {"evalStrategy": "no", "saveStrategy": "steps", "saveSteps": 50, "loadBestModelAtEnd": False}
    out = tmp_path / "out"
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Preempted, match=r"at step 4: checkpoint-4 is saved on this pod's disk") as caught:
        engine.train(sentiment_spec(tiny_bert, encoder_data, maxSteps=10, **schedule), out, callbacks=[TermAtStep3()])
    assert caught.value.exit_code == 75  # retryable: the Job runs the pod again
    assert signal.getsignal(signal.SIGTERM) is before  # the handler lives only while training
    assert engine.latest_checkpoint(out) == str(out / "checkpoint-4")
    assert not (out / "metrics.json").exists()  # no final artifacts from a stopped run

    counter = StepCounter()
    result = engine.train(
        sentiment_spec(tiny_bert, encoder_data, maxSteps=10, **schedule), out, callbacks=[counter.callback]
    )
    assert result.metrics["global_step"] == 10
    assert counter.steps == 6  # steps 5..10: none trained twice


@pytest.mark.slow
def test_early_stopping_ends_training_when_the_metric_stalls(
    tmp_path: Path, tiny_bert: Path, encoder_data: dict[str, Path]
) -> None:
    spec = sentiment_spec(
        tiny_bert,
        encoder_data,
        learningRate=1e-12,  # nothing changes, so the first evaluation stays the best
        maxSteps=20,
        evalStrategy="steps",
        evalSteps=1,
        saveStrategy="steps",
        saveSteps=1,
        earlyStoppingPatience=1,
    )
    result = engine.train(spec, tmp_path / "out")
    assert result.metrics["global_step"] == 2


@pytest.mark.slow
def test_resolved_spec_fills_the_defaults_the_run_chose(
    tmp_path: Path, tiny_bert: Path, encoder_data: dict[str, Path]
) -> None:
    out = tmp_path / "out"
    engine.train(
        sentiment_spec(
            tiny_bert, encoder_data, maxSteps=2, evalStrategy="no", saveStrategy="no", loadBestModelAtEnd=False
        ),
        out,
    )
    resolved = yaml.safe_load((out / "spec.resolved.yaml").read_text())
    assert resolved["training"]["metricForBestModel"] == "accuracy"
    assert resolved["method"]["lora"] == {
        "r": 8,
        "alpha": 16,
        "dropout": 0.05,
        "targetModules": ["query", "value"],
        "bias": "none",
        "useDora": False,
        "useRslora": False,
        "initLoraWeights": "default",
        "modulesToSave": [],
    }
    assert resolved["training"]["warmupRatio"] == 0.0
    assert parse_spec(resolved).method.lora is not None
