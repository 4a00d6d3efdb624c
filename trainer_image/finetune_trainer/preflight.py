"""``python -m finetune_trainer preflight``: everything the job refers to, checked on a CPU before any GPU is held.

Run by the operator as a short pod with the job's own ServiceAccount and Secrets, before the GPU Job
exists. In order, each check stopping the ones that need it:

1. the model's ``config.json`` (hub at the revision with the token, S3 or the volume) and its
   tokenizer files, never the weights;
2. the data, with the same checks ``validate`` and the training run make: the files or hub dataset
   open, the task's columns exist, labels are in ``task.labels``, a sample tokenizes, QA answers lie
   in their contexts, preference rows are complete;
3. the S3 output: a small object written under the job's prefix and deleted again.

The verdict is one JSON object (:class:`finetune_api.preflight.PreflightResult`) on stdout and in
the pod's termination message. A service that cannot be reached (network, 5xx, throttling) is
reported as ``unreachable``, not as a problem: the operator checks again later.
"""

from __future__ import annotations

import logging
import os
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from finetune_api.contract import ENV_S3_RETRY_SECONDS
from finetune_api.preflight import PreflightResult
from finetune_api.validation import InvalidSpec, load_spec_file
from finetune_trainer.errors import classify, write_termination_message

if TYPE_CHECKING:
    from datasets import DatasetDict

    from finetune_api.spec import FineTuneJobSpec

log = logging.getLogger("finetune_trainer")

# Files of a saved model that hold weights: never fetched by the preflight.
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".h5", ".msgpack", ".ckpt")
# The preflight is retried by the operator: it gives up on an unreachable store sooner than a training run.
PREFLIGHT_S3_RETRY_SECONDS = "8"


class _Unreachable(Exception):
    """A check could not reach its service; the reason is the message."""


def check_data(spec: FineTuneJobSpec, tokenizer_at: Callable[[], str] | None) -> DatasetDict:
    """The task's checks of the dataset, and those that need the tokenizer (loaded from ``tokenizer_at()``)."""
    import datasets

    from finetune_trainer.data import load_datasets
    from finetune_trainer.engine import load_tokenizer
    from finetune_trainer.methods import get_method
    from finetune_trainer.tasks import get_task
    from finetune_trainer.tasks.base import ChecksWithTokenizer

    datasets.disable_progress_bars()
    task = get_task(spec.task.type)
    get_method(spec.method.type)
    splits = load_datasets(spec)
    task.check_dataset(spec, splits)
    if tokenizer_at is not None and isinstance(task, ChecksWithTokenizer):
        task.check_with_tokenizer(spec, splits, load_tokenizer(spec, tokenizer_at()))
    return splits


def tokenizer_location(spec: FineTuneJobSpec, workdir: Path) -> str:
    """Where the tokenizer loads from: the hub id, the volume's directory, or S3's non-weight files in ``workdir``."""
    from finetune_trainer.engine import resolve_model_location

    if spec.model.uri is None:
        return resolve_model_location(spec.model, spec.output.s3)
    from finetune_trainer.s3_errors import input_context
    from finetune_trainer.s3_types import S3Uri
    from finetune_trainer.storage import S3Storage

    prefix = S3Uri.parse(spec.model.uri, "model.uri").as_prefix()
    storage = S3Storage.for_location(spec.output.s3, input_context("model.uri"))
    objects = [o for o in storage.list_objects(prefix) if not o.key.endswith("/")]
    small = [o for o in objects if not o.key.endswith(WEIGHT_SUFFIXES) and "/" not in o.key[len(prefix.key) :]]
    storage.download_files([(S3Uri(prefix.bucket, o.key), workdir / o.key[len(prefix.key) :]) for o in small])
    return str(workdir)


def check_output(spec: FineTuneJobSpec) -> str | None:
    """Write and delete a small object under the job's S3 prefix; the prefix checked, or None without output.s3."""
    if spec.output.s3 is None:
        return None
    from finetune_trainer.job_location import JobLocation
    from finetune_trainer.storage import S3Storage

    root = JobLocation.from_spec(spec).root
    probe = root.join(f".preflight-{uuid.uuid4().hex[:12]}.json")
    storage = S3Storage.for_location(spec.output.s3)
    storage.write_json(probe, {"preflight": "write check; deleted at once"})
    storage.delete(probe)
    return str(root)


def _attempt(result: dict[str, Any], step: Callable[[], Any]) -> tuple[bool, Any]:
    """Run one check; a failure becomes a problem (permanent) or ``unreachable`` (transient)."""
    try:
        return True, step()
    except Exception as err:
        failure = classify(err)
        if failure.kind == "unexpected":
            raise
        if failure.retryable:
            raise _Unreachable(failure.reason) from err
        result["problems"].append(failure.reason)
        return False, None


def preflight(spec: FineTuneJobSpec) -> PreflightResult:
    """Every check that can run; stops at the first unreachable service (the rest would wait on it too)."""
    from finetune_trainer.model_config import read_model_config

    os.environ.setdefault(ENV_S3_RETRY_SECONDS, PREFLIGHT_S3_RETRY_SECONDS)
    found: dict[str, Any] = {"problems": []}
    checked: list[str] = []
    config: dict[str, Any] = {}
    try:
        ok, value = _attempt(found, lambda: read_model_config(spec))
        if ok:
            config = value
            checked.append("model config.json")
        with tempfile.TemporaryDirectory(prefix="ftj-preflight-") as tmp:
            location: str | None = None
            if ok:
                ok, location = _attempt(found, lambda: tokenizer_location(spec, Path(tmp)))
            at = (lambda: str(location)) if location is not None else None
            ok, splits = _attempt(found, lambda: check_data(spec, at))
            if ok:
                rows = ", ".join(f"{name} {len(split)} rows" for name, split in splits.items())
                checked.append(f"data ({rows})" + (" and tokenizer" if location else ""))
        ok, prefix = _attempt(found, lambda: check_output(spec))
        if ok and prefix:
            checked.append(f"write to {prefix}")
    except _Unreachable as err:
        return PreflightResult(found["problems"], str(err), config, checked)
    return PreflightResult(found["problems"], None, config, checked)


def preflight_command(config: str) -> int:
    """Print the preflight's JSON verdict and leave it in the termination message; 0 even when it found problems.

    The exit code says whether the preflight itself ran (a bug keeps its traceback and exit 1); what it
    found is in the JSON, for the operator.
    """
    try:
        spec = load_spec_file(config)
    except InvalidSpec as err:
        result = PreflightResult([f"spec: {err}"])
    else:
        result = preflight(spec)
    text = result.encode()
    print(text)
    write_termination_message(text)
    return 0
