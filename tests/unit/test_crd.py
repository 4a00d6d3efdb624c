"""The checked-in CRD is generated from the typed models and is a valid structural schema."""

from __future__ import annotations

from typing import Any

import yaml

from finetune_api.crd import CHART_CRD_PATH, CRD_PATH, crd, render
from finetune_api.rules import RULES


def _walk(node: Any, path: str = ""):
    if isinstance(node, dict):
        yield path, node
        for key, value in node.items():
            yield from _walk(value, f"{path}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _walk(value, f"{path}[{i}]")


def _schema() -> dict[str, Any]:
    return crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def test_checked_in_crd_is_fresh() -> None:
    for path in (CRD_PATH, CHART_CRD_PATH):
        assert path.read_text() == render(), f"{path} is stale: run `python -m finetune_api.crd --write` and commit it"


def test_schema_is_structural() -> None:
    for path, node in _walk(_schema()):
        for banned in ("$ref", "anyOf", "oneOf", "allOf", "$defs", "title", "const"):
            assert banned not in node or path.endswith("/properties"), f"{banned} at {path}"
        if "properties" in node and not path.endswith("/properties"):
            assert node.get("type") == "object", path


def test_every_spec_field_has_a_description() -> None:
    spec = _schema()["properties"]["spec"]
    for path, node in _walk(spec):
        if path.endswith("/properties"):
            for name, prop in node.items():
                assert prop.get("description"), f"{path}/{name} has no description"


def test_every_rule_is_in_the_crd() -> None:
    rules = [n["rule"] for _, n in _walk(_schema()) if "rule" in n and "message" in n]
    for rule in RULES:
        assert rule.cel in rules, rule.cel
    assert len(rules) == len(RULES) + 1  # and the finished-job rule on the whole object
    assert _schema()["x-kubernetes-validations"][0]["rule"].endswith("self.spec == oldSelf.spec")


def test_defaults_come_from_the_models() -> None:
    training = _schema()["properties"]["spec"]["properties"]["training"]
    assert training["default"]["epochs"] == 3.0 and training["default"]["evalStrategy"] == "epoch"
    assert training["properties"]["epochs"]["default"] == 3.0
    assert training["properties"]["precision"]["enum"] == ["auto", "bf16", "fp16", "fp32"]
    lora = _schema()["properties"]["spec"]["properties"]["method"]["properties"]["lora"]
    assert "default" not in lora  # optional objects stay absent unless set


def test_printer_columns_and_short_name() -> None:
    doc = yaml.safe_load(CRD_PATH.read_text())
    version = doc["spec"]["versions"][0]
    names = [c["name"] for c in version["additionalPrinterColumns"]]
    assert names == ["Phase", "Progress", "Task", "Method", "Nodes×GPUs", "Age"]
    assert doc["spec"]["names"]["shortNames"] == ["ftj"]
    assert version["subresources"] == {"status": {}}


def test_immutable_fields_have_transition_rules() -> None:
    spec = _schema()["properties"]["spec"]
    rules = {r["rule"]: r for r in spec["x-kubernetes-validations"]}
    for field in ("model", "task", "dataset", "method", "training", "distributed", "output"):
        rule = rules[f"self.{field} == oldSelf.{field}"]
        assert rule["fieldPath"] == f".{field}" and rule["reason"] == "FieldValueForbidden"
    suspended_only = [r for r in rules if r.startswith("oldSelf.runPolicy.suspend || ")]
    assert len(suspended_only) == 3  # resources, runPolicy.queueName and runPolicy.terminationGracePeriodSeconds


def test_readme_api_reference_is_fresh() -> None:
    from finetune_api.reference import README, updated_readme

    text = README.read_text()
    assert updated_readme(text) == text, (
        "the README's API reference is stale: run `python -m finetune_api.reference --write`"
    )
