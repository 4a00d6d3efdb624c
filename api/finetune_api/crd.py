"""Generate the FineTuneJob CustomResourceDefinition from the typed models.

``python -m finetune_api.crd`` prints it; ``python -m finetune_api.crd --write`` updates
``crds/finetunejob.yaml``. The schema is structural OpenAPI v3 (no refs, no anyOf), with
the models' descriptions, defaults, enums and bounds, and the CEL rules of
:mod:`finetune_api.rules` as ``x-kubernetes-validations`` on the objects they constrain.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from finetune_api.changes import FINISHED_RULE
from finetune_api.contract import (
    API_GROUP,
    API_VERSION,
    COMPONENT_LABEL,
    KIND,
    NAME_LABEL,
    OPERATOR_APP,
    PLURAL,
    SHORT_NAME,
    SINGULAR,
)
from finetune_api.rules import RULES, Rule
from finetune_api.spec import FineTuneJobSpec, TaskSpec
from finetune_api.status import FineTuneJobStatus

ROOT = Path(__file__).resolve().parents[2]
CRD_PATH = ROOT / "crds" / "finetunejob.yaml"
# The Helm chart ships the same file (Helm installs crds/ before the templates).
CHART_CRD_PATH = ROOT / "charts" / "finetune-operator" / "crds" / "finetunejob.yaml"

# Extra schema keys per (model class, wire field name).
_EXTRA: dict[tuple[type, str], dict[str, Any]] = {
    (TaskSpec, "labels"): {"x-kubernetes-list-type": "set"},
}


def _all_models(root: type[BaseModel]) -> dict[str, type[BaseModel]]:
    """Model classes reachable from root, keyed by the name pydantic uses in $defs."""
    found: dict[str, type[BaseModel]] = {}

    def visit(cls: type[BaseModel]) -> None:
        if cls.__name__ in found:
            return
        found[cls.__name__] = cls
        for info in cls.model_fields.values():
            for arg in _type_args(info.annotation):
                if isinstance(arg, type) and issubclass(arg, BaseModel):
                    visit(arg)

    visit(root)
    return found


def _type_args(tp: Any) -> list[Any]:
    out = [tp]
    for arg in getattr(tp, "__args__", ()) or ():
        out.extend(_type_args(arg))
    return out


def _rule_entry(rule: Rule) -> dict[str, Any]:
    entry: dict[str, Any] = {"rule": rule.cel, "message": rule.message}
    if rule.field:
        entry["fieldPath"] = "." + rule.field
    entry["reason"] = "FieldValueForbidden" if rule.transition else "FieldValueInvalid"
    return entry


class _Converter:
    """Turns pydantic's JSON Schema into a Kubernetes structural schema."""

    def __init__(self, root: type[BaseModel]):
        self.defs: dict[str, Any] = root.model_json_schema(by_alias=True).get("$defs", {})
        self.models = _all_models(root)
        self.root = root

    def model(self, cls: type[BaseModel], schema: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "object"}
        if cls.__doc__:
            out["description"] = " ".join(cls.__doc__.split())
        props: dict[str, Any] = {}
        infos = {(info.alias or field): info for field, info in cls.model_fields.items()}
        for name, prop in schema.get("properties", {}).items():
            converted = self.node(prop)
            converted.update(_EXTRA.get((cls, name), {}))
            info = infos[name]
            if info.default_factory is not None:
                value = info.default_factory()  # type: ignore[call-arg]
                if isinstance(value, BaseModel):
                    # The whole default object, not {}: the API server checks defaults against
                    # the CEL rules, and nested defaults are not applied to a default's value.
                    converted["default"] = value.model_dump(by_alias=True, exclude_none=True, mode="json")
                else:  # empty lists and maps are stored too, so CEL rules can read them
                    converted["default"] = value
            props[name] = converted
        out["properties"] = props
        if schema.get("required"):
            out["required"] = list(schema["required"])
        rules = [_rule_entry(r) for r in RULES if r.scope is cls]
        if rules:
            out["x-kubernetes-validations"] = rules
        return out

    def node(self, schema: dict[str, Any]) -> dict[str, Any]:
        schema = dict(schema)
        description = schema.pop("description", None)
        default = schema.pop("default", None)
        schema.pop("title", None)
        if "anyOf" in schema:  # Optional[X]: absent means unset, so drop the null branch
            branches = [b for b in schema.pop("anyOf") if b.get("type") != "null"]
            if len(branches) != 1:
                raise ValueError(f"cannot express union {branches} structurally")
            schema = {**branches[0], **schema}
        if "$ref" in schema:
            name = schema.pop("$ref").split("/")[-1]
            out = self.model(self.models[name], self.defs[name])
            if description:
                out["description"] = description
            return out
        out = self.scalar(schema)
        if description:
            out = {"description": description, **out}
        if default is not None:
            out["default"] = default
        return out

    def scalar(self, schema: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if "const" in schema:
            value = schema.pop("const")
            schema.setdefault("enum", [value])
        kind = schema.pop("type", None)
        if kind is None and "enum" in schema:
            kind = {str: "string", int: "integer", float: "number", bool: "boolean"}[type(schema["enum"][0])]
        out["type"] = kind
        if "enum" in schema:
            out["enum"] = schema.pop("enum")
        for key in (
            "minimum",
            "maximum",
            "minLength",
            "maxLength",
            "pattern",
            "minItems",
            "maxItems",
            "minProperties",
            "maxProperties",
        ):
            if key in schema:
                out[key] = schema.pop(key)
        if "exclusiveMinimum" in schema:
            out["minimum"] = schema.pop("exclusiveMinimum")
            out["exclusiveMinimum"] = True
        if "exclusiveMaximum" in schema:
            out["maximum"] = schema.pop("exclusiveMaximum")
            out["exclusiveMaximum"] = True
        if kind == "array":
            out["items"] = self.node(schema.pop("items"))
        if kind == "object":
            extra = schema.pop("additionalProperties", None)
            if isinstance(extra, dict):
                out["additionalProperties"] = self.node(extra)
        return out

    def convert(self) -> dict[str, Any]:
        full = self.root.model_json_schema(by_alias=True)
        return self.model(self.root, full)


def openapi_schema() -> dict[str, Any]:
    """The CRD's openAPIV3Schema for the whole FineTuneJob object."""
    spec = _Converter(FineTuneJobSpec).convert()
    spec["description"] = "Desired state: one fine-tune of one model on one dataset."
    status = _Converter(FineTuneJobStatus).convert()
    status["properties"]["conditions"].update({"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]})
    return {
        "type": "object",
        "description": "FineTuneJob fine-tunes a model for one task with one method on Kubernetes GPUs.",
        "required": ["spec"],
        "x-kubernetes-validations": [FINISHED_RULE],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status,
        },
    }


PRINTER_COLUMNS = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Progress", "type": "number", "jsonPath": ".status.progress.percent", "description": "Percent of steps"},
    {"name": "Task", "type": "string", "jsonPath": ".spec.task.type"},
    {"name": "Method", "type": "string", "jsonPath": ".spec.method.type"},
    {"name": "Nodes×GPUs", "type": "string", "jsonPath": ".status.topology"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def crd() -> dict[str, Any]:
    """The whole CustomResourceDefinition object."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{PLURAL}.{API_GROUP}",
            "labels": {NAME_LABEL: OPERATOR_APP, COMPONENT_LABEL: "crd"},
        },
        "spec": {
            "group": API_GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": [SHORT_NAME],
                "categories": ["finetune"],
            },
            "versions": [
                {
                    "name": API_VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": openapi_schema()},
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                }
            ],
        },
    }


def render() -> str:
    """The CRD as the YAML text that is checked in."""
    header = "# Generated by `python -m finetune_api.crd --write` from api/finetune_api. Do not edit.\n"
    return header + yaml.safe_dump(crd(), sort_keys=False, width=120, allow_unicode=True)


def main(argv: list[str]) -> int:
    text = render()
    if "--write" in argv:
        for path in (CRD_PATH, CHART_CRD_PATH):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {path}")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
