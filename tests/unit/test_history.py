"""status.history: a fixed budget per series, old points merged (never dropped) so the curve keeps its shape."""

from __future__ import annotations

import itertools
import json
import math
import random
import time

import numpy as np
import pytest
from transformers import TrainerControl, TrainerState, TrainingArguments

from finetune_api.history import add_eval, add_train, covered_steps, from_log_history
from finetune_api.status import EvalPoint, FineTuneJobStatus, History, TrainPoint
from finetune_trainer.history_recorder import HistoryRecorder, history_jsonl
from finetune_trainer.status_reporter import ProgressCallback, StatusReporter

STEPS = 10_000


def noisy_loss(steps: int, seed: int = 0) -> np.ndarray:
    """A training loss of a long run: exponential decay, a bump at 60 % (a new data mix), and noise."""
    rng = np.random.default_rng(seed)
    x = np.arange(1, steps + 1)
    clean = 2.0 * np.exp(-x / 1500) + 0.3 + 0.4 * np.exp(-(((x - 0.6 * steps) / 200) ** 2))
    return clean + rng.normal(0, 0.15, steps)


def long_run(losses: np.ndarray, every: int = 1, max_points: int = 256) -> History:
    history = History(max_points=max_points)
    for step in range(every, len(losses) + 1, every):
        point = TrainPoint(step=step, first_step=step, loss=float(losses[step - 1]), learning_rate=1e-4 / step)
        history = add_train(history, point)
    return history


@pytest.fixture(scope="module")
def ten_thousand_steps() -> tuple[np.ndarray, list[TrainPoint]]:
    """The raw losses of a 10,000-step run logged every step, and its downsampled training series."""
    losses = noisy_loss(STEPS)
    return losses, long_run(losses).train


def test_a_long_run_keeps_the_budget_and_every_step(ten_thousand_steps: tuple[np.ndarray, list[TrainPoint]]) -> None:
    _, train = ten_thousand_steps
    assert len(train) == 256
    # Nothing dropped: the points tile steps 1..10,000 without gap or overlap, ascending.
    assert train[0].first_step == 1 and train[-1].step == STEPS
    assert all(b.first_step == a.step + 1 for a, b in itertools.pairwise(train))
    # An even resolution: every point covers about 10,000 / 256 steps.
    spans = [p.step - p.first_step + 1 for p in train]
    assert max(spans[:-1]) <= 2 * min(spans[:-1]) and sum(spans) == STEPS  # the newest point is still filling
    # The learning rate is the one at the point's last step.
    assert all(math.isclose(p.learning_rate or 0, 1e-4 / p.step) for p in train)


def test_each_merged_loss_is_the_mean_of_the_steps_it_covers(
    ten_thousand_steps: tuple[np.ndarray, list[TrainPoint]],
) -> None:
    losses, train = ten_thousand_steps
    for point in train:
        assert math.isclose(point.loss or 0, float(np.mean(losses[point.first_step - 1 : point.step])), rel_tol=1e-9)


