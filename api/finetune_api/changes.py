"""Which spec fields may change after a FineTuneJob is created, and when.

Every field is in one of three classes:

- **any time**: the operator applies the change to the running children at once;
- **while suspended**: the old object must have ``runPolicy.suspend: true``; the operator
  updates the suspended Job (in place where Kubernetes allows it, else it recreates it) and
  the job resumes from its last checkpoint in S3;
- **never**: the API server refuses the change at ``kubectl apply``, naming the field.

A field not listed in :data:`CHANGES` is never changeable, so a new spec field is immutable
until someone decides otherwise here. :func:`transition_rules` turns the table into CEL
transition rules (``oldSelf``) that :mod:`finetune_api.rules` adds to the CRD, and
:func:`changes_markdown` into the reference's table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel

from finetune_api.spec import FineTuneJobSpec

When = Literal["any time", "while suspended", "never"]
SUSPENDED_CEL = "oldSelf.runPolicy.suspend"


@dataclass(frozen=True)
class Change:
    """When a field may change, and what the operator does with the change."""

    when: When
    applied: str


# Keys are wire paths below spec: a whole section ("resources") or one field of a section.
CHANGES: dict[str, Change] = {
    "runPolicy.suspend": Change("any time", "the Job's suspend: its pods stop, or start again from the checkpoint"),
    "runPolicy.backoffLimit": Change("any time", "the Job's backoffLimit"),
    "runPolicy.activeDeadlineSeconds": Change("any time", "the Job's activeDeadlineSeconds"),
    "runPolicy.ttlSecondsAfterFinished": Change("any time", "the Job's ttlSecondsAfterFinished"),
    "runPolicy.queueName": Change("while suspended", "the Job's kueue.x-k8s.io/queue-name label"),
    "runPolicy.terminationGracePeriodSeconds": Change(
        "while suspended",
        "the suspended Job's pod template (the Job is recreated); it resumes from the last checkpoint",
    ),
    "resources": Change(
        "while suspended",
        "the suspended Job: updated in place (container resources, node selector, tolerations, pod labels "
        "and annotations) or recreated (nodes, GPUs, image, ...); it resumes from the last checkpoint",
    ),
}
NEVER = Change("never", "refused by the API server: create a new FineTuneJob")

# On the whole object: a finished job (the operator set status.completionTime) runs nothing more,
# so no change to its spec could be applied; the API server refuses every one.
FINISHED_RULE = {
    "rule": "!has(oldSelf.status) || !has(oldSelf.status.completionTime) || self.spec == oldSelf.spec",
    "message": "spec cannot change once the job has finished (status.completionTime is set): "
    "create a new FineTuneJob; it can resume from this one's checkpoints in S3",
    "fieldPath": ".spec",
    "reason": "FieldValueForbidden",
}


def change_of(path: str) -> Change:
    """The class of a spec field (wire path below spec, e.g. ``runPolicy.queueName``)."""
    if path in CHANGES:
        return CHANGES[path]
    section = path.split(".", 1)[0]
    return CHANGES.get(section, NEVER)


def _fields(model: type[BaseModel]) -> dict[str, bool]:
    """Wire names of a model's fields, and whether each may be absent (optional, no default)."""
    return {
        (info.alias or name): info.default is None and info.default_factory is None
        for name, info in model.model_fields.items()
    }


def _same(path: str, optional: bool) -> str:
    if not optional:
        return f"self.{path} == oldSelf.{path}"
    return f"has(self.{path}) == has(oldSelf.{path}) && (!has(self.{path}) || self.{path} == oldSelf.{path})"


def _message(path: str, change: Change) -> str:
    if change.when == "while suspended":
        return (
            f"spec.{path} can change only while the job is suspended: set spec.runPolicy.suspend to true first "
            "(training stops and resumes from its last checkpoint once you set it back to false)"
        )
    return f"spec.{path} is immutable: create a new FineTuneJob to change it"


def _rule(path: str, optional: bool, change: Change) -> tuple[str, str, str]:
    same = _same(path, optional)
    cel = same if change.when == "never" else f"{SUSPENDED_CEL} || ({same})"
    return path, cel, _message(path, change)


def transition_rules() -> list[tuple[str, str, str]]:
    """(field path, CEL with oldSelf, message) for every field that may not change freely, on the spec."""
    out = []
    for section, optional in _fields(FineTuneJobSpec).items():
        listed = section in CHANGES or any(k.startswith(section + ".") for k in CHANGES)
        info = FineTuneJobSpec.model_fields[_python_name(FineTuneJobSpec, section)]
        model = info.annotation if isinstance(info.annotation, type) else None
        if section in CHANGES or not listed or model is None or not issubclass(model, BaseModel):
            change = change_of(section)
            if change.when != "any time":
                out.append(_rule(section, optional, change))
            continue
        for field, field_optional in _fields(model).items():
            path = f"{section}.{field}"
            change = change_of(path)
            if change.when != "any time":
                out.append(_rule(path, field_optional, change))
    return out


def _python_name(model: type[BaseModel], wire_name: str) -> str:
    return next(name for name, info in model.model_fields.items() if (info.alias or name) == wire_name)


def changes_markdown() -> str:
    """The reference's table: which fields may change when, and how the change is applied."""
    lines = [
        "A field not listed here cannot change once the job exists: the API server refuses the change and "
        "names the field. `observedGeneration` in the status moves only once the Job reflects the change. "
        "Once the job has finished (`status.completionTime` set) no field may change.",
        "",
        "| field | may change | applied to |",
        "|---|---|---|",
    ]
    lines += [f"| `spec.{path}` | {c.when} | {c.applied} |" for path, c in CHANGES.items()]
    return "\n".join(lines)
