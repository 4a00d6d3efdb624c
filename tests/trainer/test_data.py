"""Loading and checking data: splits, sampling, and an error a person can act on for every bad input."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from finetune_api.validation import parse_spec
from finetune_trainer.data import load_datasets
from finetune_trainer.errors import ConfigError, DataError
from finetune_trainer.tasks import get_task
from tests.trainer import tiny

SENTIMENT = {"type": "sequence-classification", "labels": ["neg", "pos"]}


def make_spec(
    files: dict[str, Path | str] | None = None,
    task: dict[str, Any] | None = None,
    dataset: dict[str, Any] | None = None,
    **training: Any,
) -> Any:
    ds: dict[str, Any] = dict(dataset or {})
    if files is not None:
        ds["files"] = {k: str(v) for k, v in files.items()}
    return parse_spec(
        {
            "model": {"path": "/models/any"},
            "task": task or SENTIMENT,
            "dataset": ds,
            "training": {"evalStrategy": "no", "saveStrategy": "no", "loadBestModelAtEnd": False, **training},
        }
    )


def load_and_check(spec: Any) -> Any:
    datasets = load_datasets(spec)
    get_task(spec.task.type).check_dataset(spec, datasets)
    return datasets


# ---- splits and sampling ----


def test_files_give_train_and_validation_splits(tmp_path: Path) -> None:
    train = tiny.write_csv(tmp_path / "train.csv", tiny.sentiment_rows(20))
    val = tiny.write_jsonl(tmp_path / "val.jsonl", tiny.sentiment_rows(6, label_ids=True))
    datasets = load_and_check(make_spec({"train": train, "validation": val}))
    assert {name: len(split) for name, split in datasets.items()} == {"train": 20, "eval": 6}


def test_eval_fraction_holds_out_a_seeded_split(tmp_path: Path) -> None:
    train = tiny.write_jsonl(tmp_path / "train.jsonl", tiny.sentiment_rows(50))
    spec = make_spec({"train": train}, dataset={"evalFraction": 0.2})
    first, second = load_datasets(spec), load_datasets(spec)
    assert (len(first["train"]), len(first["eval"])) == (40, 10)
    assert first["eval"]["text"] == second["eval"]["text"]
    assert (
        load_datasets(make_spec({"train": train}, dataset={"evalFraction": 0.2}, seed=7))["eval"]["text"]
        != (first["eval"]["text"])
    )


def test_max_samples_cap_each_split(tmp_path: Path) -> None:
    train = tiny.write_parquet(tmp_path / "train.parquet", tiny.sentiment_rows(30))
    val = tiny.write_parquet(tmp_path / "val.parquet", tiny.sentiment_rows(30, seed=1))
    spec = make_spec({"train": train, "validation": val}, dataset={"maxTrainSamples": 12, "maxEvalSamples": 5})
    datasets = load_datasets(spec)
    assert (len(datasets["train"]), len(datasets["eval"])) == (12, 5)


def test_eval_split_can_name_the_test_file(tmp_path: Path) -> None:
    train = tiny.write_jsonl(tmp_path / "train.jsonl", tiny.sentiment_rows(8))
    test = tiny.write_jsonl(tmp_path / "test.jsonl", tiny.sentiment_rows(3))
    datasets = load_datasets(make_spec({"train": train, "test": test}, dataset={"evalSplit": "test"}))
    assert len(datasets["eval"]) == 3


def test_evaluation_without_eval_data_is_a_config_error(tmp_path: Path) -> None:
    train = tiny.write_jsonl(tmp_path / "train.jsonl", tiny.sentiment_rows(8))
    spec = make_spec({"train": train}, evalStrategy="epoch", saveStrategy="epoch", loadBestModelAtEnd=True)
    with pytest.raises(ConfigError, match=r"dataset\.evalFraction"):
        load_datasets(spec)


# ---- file errors ----


def test_missing_file_names_the_field_and_path(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"dataset\.files\.train: no such file .*nope\.jsonl"):
        load_datasets(make_spec({"train": tmp_path / "nope.jsonl"}))


@pytest.mark.parametrize("content", ["", "\n\n"])
def test_empty_jsonl_file_is_an_empty_split(tmp_path: Path, content: str) -> None:
    path = tmp_path / "train.jsonl"
    path.write_text(content)
    with pytest.raises(DataError, match=r"dataset\.files\.train: .* (is empty|has no rows)"):
        load_datasets(make_spec({"train": path}))


def test_csv_with_only_a_header_is_an_empty_split(tmp_path: Path) -> None:
    path = tmp_path / "train.csv"
    path.write_text("text,label\n")
    with pytest.raises(DataError, match="has no rows"):
        load_datasets(make_spec({"train": path}))


def test_empty_validation_file_names_its_field(tmp_path: Path) -> None:
    train = tiny.write_jsonl(tmp_path / "train.jsonl", tiny.sentiment_rows(8))
    val = tmp_path / "val.jsonl"
    val.write_text("")
    with pytest.raises(DataError, match=r"dataset\.files\.validation"):
        load_datasets(make_spec({"train": train, "validation": val}))


def test_malformed_jsonl_line_is_named(tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    path.write_text(
        '{"text": "good", "label": "pos"}\n{"text": "bad", "label": "neg"\n{"text": "ok", "label": "pos"}\n'
    )
    with pytest.raises(DataError, match=r"train\.jsonl: line 2: .*each line must be one JSON object"):
        load_datasets(make_spec({"train": path}))


def test_unknown_file_format_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "train.xlsx"
    path.write_text("x")
    with pytest.raises(ConfigError, match=r"dataset\.files\.train: .*unknown format '\.xlsx'; use one of"):
        load_datasets(make_spec({"train": path}))


# ---- column and label errors ----


def test_missing_column_lists_the_columns_present_and_the_field_to_set(tmp_path: Path) -> None:
    rows = [{"review": r["text"], "label": r["label"]} for r in tiny.sentiment_rows(6)]
    train = tiny.write_jsonl(tmp_path / "train.jsonl", rows)
    with pytest.raises(DataError) as err:
        load_and_check(make_spec({"train": train}))
    message = str(err.value)
    assert "no column 'text'" in message
    assert "Columns present: review, label" in message
    assert "spec.task.columns.text" in message


def test_column_mapping_reads_other_column_names(tmp_path: Path) -> None:
    rows = [{"review": r["text"], "sentiment": r["label"]} for r in tiny.sentiment_rows(6)]
    train = tiny.write_jsonl(tmp_path / "train.jsonl", rows)
    task = {**SENTIMENT, "columns": {"text": "review", "label": "sentiment"}}
    assert len(load_and_check(make_spec({"train": train}, task=task))["train"]) == 6


def test_label_outside_the_list_is_named_with_the_allowed_ones(tmp_path: Path) -> None:
    rows = [*tiny.sentiment_rows(4), {"text": "it was fine", "label": "neutral"}]
    train = tiny.write_jsonl(tmp_path / "train.jsonl", rows)
    with pytest.raises(DataError, match=r"row 4.*label 'neutral' is not in task\.labels; allowed: neg, pos"):
        load_and_check(make_spec({"train": train}))


def test_label_id_out_of_range_is_refused(tmp_path: Path) -> None:
    train = tiny.write_jsonl(tmp_path / "train.jsonl", [{"text": "x", "label": 0}, {"text": "y", "label": 2}])
    with pytest.raises(DataError, match=r"label 2 is not in task\.labels.*ids 0\.\.1"):
        load_and_check(make_spec({"train": train}))


def test_multi_hot_labels_need_one_entry_per_label(tmp_path: Path) -> None:
    rows = [{"text": "pizza and goal", "labels": [1, 0, 1]}, {"text": "guitar", "labels": [0, 1]}]
    train = tiny.write_jsonl(tmp_path / "train.jsonl", rows)
    task = {
        "type": "sequence-classification",
        "multiLabel": True,
        "labels": ["food", "music", "sports"],
        "columns": {"label": "labels"},
    }
    with pytest.raises(DataError, match=r"row 1.*multi-hot list of 3"):
        load_and_check(make_spec({"train": train}, task=task))


def test_token_tags_must_match_the_words(tmp_path: Path) -> None:
    rows = [{"tokens": ["alice", "went", "home"], "tags": ["B-PER", "O"]}]
    train = tiny.write_jsonl(tmp_path / "train.jsonl", rows)
    task = {"type": "token-classification", "labels": tiny.NER_LABELS}
    with pytest.raises(DataError, match="column 'tags': 2 tags for 3 words in 'tokens'"):
        load_and_check(make_spec({"train": train}, task=task))


def test_answer_must_be_found_at_its_answer_start(tmp_path: Path) -> None:
    row = {
        "question": "where?",
        "context": "the key is in paris .",
        "answers": {"text": ["paris"], "answer_start": [3]},
    }
    train = tiny.write_jsonl(tmp_path / "train.jsonl", [row])
    with pytest.raises(DataError, match="answer 'paris' is not at answer_start 3"):
        load_and_check(make_spec({"train": train}, task={"type": "question-answering"}))


def test_qa_max_seq_length_too_short_for_a_question_names_the_example_and_the_setting(
    tmp_path: Path, tiny_bert: Path
) -> None:
    from transformers import AutoTokenizer

    rows = tiny.question_rows(3)
    rows[1]["question"] = "where in the whole wide world , after all these years , is the " + rows[1]["question"]
    train = tiny.write_jsonl(tmp_path / "train.jsonl", rows)
    spec = make_spec({"train": train}, task={"type": "question-answering", "docStride": 8}, maxSeqLength=24)
    datasets = load_and_check(spec)
    with pytest.raises(DataError) as err:
        get_task("question-answering").check_with_tokenizer(
            spec, datasets, AutoTokenizer.from_pretrained(str(tiny_bert))
        )
    message = str(err.value)
    assert "row 1 (id 'q0-1')" in message
    assert "set training.maxSeqLength to at least" in message


def test_preference_refuses_a_test_split_before_loading_anything(tmp_path: Path) -> None:
    """The preference unit says why a test split cannot be scored; reward modeling takes one."""
    rows = tmp_path / "pairs.jsonl"
    rows.write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n')
    spec = {
        "model": {"path": str(tmp_path)},
        "task": {"type": "preference"},
        "dataset": {"files": {"train": str(rows), "validation": str(rows), "test": str(rows)}},
        "method": {"type": "lora"},
    }
    with pytest.raises(ConfigError, match=r"dataset\.files\.test: a test split is not evaluated for task preference"):
        load_datasets(parse_spec(spec))
    spec["task"] = {"type": "reward-modeling"}
    assert "test" in load_datasets(parse_spec(spec))
