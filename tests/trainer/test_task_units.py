"""The pure parts of the task units: label ids, sub-word alignment, answer spans, SQuAD scoring, checkpoints."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from finetune_trainer.engine import latest_checkpoint
from finetune_trainer.tasks.base import LabelIndex
from finetune_trainer.tasks.question_answering import answer_token_span, best_spans, normalize_answer, squad_scores
from finetune_trainer.tasks.sequence_classification import LabelEncoder
from finetune_trainer.tasks.token_classification import IGNORE_INDEX, align_tags


@pytest.mark.parametrize(("value", "expected"), [("neg", 0), ("pos", 1), (0, 0), (1, 1), (True, 1), (1.0, 1)])
def test_labels_are_names_or_ids(value: object, expected: int) -> None:
    assert LabelIndex(["neg", "pos"]).id_of(value) == expected


def test_numeric_label_names_match_integers_by_name() -> None:
    stars = LabelIndex(["1", "2", "3", "4", "5"])
    assert [stars.id_of(v) for v in (1, 5, "3")] == [0, 4, 2]
    with pytest.raises(ValueError, match=r"label 0 is not in task\.labels; allowed: 1, 2, 3, 4, 5"):
        stars.id_of(0)


def test_multi_label_values_become_multi_hot_vectors() -> None:
    encoder = LabelEncoder(["food", "music", "sports"], multi_label=True)
    assert encoder.encode(["sports", "food"]) == [1.0, 0.0, 1.0]
    assert encoder.encode([0, 1, 0]) == [0.0, 1.0, 0.0]
    assert encoder.encode([]) == [0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match=r"'cars' is not in task\.labels"):
        encoder.encode(["cars"])


def test_single_label_refuses_a_list() -> None:
    with pytest.raises(ValueError, match=r"set task\.multiLabel: true"):
        LabelEncoder(["a", "b"], multi_label=False).encode(["a"])


def test_word_tags_go_to_the_first_sub_token_only() -> None:
    # [CLS] barack ##ob ##ama was born [SEP]
    word_ids = [None, 0, 0, 0, 1, 2, None]
    assert align_tags(word_ids, [1, 0, 0]) == [IGNORE_INDEX, 1, IGNORE_INDEX, IGNORE_INDEX, 0, 0, IGNORE_INDEX]


def test_answer_span_maps_characters_to_context_tokens(tiny_bert: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_bert))
    context = "the lamp is in buenos aires today ."
    encoded = tokenizer("where is the lamp ?", context, return_offsets_mapping=True)
    start = context.index("buenos aires")
    span = answer_token_span(encoded["offset_mapping"], encoded.sequence_ids(), start, start + len("buenos aires"))
    assert span is not None
    tokens = encoded["input_ids"][span[0] : span[1] + 1]
    assert tokenizer.decode(tokens) == "buenos aires"


def test_answer_outside_the_window_has_no_span() -> None:
    offsets = [(0, 0), (0, 5), (0, 0), (0, 3), (4, 7), (0, 0)]
    sequence_ids = [None, 0, None, 1, 1, None]
    assert answer_token_span(offsets, sequence_ids, 10, 14) is None
    assert answer_token_span(offsets, sequence_ids, 4, 7) == (4, 4)


def test_squad_normalisation_and_scores() -> None:
    assert normalize_answer("The  Eiffel-Tower!") == "eiffeltower"
    scores = squad_scores(["in paris", "rome", ""], [["Paris"], ["the city of rome"], []])
    assert scores["exact_match"] == pytest.approx(1 / 3)
    # in paris vs paris: 2*(1/2*1)/(1/2+1) = 2/3; rome vs city of rome: 2*(1*1/3)/(1+1/3) = 1/2; empty vs empty: 1
    assert scores["f1"] == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)


def test_best_span_is_searched_across_the_windows_of_an_example() -> None:
    context = "aa bb cc dd"
    # Two windows of one example; window 1 holds 'cc dd' with the strongest logits.
    offsets = [[None, (0, 2), (3, 5), None], [None, (6, 8), (9, 11), None]]
    start = np.array([[0.0, 1.0, 0.0, 0.0], [0.0, 5.0, 0.0, 0.0]])
    end = np.array([[0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 5.0, 0.0]])
    assert best_spans(start, end, [context], [0, 0], offsets, allow_empty=False) == ["cc dd"]


def test_only_complete_checkpoints_are_resumed(tmp_path: Path) -> None:
    assert latest_checkpoint(tmp_path / "absent") is None
    for step, complete in ((10, True), (20, True), (30, False)):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        if complete:
            (folder / "trainer_state.json").write_text("{}")
    assert latest_checkpoint(tmp_path) == str(tmp_path / "checkpoint-20")


@pytest.mark.parametrize("value", ["3.5", True, float("nan"), None])
def test_regression_targets_must_be_finite_numbers(value: object) -> None:
    from finetune_trainer.tasks.regression import score_of

    with pytest.raises(ValueError, match="number"):
        score_of(value)


def test_regression_metrics_match_hand_computed_values() -> None:
    import numpy as np
    from transformers import EvalPrediction

    from finetune_trainer.tasks.regression import regression_metrics

    truth = np.array([0.0, 1.0, 2.0, 3.0])
    predicted = np.array([[0.5], [1.0], [2.5], [2.0]])  # errors 0.5, 0, 0.5, -1
    metrics = regression_metrics(EvalPrediction(predictions=predicted, label_ids=truth))
    assert metrics["mse"] == pytest.approx((0.25 + 0 + 0.25 + 1) / 4)
    assert metrics["mae"] == pytest.approx(2 / 4)
    # Pearson from its definition; Spearman: ranks (1, 2, 4, 3) against (1, 2, 3, 4) -> 1 - 6 * 2 / (4 * 15).
    p, t = predicted.ravel() - predicted.mean(), truth - truth.mean()
    assert metrics["pearson"] == pytest.approx(float((p @ t) / np.sqrt((p @ p) * (t @ t))))
    assert metrics["spearman"] == pytest.approx(0.8)
