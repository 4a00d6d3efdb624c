"""status.history: the training and evaluation curves within a fixed budget of points per series.

A new point is appended; when a series holds more than ``maxPoints``, the two adjacent points
that together cover the fewest steps are merged into one (``firstStep`` of the first, ``step``
of the last, means weighted by the steps each covers). Old points are merged, never dropped, so
the whole run stays on the curve at a nearly even resolution: after N steps every point covers
about N / maxPoints steps, and each merged loss is the mean of the losses it replaces.

A point covers the steps since the point before it (the first one: since step 0), as the
Trainer's logged loss is the mean since its previous log; so merging two points gives the same
value as averaging the logged values they stand for.

The module is pure (no I/O): the trainer feeds it log entries, the tests feed it long runs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from finetune_api.status import EvalPoint, History, TrainPoint

P = TypeVar("P", TrainPoint, EvalPoint)
EVAL_PREFIX = "eval_"
# Keys of an evaluation log entry that are not metrics.
EVAL_NOT_METRICS = frozenset({"eval_loss", "eval_runtime", "eval_samples_per_second", "eval_steps_per_second"})


def covered_steps(points: Sequence[TrainPoint | EvalPoint]) -> list[int]:
    """Steps each point covers: since the point before it (the first one: since the start of training)."""
    return [point.step - (points[i - 1].step if i else 0) for i, point in enumerate(points)]


def weighted_mean(values: Sequence[tuple[float | None, float]]) -> float | None:
    """Mean of the present values weighted by their weights (a plain mean when every weight is 0)."""
    present = [(v, w) for v, w in values if v is not None and math.isfinite(v)]
    if not present:
        return None
    total = sum(w for _, w in present)
    if total <= 0:
        return sum(v for v, _ in present) / len(present)
    return sum(v * w for v, w in present) / total


def merge_train(a: TrainPoint, b: TrainPoint, wa: float, wb: float) -> TrainPoint:
    """One point for two adjacent ones: means weighted by the steps covered, the rates at the later step."""
    return TrainPoint(
        step=b.step,
        first_step=a.first_step,
        loss=weighted_mean([(a.loss, wa), (b.loss, wb)]),
        learning_rate=b.learning_rate if b.learning_rate is not None else a.learning_rate,
        tokens_per_second=weighted_mean([(a.tokens_per_second, wa), (b.tokens_per_second, wb)]),
        samples_per_second=weighted_mean([(a.samples_per_second, wa), (b.samples_per_second, wb)]),
        epoch=b.epoch if b.epoch is not None else a.epoch,
    )


def merge_eval(a: EvalPoint, b: EvalPoint, wa: float, wb: float) -> EvalPoint:
    """One point for two adjacent evaluations: loss and each metric weighted by the steps covered."""
    names = list(dict.fromkeys([*a.metrics, *b.metrics]))
    metrics = {n: weighted_mean([(a.metrics.get(n), wa), (b.metrics.get(n), wb)]) for n in names}
    return EvalPoint(
        step=b.step,
        epoch=b.epoch if b.epoch is not None else a.epoch,
        loss=weighted_mean([(a.loss, wa), (b.loss, wb)]),
        metrics={n: v for n, v in metrics.items() if v is not None},
    )


def append_point(points: Sequence[P], point: P, max_points: int, merge: Callable[[P, P, float, float], P]) -> list[P]:
    """``points`` with ``point`` appended, merged down to ``max_points``.

    Points past the new one's step (a run resumed from an earlier checkpoint redoes them) are
    replaced. When over budget, the adjacent pair covering the fewest steps merges (the oldest
    such pair on a tie), which keeps the resolution even along the run.
    """
    out: list[P] = list(points)
    if out and out[-1].step >= point.step:
        # A training step is logged once; an evaluation may repeat at a step (the best model at the end).
        last = point.step - 1 if isinstance(point, TrainPoint) else point.step
        out = [p for p in out if p.step <= last]
    out.append(point)
    while len(out) > max_points:
        weights = covered_steps(out)
        pair = min(range(len(out) - 1), key=lambda i: weights[i] + weights[i + 1])
        out[pair : pair + 2] = [merge(out[pair], out[pair + 1], weights[pair], weights[pair + 1])]
    return out


def add_train(history: History, point: TrainPoint) -> History:
    """The history with a training point added (within the budget)."""
    train = append_point(history.train, point, history.max_points, merge_train)
    return history.model_copy(update={"train": train})


def add_eval(history: History, point: EvalPoint) -> History:
    """The history with an evaluation added (within the budget)."""
    evals = append_point(history.eval, point, history.max_points, merge_eval)
    return history.model_copy(update={"eval": evals})


def _finite(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def train_point(
    entry: Mapping[str, Any],
    step: int,
    *,
    samples_per_second: float | None = None,
    tokens_per_second: float | None = None,
) -> TrainPoint | None:
    """The training point of one Trainer log entry at ``step``; None for an entry without a training loss."""
    loss = _finite(entry.get("loss"))
    if loss is None:
        return None
    epoch = _finite(entry.get("epoch"))
    return TrainPoint(
        step=step,
        first_step=step,
        loss=loss,
        learning_rate=_finite(entry.get("learning_rate")),
        samples_per_second=samples_per_second,
        tokens_per_second=tokens_per_second,
        epoch=round(epoch, 4) if epoch is not None and epoch >= 0 else None,
    )


def eval_point(entry: Mapping[str, Any], step: int) -> EvalPoint | None:
    """The evaluation point of one Trainer log entry (``eval_*`` keys); None for other entries."""
    if not any(k.startswith(EVAL_PREFIX) for k in entry):
        return None
    metrics = {
        k.removeprefix(EVAL_PREFIX): f
        for k, v in entry.items()
        if k.startswith(EVAL_PREFIX) and k not in EVAL_NOT_METRICS and (f := _finite(v)) is not None
    }
    epoch = _finite(entry.get("epoch"))
    return EvalPoint(
        step=step,
        epoch=round(epoch, 4) if epoch is not None and epoch >= 0 else None,
        loss=_finite(entry.get("eval_loss")),
        metrics=dict(sorted(metrics.items())[:64]),
    )


def add_log_entry(history: History, entry: Mapping[str, Any], step: int, **rates: float | None) -> History:
    """The history with one Trainer log entry added: a training point, an evaluation, or nothing."""
    point = train_point(entry, step, **rates)
    if point is not None:
        history = add_train(history, point)
    evaluation = eval_point(entry, step)
    if evaluation is not None:
        history = add_eval(history, evaluation)
    return history


def from_log_history(log_history: Sequence[Mapping[str, Any]], history: History | None = None) -> History:
    """A history rebuilt from the Trainer's log history (entries carry their ``step``), e.g. after a resume."""
    out = history or History()
    for entry in log_history:
        step = entry.get("step")
        if isinstance(step, int):
            out = add_log_entry(out, entry, step)
    return out
