"""One plain example per defect the fuzz suite found, so each stays fixed whatever the generators draw."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from finetune_api.validation import InvalidSpec, parse_spec
from tests.fuzz import harness
from tests.fuzz.oracle import REFUSED_CONFIG, REFUSED_DATA, classify, error_message
from tests.invalid_specs import BASE, with_changes
from tests.trainer import tiny

SENTIMENT = {"type": "sequence-classification", "labels": ["neg", "pos"]}


def problems_of(spec: dict[str, Any]) -> list[str]:
    with pytest.raises(InvalidSpec) as err:
        parse_spec(spec)
    return err.value.problems


def one_step(model: Path, train: Path, task: dict[str, Any] = SENTIMENT, **extra: Any) -> dict[str, Any]:
    training = {"maxSteps": 1, "batchSizePerDevice": 4, "evalStrategy": "no", "saveStrategy": "no"}
    return tiny.spec_dict(model, task, {"train": str(train)}, loadBestModelAtEnd=False, **{**training, **extra})


def refusal(tmp_path: Path, spec: dict[str, Any], *, command: str = "validate", expected: str = REFUSED_DATA) -> str:
    """Run the command on the spec; assert the refusal's class; return its message."""
    config = harness.write_config(tmp_path / "job.yaml", spec)
    out = tmp_path / "out"
    outcome = harness.validate(config) if command == "validate" else harness.run(config, out)
    assert classify(outcome) == expected, outcome.stderr[-2000:]
    assert not harness.listing(out), "a refused run left files behind"
    return error_message(outcome.stderr)


# ---- spec validation ----


def test_an_out_of_range_number_is_echoed_with_its_bound() -> None:
    assert problems_of(with_changes(training={"epochs": -1})) == [
        "spec.training.epochs: should be greater than 0 (got -1)"
    ]


def test_a_snake_case_field_is_refused_and_its_camel_case_name_suggested() -> None:
    [problem] = problems_of(with_changes(training={"max_steps": 3}))
    assert problem.startswith("spec.training.max_steps: unknown field; did you mean maxSteps?")


def test_a_section_of_the_wrong_type_asks_for_a_mapping() -> None:
    assert problems_of(with_changes(model="bert")) == ["spec.model: expected a mapping of fields, got 'bert'"]


def test_every_type_error_is_reported_in_one_pass() -> None:
    spec = with_changes(training={"epochs": "ten", "seed": -1, "optimizer": "adam"})
    paths = sorted(p.split(":")[0] for p in problems_of(spec))
    assert paths == ["spec.training.epochs", "spec.training.optimizer", "spec.training.seed"]


def test_the_base_spec_still_parses() -> None:
    parse_spec(BASE)


# ---- dataset files ----


def test_a_json_lines_file_with_a_null_line_is_refused_not_a_crash(tmp_path: Path, tiny_bert: Path) -> None:
    """pyarrow's JSON reader dies with SIGSEGV on this file; run in a process so a crash fails only this test."""
    train = tmp_path / "train.jsonl"
    train.write_text('null\n{"text": {"body": "x"}, "label": "pos"}\n')
    config = harness.write_config(tmp_path / "job.yaml", one_step(tiny_bert, train))
    outcome = harness.cli_subprocess(["validate", "--config", str(config)])
    assert outcome.exit_code == 4, outcome.stderr[-2000:]
    assert "line 1: expected a JSON object, got 'null'" in outcome.stderr


def test_every_unknown_label_is_named_in_one_message(tmp_path: Path, tiny_bert: Path) -> None:
    rows = tiny.sentiment_rows(6)
    rows[1]["label"], rows[3]["label"], rows[4]["label"] = "neutral", "mixed", "neutral"
    message = refusal(tmp_path, one_step(tiny_bert, tiny.write_jsonl(tmp_path / "t.jsonl", rows)))
    assert "rows 1, 4, column 'label': label 'neutral' is not in task.labels" in message
    assert "row 3, column 'label': label 'mixed' is not in task.labels" in message


def test_every_missing_column_is_named_in_one_message(tmp_path: Path, tiny_bert: Path) -> None:
    rows = [{"id": r["id"]} | {"extra": 1} for r in tiny.question_rows(4)]
    task = {"type": "question-answering", "docStride": 16}
    spec = one_step(tiny_bert, tiny.write_jsonl(tmp_path / "t.jsonl", rows), task)
    message = refusal(tmp_path, spec)
    assert "no column 'question' for the question role, 'context' for the context role, 'answers'" in message
    assert "Set spec.task.columns.question, spec.task.columns.context, spec.task.columns.answers" in message


def test_bytes_that_are_not_utf8_in_a_csv_are_located(tmp_path: Path, tiny_bert: Path) -> None:
    train = tmp_path / "train.csv"
    train.write_bytes(b"text,label\nthe film was good,pos\nthe film was \xff bad,neg\n")
    assert "line 3 is not UTF-8 text" in refusal(tmp_path, one_step(tiny_bert, train))


