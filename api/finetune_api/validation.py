"""Turn user input into a validated spec, or into errors a person can act on."""

from __future__ import annotations

import difflib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, get_args

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


def _field_names(model: type[BaseModel], loc: tuple[int | str, ...]) -> list[str]:
    """The camelCase field names of the model at loc (below model), for 'did you mean' hints."""
    for part in loc:
        if isinstance(part, int):
            continue
        info = model.model_fields.get(part) or next((f for f in model.model_fields.values() if f.alias == part), None)
        inner = _model_in(info.annotation) if info is not None else None
        if inner is None:
            return []
        model = inner
    return [info.alias or name for name, info in model.model_fields.items()]


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The BaseModel class inside an annotation (Optional[X], list[X]), if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _closest(name: str, known: list[str]) -> str | None:
    """The known field a misspelt name most likely means (max_steps and maxsteps mean maxSteps)."""
    squashed = {k.lower(): k for k in known}
    plain = name.replace("_", "").replace("-", "").lower()
    if plain in squashed:
        return squashed[plain]
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    return close[0] if close else None


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _pydantic_problems(err: ValidationError, root: str) -> list[str]:
    """One 'path: what is wrong (got value)' line per pydantic error, with our wording."""
    problems = []
    for e in err.errors():
        loc = tuple(e["loc"])
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            known = _field_names(FineTuneJobSpec, loc[:-1])
            close = _closest(str(loc[-1]), known)
            hint = f"did you mean {close}? " if close else ""
            msg = f"unknown field; {hint}remove it or use one of {', '.join(known)} (camelCase, see the API reference)"
        elif e["type"] == "missing":
            msg = "required field is missing; add it (see the API reference)"
        elif e["type"] in ("model_type", "model_attributes_type", "dict_type"):
            msg = f"expected a mapping of fields, got {_shown(e.get('input'))}"
        else:
            msg = f"{msg.replace('Input should', 'should')} (got {_shown(e.get('input'))})"
        problems.append(f"{_path(root, loc)}: {msg}")
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
        # Only the camelCase names of the wire format: the API server knows no others.
        spec = FineTuneJobSpec.model_validate(data, by_alias=True, by_name=False)
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
