"""The spec settings a checkpoint's weights depend on, and the refusal to resume across a change of them.

Resuming refuses a spec whose fingerprint (model, task type and labels, method, and the method's
shape-deciding options such as the LoRA rank) differs from the checkpoint's, naming each changed
field: weights of another shape or meaning must not be mixed silently. Learning rate, epochs and
other schedule settings may change between restarts.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from finetune_trainer.errors import ConfigError
from finetune_trainer.methods import get_method
from finetune_trainer.s3_types import S3Uri

if TYPE_CHECKING:
    from finetune_api.spec import FineTuneJobSpec

log = logging.getLogger(__name__)


# In a local output directory: the fingerprint of the spec its checkpoints were trained with.
LOCAL_FINGERPRINT_FILE = "resume-fingerprint.json"


def fingerprint_fields(spec: FineTuneJobSpec) -> dict[str, Any]:
    """The spec settings a checkpoint's weights depend on, by field path; changing one makes it unusable."""
    m = spec.model
    if m.uri is not None:
        model = m.uri
    elif m.path is not None:
        model = m.path
    else:
        model = f"{m.name}@{m.revision}"
    fields: dict[str, Any] = {
        "model": model,
        "task.type": spec.task.type,
        "task.labels": list(spec.task.labels),
        "task.multiLabel": spec.task.multi_label,
        "method.type": spec.method.type,
    }
    return {**fields, **get_method(spec.method.type).fingerprint_fields(spec)}


def fingerprint(fields: Mapping[str, Any]) -> str:
    """A short hash of the fingerprint fields."""
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def check_compatible(
    manifest: Mapping[str, Any],
    spec: FineTuneJobSpec,
    uri: S3Uri | str,
    remedy: str = "start over under another metadata.name (or delete the job's checkpoints in S3)",
) -> None:
    """Raise ConfigError naming every fingerprint field that differs between the checkpoint and the spec."""
    now = fingerprint_fields(spec)
    if manifest.get("fingerprint") == fingerprint(now):
        return
    before = manifest.get("spec") or {}
    changed = [
        f"spec.{key}: the checkpoint was trained with {before.get(key)!r}, the spec now says {now.get(key)!r}"
        for key in sorted(set(before) | set(now))
        if before.get(key) != now.get(key)
    ] or [f"spec: fingerprint {manifest.get('fingerprint')} of the checkpoint differs from {fingerprint(now)}"]
    raise ConfigError(
        f"cannot resume from {uri}: the spec changed in a way the checkpoint cannot follow:\n  - "
        + "\n  - ".join(changed)
        + "\nA job continues only with the same model, task, method and LoRA rank. Restore the previous "
        f"values, or {remedy}."
    )


def check_local_resume(spec: FineTuneJobSpec, output_dir: Path, checkpoint: str | None) -> None:
    """Refuse to resume a local checkpoint trained under another fingerprint, as open_output does for S3.

    The fingerprint is the one :func:`record_local_fingerprint` left in output_dir; a directory without
    it (written by an older trainer) is resumed unchecked.
    """
    record = output_dir / LOCAL_FINGERPRINT_FILE
    if checkpoint is None or not record.is_file():
        return
    check_compatible(
        json.loads(record.read_text()),
        spec,
        checkpoint,
        remedy=f"train into another output directory (or delete {output_dir}'s checkpoint-* directories)",
    )


def record_local_fingerprint(spec: FineTuneJobSpec, output_dir: Path) -> None:
    """Note in output_dir the fingerprint its checkpoints are trained with (read by check_local_resume)."""
    fields = fingerprint_fields(spec)
    output_dir.mkdir(parents=True, exist_ok=True)
    record = {"fingerprint": fingerprint(fields), "spec": fields}
    (output_dir / LOCAL_FINGERPRINT_FILE).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
