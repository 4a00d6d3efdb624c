"""Where a job's outputs live in S3, and how checkpoint folders are named.

The job prefix is ``<output.s3.prefix><namespace>/<name>/`` (a non-empty prefix without a trailing
``/`` gets one). Namespace and name are ``FTJ_NAMESPACE``/``FTJ_NAME`` (the operator sets them); a
run outside a cluster uses ``local/spec-<hash>/``, the hash covering the model, task, dataset and
method sections, so rerunning the same spec from any output dir resumes, as a restarted pod would,
while another model or dataset gets a prefix of its own.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from finetune_api.contract import ENV_JOB_NAME, ENV_JOB_NAMESPACE
from finetune_api.spec import wire
from finetune_trainer.s3_types import S3Uri

if TYPE_CHECKING:
    from finetune_api.spec import FineTuneJobSpec

CHECKPOINTS_DIR = "checkpoints/"
FINAL_DIR = "final/"
MERGED_DIR = "merged/"
HISTORY_FILE = "history.jsonl"
# The Trainer's checkpoint folders, on disk and in S3.
CHECKPOINT_NAME = re.compile(r"^checkpoint-(\d+)$")


def checkpoint_name(step: int) -> str:
    """The folder name of the checkpoint at ``step``, as the Trainer names it."""
    return f"checkpoint-{step}"


def step_of(name: str) -> int | None:
    """N of a ``checkpoint-N`` name (None for other names)."""
    match = CHECKPOINT_NAME.match(Path(name).name)
    return int(match.group(1)) if match else None


def local_run_name(spec: FineTuneJobSpec) -> str:
    """Job name of a run outside a cluster: a hash of what is trained on what (model, task, dataset, method)."""
    identity = {k: wire(getattr(spec, k)) for k in ("model", "task", "dataset", "method")}
    return "spec-" + hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class JobLocation:
    """The job's prefix in the bucket and the places under it."""

    root: S3Uri

    @classmethod
    def from_spec(cls, spec: FineTuneJobSpec, environ: Mapping[str, str] | None = None) -> JobLocation:
        """``<output.s3.prefix><namespace>/<name>/`` from FTJ_NAMESPACE/FTJ_NAME, or ``local/spec-<hash>/``."""
        env = os.environ if environ is None else environ
        s3 = spec.output.s3
        assert s3 is not None
        namespace = env.get(ENV_JOB_NAMESPACE) or "local"
        name = env.get(ENV_JOB_NAME) or local_run_name(spec)
        prefix = s3.prefix.lstrip("/")
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        return cls(S3Uri(s3.bucket, f"{prefix}{namespace}/{name}/"))

    @property
    def checkpoints(self) -> S3Uri:
        """Prefix of every checkpoint."""
        return self.root.join(CHECKPOINTS_DIR)

    def checkpoint(self, step: int) -> S3Uri:
        """Prefix of one checkpoint."""
        return self.root.join(f"{CHECKPOINTS_DIR}{checkpoint_name(step)}/")

    @property
    def final(self) -> S3Uri:
        """Prefix of the final artifacts."""
        return self.root.join(FINAL_DIR)

    @property
    def merged(self) -> S3Uri:
        """Prefix of the merged model."""
        return self.root.join(MERGED_DIR)

    @property
    def history(self) -> S3Uri:
        """The full training history, one JSON object per logged step (status.history.uri)."""
        return self.root.join(HISTORY_FILE)