def test_rows_without_columns_are_refused_as_such(tmp_path: Path, tiny_bert: Path) -> None:
    train = tmp_path / "train.jsonl"
    train.write_text("{}\n{}\n")
    assert "has rows but no columns" in refusal(tmp_path, one_step(tiny_bert, train))


def test_a_question_that_is_not_text_names_its_column(tmp_path: Path, tiny_bert: Path) -> None:
    rows = tiny.question_rows(3)
    rows[2]["question"] = {"body": "where?"}
    train = tiny.write_jsonl(tmp_path / "t.jsonl", rows)
    message = refusal(tmp_path, one_step(tiny_bert, train, {"type": "question-answering", "docStride": 16}))
    assert "row 2, column 'question': expected text, got {'body': 'where?'}" in message


def test_a_hub_dataset_missing_offline_says_downloads_are_off(
    tmp_path: Path, tiny_bert: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import datasets
    import huggingface_hub.constants

    # The libraries read the variables once, at import: set offline mode where they keep it.
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    spec = one_step(tiny_bert, tmp_path / "unused.jsonl")
    spec["dataset"] = {"name": "no-such-dataset-in-the-cache"}
    message = refusal(tmp_path, spec)
    assert "is not in the local cache and downloads are off" in message
    assert "not cached in None" not in message


# ---- models, adapters, output directories ----


def test_a_directory_without_model_files_says_there_is_no_model(tmp_path: Path, tiny_bert: Path) -> None:
    empty = tmp_path / "model"
    empty.mkdir()
    train = tiny.write_jsonl(tmp_path / "t.jsonl", tiny.sentiment_rows(4))
    message = refusal(tmp_path, one_step(empty, train), command="run", expected=REFUSED_CONFIG)
    assert f"model.path: there is no model in {empty} (no config.json" in message
    assert "sentencepiece" not in message


def test_a_model_without_tokenizer_files_is_refused_not_trained_with_an_empty_vocabulary(
    tmp_path: Path, tiny_bert: Path
) -> None:
    model = tmp_path / "model"
    shutil.copytree(tiny_bert, model)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (model / name).unlink(missing_ok=True)
    train = tiny.write_jsonl(tmp_path / "t.jsonl", tiny.sentiment_rows(4))
    message = refusal(tmp_path, one_step(model, train), command="run", expected=REFUSED_CONFIG)
    assert f"model.path: {model} holds no tokenizer" in message


def test_truncated_weights_are_a_config_error_not_a_traceback(tmp_path: Path, tiny_bert: Path) -> None:
    model = tmp_path / "model"
    shutil.copytree(tiny_bert, model)
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    train = tiny.write_jsonl(tmp_path / "t.jsonl", tiny.sentiment_rows(4))
    message = refusal(tmp_path, one_step(model, train), command="run", expected=REFUSED_CONFIG)
    assert f"model.path: cannot load a model from {model}" in message


@pytest.mark.parametrize(
    ("targets", "named"),
    [(["q_proj"], "'q_proj' matches no module"), (["query", "foo"], "'foo' matches no module")],
    ids=["none-match", "one-of-two-matches"],
)
def test_lora_target_modules_that_match_nothing_are_refused_with_the_names_that_exist(
    tmp_path: Path, tiny_bert: Path, targets: list[str], named: str
) -> None:
    train = tiny.write_jsonl(tmp_path / "t.jsonl", tiny.sentiment_rows(4))
    spec = one_step(tiny_bert, train)
    spec["method"] = {"type": "lora", "lora": {"targetModules": targets}}
    message = refusal(tmp_path, spec, command="run", expected=REFUSED_CONFIG)
    assert f"method.lora.targetModules: {named}" in message
    assert "query, key, value, dense" in message


@pytest.mark.slow
def test_a_local_checkpoint_of_another_method_is_refused_not_resumed(tmp_path: Path, tiny_bert: Path) -> None:
    train = tiny.write_jsonl(tmp_path / "t.jsonl", tiny.sentiment_rows(4))
    out = tmp_path / "out"
    full = one_step(tiny_bert, train, saveStrategy="steps", saveSteps=1)
    assert harness.run(harness.write_config(tmp_path / "full.yaml", full), out).exit_code == 0
    lora = {**full, "method": {"type": "lora"}, "training": {**full["training"], "maxSteps": 2}}
    before = harness.listing(out)
    outcome = harness.run(harness.write_config(tmp_path / "lora.yaml", lora), out)
    assert classify(outcome) == REFUSED_CONFIG, outcome.stderr[-2000:]
    assert "spec.method.type: the checkpoint was trained with 'full', the spec now says 'lora'" in outcome.stderr
    assert "train into another output directory" in outcome.stderr
    assert harness.listing(out) == before
    assert json.loads((out / "resume-fingerprint.json").read_text())["spec"]["method.type"] == "full"
