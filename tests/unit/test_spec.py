"""Defaults, round trips and the shipped examples."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from finetune_api.matrix import METHODS, TASKS, supported_pairs, unsupported_reason
from finetune_api.spec import wire
from finetune_api.validation import InvalidSpec, load_spec_file, parse_spec, spec_from_document
from tests.invalid_specs import BASE

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").rglob("*.yaml"))


def test_defaults_are_filled_once_by_the_models() -> None:
    spec = parse_spec(BASE)
    assert spec.training.epochs == 3.0
    assert spec.training.precision == "auto"
    assert spec.resources.nodes == 1 and spec.resources.gpus_per_node == 1
    assert spec.run_policy.backoff_limit == 3
    assert spec.method.lora is None  # lora uses the method's defaults when the block is absent


def test_wire_round_trip_is_stable() -> None:
    spec = parse_spec(BASE)
    again = parse_spec(wire(spec))
    assert wire(again) == wire(spec)
    assert "batchSizePerDevice" in wire(spec)["training"]


def test_all_problems_are_reported_at_once() -> None:
    bad = {**BASE, "training": {"epochs": 0, "learningRate": -1}}
    with pytest.raises(InvalidSpec) as err:
        parse_spec(bad)
    assert len(err.value.problems) == 2


def test_manifest_kind_and_version_are_checked() -> None:
    with pytest.raises(InvalidSpec, match="apiVersion"):
        spec_from_document({"apiVersion": "finetune.dev/v1", "kind": "FineTuneJob", "spec": BASE})
    with pytest.raises(InvalidSpec, match="kind"):
        spec_from_document({"apiVersion": "finetune.dev/v1alpha1", "kind": "Job", "spec": BASE})


def test_missing_file_and_bad_yaml_are_clear(tmp_path: Path) -> None:
    with pytest.raises(InvalidSpec, match="no such file"):
        load_spec_file(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("spec: [unclosed")
    with pytest.raises(InvalidSpec, match="not valid YAML"):
        load_spec_file(bad)


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_every_example_is_valid(path: Path) -> None:
    doc = yaml.safe_load(path.read_text())
    assert doc["metadata"]["name"]
    load_spec_file(path)


def test_examples_cover_every_task_and_method() -> None:
    specs = [load_spec_file(p) for p in EXAMPLES]
    assert {s.task.type for s in specs} == set(TASKS)
    assert {s.method.type for s in specs} == set(METHODS)


def test_matrix_refuses_with_a_reason_and_supports_the_rest() -> None:
    pairs = supported_pairs()
    assert ("sequence-classification", "lora") in pairs
    assert ("causal-lm", "qlora") in pairs
    reason = unsupported_reason("causal-lm", "feature-extraction")
    assert reason is not None and "use lora" in reason
    assert len(pairs) + sum(1 for t in TASKS for m in METHODS if unsupported_reason(t, m)) == len(TASKS) * len(METHODS)