def test_the_downsampled_curve_follows_the_smoothed_curve(
    ten_thousand_steps: tuple[np.ndarray, list[TrainPoint]],
) -> None:
    losses, train = ten_thousand_steps
    # An independent smoothing: a centred moving average of 41 steps, read at each point's middle step.
    window = 41
    smooth = np.convolve(losses, np.ones(window) / window, mode="same")
    mids = [(p.first_step + p.step) // 2 for p in train[1:-1]]
    errors = [abs((p.loss or 0) - smooth[m - 1]) for p, m in zip(train[1:-1], mids, strict=True)]
    assert max(errors) < 0.12 and float(np.mean(errors)) < 0.04
    # The bump at 60 % survives: the highest point after step 3,000 is within 300 steps of 6,000.
    late = [p for p in train if p.step > 3000]
    peak = max(late, key=lambda p: p.loss or 0)
    assert abs((peak.first_step + peak.step) / 2 - 6000) < 300


def test_points_logged_every_few_steps_weigh_by_the_steps_since_the_previous_one() -> None:
    losses = noisy_loss(2_000, seed=3)
    train = long_run(losses, every=5, max_points=32).train
    assert len(train) == 32 and train[-1].step == 2_000
    logged = {s: float(losses[s - 1]) for s in range(5, 2_001, 5)}
    for point in train[1:]:
        inside = [v for s, v in logged.items() if point.first_step <= s <= point.step]
        assert math.isclose(point.loss or 0, sum(inside) / len(inside), rel_tol=1e-9)
    assert covered_steps(train)[1:] == [p.step - q.step for q, p in itertools.pairwise(train)]


def test_evaluations_merge_their_loss_and_metrics_when_over_budget() -> None:
    history = History(max_points=4)
    for i in range(1, 9):  # every 100 steps
        history = add_eval(history, EvalPoint(step=100 * i, epoch=i / 2, loss=1 / i, metrics={"accuracy": i / 10}))
    assert [p.step for p in history.eval] == [200, 400, 600, 800]
    assert [p.metrics["accuracy"] for p in history.eval] == [0.15, 0.35, 0.55, 0.75]
    assert math.isclose(history.eval[0].loss or 0, (1 + 1 / 2) / 2)
    assert history.eval[-1].epoch == 4.0


def test_a_resumed_run_replaces_the_steps_it_redoes() -> None:
    history = History()
    for step in (1, 2, 3, 4, 5):
        history = add_train(history, TrainPoint(step=step, first_step=step, loss=1.0))
    history = add_train(history, TrainPoint(step=4, first_step=4, loss=0.5))  # resumed from checkpoint-3
    assert [(p.step, p.loss) for p in history.train] == [(1, 1.0), (2, 1.0), (3, 1.0), (4, 0.5)]


def test_the_trainer_log_history_becomes_train_and_eval_points() -> None:
    log_history = [
        {"loss": 0.9, "learning_rate": 2e-5, "epoch": 0.5, "grad_norm": 3.0, "step": 2},
        {"loss": 0.7, "learning_rate": 1e-5, "epoch": 1.0, "step": 4},
        {"eval_loss": 0.6, "eval_accuracy": 0.8, "eval_runtime": 0.1, "epoch": 1.0, "step": 4},
        {"train_runtime": 3.0, "train_loss": 0.8, "epoch": 1.0, "step": 4},
    ]
    history = from_log_history(log_history)
    assert [(p.step, p.loss, p.learning_rate, p.epoch) for p in history.train] == [
        (2, 0.9, 2e-5, 0.5),
        (4, 0.7, 1e-5, 1.0),
    ]
    assert history.eval == [EvalPoint(step=4, epoch=1.0, loss=0.6, metrics={"accuracy": 0.8})]
    lines = history_jsonl(log_history).decode().splitlines()
    assert [json.loads(line) for line in lines] == log_history


def test_the_status_holds_a_full_history_on_the_wire() -> None:
    history = long_run(noisy_loss(1_000), max_points=256)
    for i in range(300):
        history = add_eval(history, EvalPoint(step=i, loss=1.0, metrics={"accuracy": 0.5}))
    wire = FineTuneJobStatus(history=history).model_dump(by_alias=True, exclude_none=True)["history"]
    assert wire["maxPoints"] == 256 and len(wire["train"]) == 256 and len(wire["eval"]) == 256
    assert set(wire["train"][0]) == {"step", "firstStep", "loss", "learningRate"}
    assert len(json.dumps(wire)) < 64_000  # a small part of the 1.5 MB an object may have


def test_the_recorder_measures_throughput_between_logs() -> None:
    clock = iter([0.0, 2.0, 3.0, 5.0]).__next__
    recorder = HistoryRecorder(global_batch_size=8, uri="s3://b/ns/j/history.jsonl", clock=clock)
    recorder.begin([], step=0)  # t=0
    recorder.log({"loss": 1.0, "num_input_tokens_seen": 4000}, step=10)  # t=2: 10 steps x 8 samples in 2 s
    recorder.log({"eval_loss": 0.9}, step=10)  # t=3: the evaluation's second is not training time
    history = recorder.log({"loss": 0.8, "num_tokens": 8000.0}, step=20)  # t=5; TRL's name for the count
    first, second = history.train
    assert first.samples_per_second == 40.0 and first.tokens_per_second is None
    assert second.samples_per_second == 40.0 and second.tokens_per_second == 2000.0
    assert history.uri == "s3://b/ns/j/history.jsonl" and history.eval[0].loss == 0.9


def test_the_progress_callback_sends_the_history_and_rebuilds_it_on_resume() -> None:
    sent: list[dict] = []
    reporter = StatusReporter(sent.append, interval=0)
    callback = ProgressCallback(reporter, global_batch_size=4, history_uri="s3://b/ns/j/history.jsonl")
    args = TrainingArguments(output_dir="/tmp/unused", report_to="none")
    state = TrainerState()
    state.global_step, state.max_steps = 6, 12
    state.log_history = [{"loss": 1.2, "step": 3}, {"loss": 1.0, "step": 6}]  # restored from checkpoint-6
    callback.on_train_begin(args, state, TrainerControl())
    time.sleep(0.01)
    state.global_step = 9
    callback.on_log(args, state, TrainerControl(), logs={"loss": 0.8, "learning_rate": 1e-5, "epoch": 0.75})
    reporter.close()
    history = sent[-1]["history"]
    assert [(p["step"], p["loss"]) for p in history["train"]] == [(3, 1.2), (6, 1.0), (9, 0.8)]
    assert history["uri"] == "s3://b/ns/j/history.jsonl" and history["train"][-1]["samplesPerSecond"] > 0


def test_random_runs_never_exceed_the_budget_or_lose_a_step() -> None:
    rng = random.Random(7)
    for _ in range(20):
        budget, step = rng.randint(2, 12), 0
        history = History(max_points=budget)
        for _ in range(rng.randint(1, 200)):
            step += rng.randint(1, 9)
            history = add_train(history, TrainPoint(step=step, first_step=step, loss=rng.random()))
            assert len(history.train) <= budget and history.train[-1].step == step
        assert sum(covered_steps(history.train)) == step
