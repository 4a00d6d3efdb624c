"""Turn user input into a validated spec, or into errors a person can act on."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from finetune_api.contract import API_GROUP_VERSION, KIND
from finetune_api.rules import rules_for
from finetune_api.spec import FineTuneJobSpec


class InvalidSpec(ValueError):
    """A spec that cannot run; ``problems`` holds one 'path: what and how to fix' line each."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("invalid FineTuneJob spec:\n" + "\n".join(f"  - {p}" for p in problems))


def _path(root: str, loc: tuple[int | str, ...]) -> str:
    out = root
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def _pydantic_problems(err: ValidationError, root: str) -> list[str]:
    problems = []
    for e in err.errors():
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown field; check its spelling against the API reference (fields are camelCase)"
        elif e["type"] == "missing":
            msg = "required field is missing"
        elif e["type"] == "literal_error":
            msg = f"{msg} (got {e.get('input')!r})"
        problems.append(f"{_path(root, tuple(e['loc']))}: {msg}")
    return problems


def _walk(model: BaseModel, path: str) -> Iterator[tuple[BaseModel, str]]:
    yield model, path
    for name, info in type(model).model_fields.items():
        value = getattr(model, name)
        alias = info.alias or name
        if isinstance(value, BaseModel):
            yield from _walk(value, f"{path}.{alias}")
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if isinstance(item, BaseModel):
                    yield from _walk(item, f"{path}.{alias}[{i}]")


def rule_problems(spec: FineTuneJobSpec, root: str = "spec") -> list[str]:
    """Every cross-field rule the spec breaks, as 'path: message' lines."""
    problems = []
    for model, path in _walk(spec, root):
        for rule in rules_for(type(model)):
            if rule.check is not None and not rule.check(model):
                where = f"{path}.{rule.field}" if rule.field else path
                problems.append(f"{where}: {rule.message}")
    return problems


def parse_spec(data: Any, root: str = "spec") -> FineTuneJobSpec:
    """Validate a spec mapping (camelCase, as in YAML); raise InvalidSpec listing every problem."""
    if not isinstance(data, dict):
        raise InvalidSpec([f"{root}: expected a mapping of fields, got {type(data).__name__}"])
    try:
        spec = FineTuneJobSpec.model_validate(data)
    except ValidationError as err:
        raise InvalidSpec(_pydantic_problems(err, root)) from None
    problems = rule_problems(spec, root)
    if problems:
        raise InvalidSpec(problems)
    return spec


def spec_from_document(doc: Any) -> FineTuneJobSpec:
    """Accept a whole FineTuneJob manifest or a bare spec mapping."""
    if isinstance(doc, dict) and "kind" in doc:
        if doc.get("kind") != KIND:
            raise InvalidSpec([f"kind: expected {KIND}, got {doc.get('kind')!r}"])
        api_version = doc.get("apiVersion")
        if api_version != API_GROUP_VERSION:
            raise InvalidSpec([f"apiVersion: expected {API_GROUP_VERSION}, got {api_version!r}"])
        return parse_spec(doc.get("spec"))
    return parse_spec(doc)


def load_spec_file(path: str | Path) -> FineTuneJobSpec:
    """Read a FineTuneJob YAML (or JSON) file and validate it."""
    p = Path(path)
    if not p.is_file():
        raise InvalidSpec([f"{p}: no such file; give the path of a FineTuneJob YAML"])
    try:
        doc = yaml.safe_load(p.read_text())
    except yaml.YAMLError as err:
        raise InvalidSpec([f"{p}: not valid YAML: {err}"]) from None
    return spec_from_document(doc)
