"""Checkpoints and final artifacts in S3, and automatic resume from them.

A preempted pod loses its disk; what it uploaded survives. Every checkpoint the Trainer saves is
uploaded as soon as it is written, the final model at the end, and a restarted job (a new pod,
an empty disk) continues from the newest complete checkpoint in S3.

Layout under the job prefix ``<output.s3.prefix><namespace>/<name>/`` (a non-empty prefix without a
trailing ``/`` gets one). Namespace and name are ``FTJ_NAMESPACE``/``FTJ_NAME`` (the operator sets
them); a run outside a cluster uses ``local/spec-<hash>/``, the hash covering the model, task,
dataset and method sections, so rerunning the same spec from any output dir resumes, as a
restarted pod would, while another model or dataset gets a prefix of its own::

    checkpoints/checkpoint-<step>/<files as the Trainer wrote them>
    checkpoints/checkpoint-<step>/_parts/node-<k>.json   what node k uploaded (files, size, sha256)
    checkpoints/checkpoint-<step>/manifest.json          written last, by rank 0: the checkpoint counts
    final/<model or adapter, tokenizer, metrics.json, trainer_state.json, spec.resolved.yaml, README.md>
    final/manifest.json
    merged/<base with the adapter merged>   (output.saveMergedModel)
    merged/manifest.json

A checkpoint counts only once its ``manifest.json`` exists (:data:`MANIFEST_FORMAT`: files with size
and sha256, global step, world size, best step, and the spec fingerprint), so a half-uploaded one is
never taken as the latest. Every node uploads the files it holds (with DeepSpeed ZeRO each node has
its ranks' shards; with DDP node 0 has the weights and every node its ranks' RNG states) and then
writes its part manifest; rank 0 writes ``manifest.json`` only after every node's part exists.
Pruning (``training.saveTotalLimit``) deletes a checkpoint's manifest before its files, and keeps the
best checkpoint (the trainer state's ``best_global_step``) besides the newest ones.

Uploads run on a background thread per node, so training does not wait for S3. The queue holds at
most ``FTJ_S3_UPLOAD_QUEUE`` (default 1) checkpoints waiting behind the one uploading: when a newer
checkpoint arrives and the queue is full, the oldest waiting one is dropped (superseded) instead of
blocking training or piling up snapshots on disk - an older checkpoint has no value once a newer one
is on its way. A failed checkpoint upload is logged and training goes on (the next one tries
again); a failed final upload fails the job (exit 1, retried by the Job) and leaves the files on disk.

Resuming refuses a spec whose fingerprint (model, task type and labels, method, LoRA rank and target
modules, prompt-tuning tokens) differs from the checkpoint's, naming each changed field: weights of
another shape or meaning must not be mixed silently. Learning rate, epochs and other schedule
settings may change between restarts.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from pydantic.alias_generators import to_camel
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from finetune_api.contract import (
    API_GROUP,
    API_GROUP_VERSION,
    ENV_JOB_NAME,
    ENV_JOB_NAMESPACE,
    ENV_S3_PART_TIMEOUT,
    ENV_S3_UPLOAD_QUEUE,
    KIND,
    METRICS_FILE,
    RESOLVED_SPEC_FILE,
)
from finetune_api.spec import LoraOptions, PromptTuningOptions, wire
from finetune_api.status import Artifacts, FineTuneJobStatus, now
from finetune_trainer.errors import EXIT_RETRYABLE, ConfigError
from finetune_trainer.storage import FileEntry, S3Storage, S3Uri, StorageError, relative_files

if TYPE_CHECKING:
    from transformers import Trainer

    from finetune_api.spec import FineTuneJobSpec
    from finetune_trainer.status_reporter import StatusReporter

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
PARTS = "_parts"
MANIFEST_FORMAT = f"{API_GROUP}/manifest/v1"
CHECKPOINTS_DIR = "checkpoints/"
FINAL_DIR = "final/"
MERGED_DIR = "merged/"
CHECKPOINT_NAME = re.compile(r"^checkpoint-(\d+)$")
TRAINER_STATE = "trainer_state.json"
MODEL_CARD = "README.md"
# Local folders of this module inside the output dir; never part of the final artifacts.
STAGING = ".s3-staging"
DOWNLOADING = ".s3-download"
MERGED_LOCAL = "merged"

QUEUE_ENV = ENV_S3_UPLOAD_QUEUE
PART_TIMEOUT_ENV = ENV_S3_PART_TIMEOUT
DEFAULT_PART_TIMEOUT = 1800.0
# Rank 0 stops waiting for another node's part of a checkpoint this long after a newer one is queued.
SUPERSEDED_WAIT = 60.0

# Files that belong to one rank: its RNG state, its ZeRO partition. A node downloads only its ranks' ones.
RANK_FILES = (re.compile(r"(?:^|/)rng_state_(\d+)\.pth$"), re.compile(r"(?:^|/)(?:bf16_)?zero_pp_rank_(\d+)_"))
# Not needed to load the best checkpoint's weights at the end (only to resume training from it).
RESUME_ONLY_FILES = re.compile(r"^(optimizer\.pt|scheduler\.pt|scaler\.pt|rng_state(_\d+)?\.pth)$")


def _env_number(name: str, default: float) -> float:
    raw = os.environ.get(name)
    try:
        return float(raw) if raw else default
    except ValueError:
        log.warning("%s=%r is not a number; using %s", name, raw, default)
        return default


def _barrier() -> None:
    """Wait for every trainer process (a no-op in a single process)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


# ---- where and who ----


@dataclass(frozen=True)
class NodeInfo:
    """This process's place: global rank, and which node (pod) of how many it runs on."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    node: int = 0
    nodes: int = 1

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> NodeInfo:
        """From torchrun's variables (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, GROUP_RANK)."""
        env = os.environ if environ is None else environ
        rank = int(env.get("RANK", "0"))
        world = int(env.get("WORLD_SIZE", "1"))
        local_world = int(env.get("LOCAL_WORLD_SIZE", str(world)))
        node = int(env.get("GROUP_RANK", str(rank // max(local_world, 1))))
        nodes = int(env.get("GROUP_WORLD_SIZE", str(max(world // max(local_world, 1), 1))))
        return cls(rank, world, int(env.get("LOCAL_RANK", "0")), local_world, node, nodes)

    @property
    def is_main(self) -> bool:
        """Global rank 0: writes manifests, prunes, uploads the final artifacts."""
        return self.rank == 0

    @property
    def is_node_leader(self) -> bool:
        """Local rank 0: uploads and downloads the files of its node."""
        return self.local_rank == 0

    @property
    def node_ranks(self) -> range:
        """Global ranks of the processes on this node."""
        return range(self.node * self.local_world_size, (self.node + 1) * self.local_world_size)


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
        return self.root.join(f"{CHECKPOINTS_DIR}checkpoint-{step}/")

    @property
    def final(self) -> S3Uri:
        """Prefix of the final artifacts."""
        return self.root.join(FINAL_DIR)

    @property
    def merged(self) -> S3Uri:
        """Prefix of the merged model."""
        return self.root.join(MERGED_DIR)


# ---- fingerprint ----


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
    if spec.method.type in ("lora", "qlora"):
        lora = spec.method.lora or LoraOptions()
        fields["method.lora.r"] = lora.r
        fields["method.lora.targetModules"] = sorted(lora.target_modules) if lora.target_modules else None
        # Options that change what the adapter holds; listed only when set, so older fingerprints stay valid.
        defaults = LoraOptions()
        for key in ("use_dora", "use_rslora", "init_lora_weights", "modules_to_save"):
            if getattr(lora, key) != getattr(defaults, key):
                fields[f"method.lora.{to_camel(key)}"] = getattr(lora, key)
    if spec.method.type == "prompt-tuning":
        prompt = spec.method.prompt_tuning or PromptTuningOptions()
        fields["method.promptTuning.numVirtualTokens"] = prompt.num_virtual_tokens
    for attr in ("ia3", "p_tuning", "prefix_tuning", "freeze"):
        options = getattr(spec.method, attr)
        if options is not None:
            fields.update({f"method.{to_camel(attr)}.{k}": v for k, v in wire(options).items()})
    return fields


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


# ---- manifests and the store ----


def _entries_json(entries: Mapping[str, FileEntry], node: int | None = None) -> dict[str, Any]:
    out = {}
    for name, entry in sorted(entries.items()):
        item = entry.to_json()
        if node is not None:
            item["node"] = node
        out[name] = item
    return out


def manifest_entries(manifest: Mapping[str, Any]) -> dict[str, FileEntry]:
    """The files of a manifest as {relative path: FileEntry}."""
    return {name: FileEntry.from_json(item) for name, item in manifest.get("files", {}).items()}


def step_of(name: str) -> int | None:
    """N of a ``checkpoint-N`` name (None for other names)."""
    match = CHECKPOINT_NAME.match(Path(name).name)
    return int(match.group(1)) if match else None


def rank_of(path: str) -> int | None:
    """The rank a per-rank file belongs to, or None for files every rank needs."""
    for pattern in RANK_FILES:
        match = pattern.search(path)
        if match:
            return int(match.group(1))
    return None


@dataclass
class S3CheckpointStore:
    """The job's checkpoints and artifacts in S3: upload parts, commit manifests, find, download, prune."""

    storage: S3Storage
    location: JobLocation

    def steps(self) -> list[int]:
        """Steps of every checkpoint prefix, complete or not, oldest first."""
        found = (step_of(name) for name in self.storage.list_dirs(self.location.checkpoints))
        return sorted(s for s in found if s is not None)

    def manifest(self, step: int) -> dict[str, Any] | None:
        """The manifest of checkpoint-step, or None while it is incomplete (or not ours)."""
        data = self.storage.read_json(self.location.checkpoint(step).join(MANIFEST))
        if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT or data.get("globalStep") != step:
            return None
        return data

    def complete_steps(self) -> list[int]:
        """Steps of the checkpoints whose manifest exists, oldest first."""
        return [s for s in self.steps() if self.storage.exists(self.location.checkpoint(s).join(MANIFEST))]

    def latest(self) -> dict[str, Any] | None:
        """The manifest of the newest complete checkpoint (incomplete ones are skipped)."""
        for step in reversed(self.steps()):
            manifest = self.manifest(step)
            if manifest is not None:
                return manifest
        return None

    def upload_part(self, step: int, directory: Path, node: int) -> dict[str, FileEntry]:
        """Upload the files a node holds of checkpoint-step, then its part manifest."""
        prefix = self.location.checkpoint(step)
        entries = self.storage.upload_directory(directory, prefix)
        part = {"format": MANIFEST_FORMAT, "node": node, "files": _entries_json(entries)}
        self.storage.write_json(prefix.join(PARTS, f"node-{node}.json"), part)
        return entries

    def wait_for_parts(
        self, step: int, nodes: int, timeout: float, give_up: Callable[[], bool] = lambda: False
    ) -> list[dict[str, Any]] | None:
        """Every node's part manifest of checkpoint-step, polling until all exist; None on timeout or give_up()."""
        parts_prefix = self.location.checkpoint(step).join(PARTS + "/")
        deadline = time.monotonic() + timeout
        delay = 0.2
        while True:
            names = {o.key.rsplit("/", 1)[-1] for o in self.storage.list_objects(parts_prefix)}
            wanted = [f"node-{k}.json" for k in range(nodes)]
            if all(n in names for n in wanted):
                parts = [self.storage.read_json(parts_prefix.join(n)) for n in wanted]
                return [p for p in parts if isinstance(p, dict)]
            if time.monotonic() > deadline or give_up():
                missing = ", ".join(n for n in wanted if n not in names)
                log.warning("checkpoint-%d: gave up waiting for the parts of %s; it stays incomplete", step, missing)
                return None
            time.sleep(delay)
            delay = min(delay * 2, 5.0)

    def commit(
        self,
        step: int,
        parts: list[dict[str, Any]],
        *,
        spec_fields: Mapping[str, Any],
        world_size: int,
        state: Mapping[str, Any],
    ) -> dict[str, Any]:
        """Write checkpoint-step's manifest from the node parts (last: from now on the checkpoint counts)."""
        files: dict[str, Any] = {}
        for part in sorted(parts, key=lambda p: int(p.get("node", 0))):
            for name, item in part.get("files", {}).items():
                files.setdefault(name, {**item, "node": int(part.get("node", 0))})
        manifest = {
            "format": MANIFEST_FORMAT,
            "kind": "checkpoint",
            "uri": str(self.location.checkpoint(step)),
            "globalStep": step,
            "epoch": state.get("epoch"),
            "worldSize": world_size,
            "nodes": len(parts),
            "bestStep": state.get("best_global_step"),
            "bestMetric": state.get("best_metric"),
            "fingerprint": fingerprint(spec_fields),
            "spec": dict(spec_fields),
            "createdAt": now(),
            "totalBytes": sum(int(item["size"]) for item in files.values()),
            "files": files,
        }
        self.storage.write_json(self.location.checkpoint(step).join(MANIFEST), manifest)
        return manifest

    def prune(self, keep: int | None, best_step: int | None) -> list[int]:
        """Keep ``keep`` complete checkpoints, the best one among them, as the Trainer counts; the steps deleted.

        As in the Trainer's own rotation the best checkpoint takes one of the places (the newest always
        stays, for resuming; with keep 1 and an older best, both stay). Incomplete checkpoints older than
        the newest complete one are abandoned uploads and go too. A manifest is deleted before its
        files, so a half-deleted checkpoint never counts as complete.
        """
        if keep is None:
            return []
        complete = self.complete_steps()
        if not complete:
            return []
        kept = set(complete[-keep:])
        if best_step is not None and best_step in complete and best_step not in kept:
            kept = set(complete[-max(keep - 1, 1) :]) | {best_step}
        doomed = [s for s in self.steps() if s not in kept and (s in complete or s < complete[-1])]
        for step in doomed:
            prefix = self.location.checkpoint(step)
            self.storage.delete_prefix(prefix, first=[prefix.join(MANIFEST).key])
            log.info("deleted checkpoint-%d from S3 (training.saveTotalLimit %d)", step, keep)
        return doomed

    def download(
        self, manifest: Mapping[str, Any], dest: Path, *, ranks: range | None, skip: Callable[[str], bool]
    ) -> None:
        """Download a checkpoint's files into dest, sha256-verified; per-rank files only for ``ranks``."""
        prefix = S3Uri.parse(str(manifest["uri"]))
        wanted = {
            name: entry
            for name, entry in manifest_entries(manifest).items()
            if not skip(name) and (ranks is None or (r := rank_of(name)) is None or r in ranks)
        }
        pairs = [(prefix.join(name), dest / name) for name in wanted]
        self.storage.download_files(pairs, {dest / name: entry for name, entry in wanted.items()})


# ---- the background uploader ----


@dataclass
class PendingCheckpoint:
    """A checkpoint snapshot waiting for (or in) upload."""

    step: int
    snapshot: Path
    queued_at: float = field(default_factory=time.monotonic)


class CheckpointUploader:
    """One thread uploading checkpoints in order; at most ``max_pending`` wait, newer ones supersede older."""

    def __init__(self, upload: Callable[[PendingCheckpoint], None], max_pending: int = 1):
        self._upload = upload
        self._max_pending = max(1, max_pending)
        self._pending: collections.deque[PendingCheckpoint] = collections.deque()
        self._busy = False
        self._closed = False
        self._cond = threading.Condition()
        self.superseded: list[int] = []
        self._thread = threading.Thread(target=self._run, name="ftj-s3-checkpoints", daemon=True)
        self._thread.start()

    def submit(self, item: PendingCheckpoint) -> None:
        """Queue a checkpoint; if the queue is full the oldest waiting one is dropped (never blocks)."""
        with self._cond:
            while len(self._pending) >= self._max_pending:
                old = self._pending.popleft()
                self.superseded.append(old.step)
                log.warning(
                    "checkpoint-%d is superseded by checkpoint-%d before its upload started; it is not uploaded",
                    old.step,
                    item.step,
                )
                shutil.rmtree(old.snapshot, ignore_errors=True)
            self._pending.append(item)
            self._cond.notify_all()

    def newer_than(self, step: int) -> bool:
        """Whether a later checkpoint waits in the queue."""
        with self._cond:
            return any(p.step > step for p in self._pending)

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until nothing is queued or uploading; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._pending or self._busy:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._cond.wait(remaining)
        return True

    def close(self, timeout: float | None = None) -> bool:
        """Finish what is queued, then stop the thread; False if it did not finish in time."""
        done = self.drain(timeout)
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(1.0 if not done else None)
        return done

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if not self._pending:
                    return
                item = self._pending.popleft()
                self._busy = True
            try:
                self._upload(item)
            except Exception:  # the upload function logs its own failures; never let the thread die
                log.exception("checkpoint-%d: upload failed", item.step)
            finally:
                shutil.rmtree(item.snapshot, ignore_errors=True)
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()


def snapshot_directory(source: Path, dest: Path) -> Path:
    """Hard-link (or copy) every file of source into dest, so later deletes of source do not touch it.

    The Trainer deletes old checkpoints (saveTotalLimit) while an upload may still be reading them;
    links to the same inodes keep the bytes until the upload is done, at no copying cost.
    """
    shutil.rmtree(dest, ignore_errors=True)
    for name in relative_files(source):
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(source / name, target)
        except OSError:
            shutil.copy2(source / name, target)
    return dest


# ---- the run's S3 output: what the engine calls ----


class S3JobOutput:
    """Everything a training run does with S3: resume, checkpoint uploads, final artifacts, status.

    Built by :func:`open_output` in every process; each method knows which processes act.
    """

    def __init__(
        self,
        spec: FineTuneJobSpec,
        output_dir: Path,
        store: S3CheckpointStore,
        *,
        node: NodeInfo,
        resume: dict[str, Any] | None,
        reporter: StatusReporter | None = None,
        owns_reporter: bool = False,
    ):
        self.spec = spec
        self.output_dir = output_dir
        self.store = store
        self.node = node
        self.resume_manifest = resume
        self.reporter = reporter
        self._owns_reporter = owns_reporter
        self.spec_fields = fingerprint_fields(spec)
        self.part_timeout = _env_number(PART_TIMEOUT_ENV, DEFAULT_PART_TIMEOUT)
        self.uploaded: list[int] = []  # checkpoints this process committed (rank 0) or uploaded parts of
        self.failed: list[int] = []
        self.resumed_from: dict[str, Any] | None = None
        self.uploader: CheckpointUploader | None = None
        if spec.output.upload_checkpoints and node.is_node_leader:
            self.uploader = CheckpointUploader(self._upload_checkpoint, int(_env_number(QUEUE_ENV, 1)))
        self.callback = S3CheckpointCallback(self)

    @property
    def location(self) -> JobLocation:
        """The job's prefix."""
        return self.store.location

    def _report(self, artifacts: Artifacts) -> None:
        if self.reporter is not None and self.node.is_main:
            self.reporter.update(FineTuneJobStatus(artifacts=artifacts))

    # -- checkpoints --

    def checkpoint_saved(self, output_dir: str, step: int) -> None:
        """After the Trainer saved checkpoint-step: snapshot this node's files and queue their upload."""
        if not self.spec.output.upload_checkpoints:
            return
        # Every rank writes its own files (RNG state, ZeRO shards): wait for all before a node snapshots.
        _barrier()
        if self.uploader is None:
            return
        folder = Path(output_dir) / f"checkpoint-{step}"
        if not folder.is_dir():
            log.warning("checkpoint-%d: %s is not on this node's disk; nothing to upload", step, folder)
            return
        snapshot = snapshot_directory(folder, self.output_dir / STAGING / f"node-{self.node.node}" / folder.name)
        self.uploader.submit(PendingCheckpoint(step, snapshot))

    def _upload_checkpoint(self, item: PendingCheckpoint) -> None:
        step = item.step
        started = time.monotonic()
        try:
            entries = self.store.upload_part(step, item.snapshot, self.node.node)
            if not self.node.is_main:
                self.uploaded.append(step)
                return
            state = (
                json.loads((item.snapshot / TRAINER_STATE).read_text())
                if (item.snapshot / TRAINER_STATE).is_file()
                else {}
            )

            def superseded() -> bool:
                return (
                    self.uploader is not None
                    and self.uploader.newer_than(step)
                    and (time.monotonic() - started > SUPERSEDED_WAIT)
                )

            parts = self.store.wait_for_parts(step, self.node.nodes, self.part_timeout, superseded)
            if parts is None:
                self.failed.append(step)
                return
            self.store.commit(step, parts, spec_fields=self.spec_fields, world_size=self.node.world_size, state=state)
            self.uploaded.append(step)
            size = sum(e.size for e in entries.values())
            log.info(
                "checkpoint-%d uploaded to %s (%.1f MB in %.1f s)",
                step,
                self.location.checkpoint(step),
                size / 1e6,
                time.monotonic() - started,
            )
            self._report(Artifacts(latest_checkpoint=str(self.location.checkpoint(step))))
            best = state.get("best_global_step")
            self.store.prune(self.spec.training.save_total_limit, int(best) if best is not None else None)
        except StorageError as err:
            self.failed.append(step)
            log.error(
                "checkpoint-%d was not uploaded: %s. Training goes on; the next checkpoint tries again.", step, err
            )

    # -- resume --

    def restore(self, trainer: Trainer, local_checkpoint: str | None) -> str | None:
        """The checkpoint to resume from, downloaded from S3 when S3 has one at least as new as the local one.

        Node leaders download (the latest checkpoint; the best one too when the run loads it at the
        end), the other processes wait; every process returns the same path.
        """
        manifest = self.resume_manifest
        if manifest is None:
            return local_checkpoint
        step = int(manifest["globalStep"])
        local_step = step_of(local_checkpoint) if local_checkpoint else None
        if local_step is not None and local_step > step:
            log.info("resuming from the local %s, newer than checkpoint-%d in S3", local_checkpoint, step)
            return local_checkpoint
        # Checkpoints live in the Trainer's output_dir, named as the Trainer names them.
        args_dir = str(trainer.args.output_dir or self.output_dir)
        run_dir = Path(args_dir)
        target = run_dir / f"checkpoint-{step}"
        if self.node.is_node_leader:
            best_step = manifest.get("bestStep")
            best_path: str | None = None
            if best_step is not None and int(best_step) != step and trainer.args.load_best_model_at_end:
                best = self.store.manifest(int(best_step))
                if best is not None:
                    self._download(best, run_dir / f"checkpoint-{best_step}", skip=RESUME_ONLY_FILES.match)
                    best_path = os.path.join(args_dir, f"checkpoint-{best_step}")
            elif best_step is not None and int(best_step) == step:
                best_path = os.path.join(args_dir, f"checkpoint-{step}")
            self._download(manifest, target, skip=lambda _: False, best_path=best_path)
        _barrier()
        self.resumed_from = {"checkpoint": str(manifest["uri"]), "globalStep": step}
        log.info("resuming from %s (global step %d)", manifest["uri"], step)
        return str(target)

    def _download(
        self,
        manifest: Mapping[str, Any],
        target: Path,
        *,
        skip: Callable[[str], Any],
        best_path: str | None = None,
    ) -> None:
        """Download a checkpoint into target via a temporary folder renamed at the end (no half checkpoint)."""
        entries = manifest_entries(manifest)
        ranks = self.node.node_ranks
        needed = [n for n in entries if not skip(n) and ((r := rank_of(n)) is None or r in ranks)]
        if needed and all((target / n).is_file() and (target / n).stat().st_size == entries[n].size for n in needed):
            log.info("%s is already on disk (same files and sizes as %s)", target, manifest["uri"])
            return
        temp = target.parent / f"{DOWNLOADING}-{target.name}"
        shutil.rmtree(temp, ignore_errors=True)
        started = time.monotonic()
        self.store.download(manifest, temp, ranks=ranks, skip=lambda n: bool(skip(n)))
        state_file = temp / TRAINER_STATE
        if best_path is not None and state_file.is_file():
            # The state names the best checkpoint by its path on the old pod's disk; point it here.
            state = json.loads(state_file.read_text())
            state["best_model_checkpoint"] = best_path
            state_file.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
        shutil.rmtree(target, ignore_errors=True)
        os.replace(temp, target)
        size = sum(entries[n].size for n in needed)
        log.info(
            "downloaded %s to %s (%.1f MB in %.1f s)", manifest["uri"], target, size / 1e6, time.monotonic() - started
        )

    # -- the end --

    def finish(self, trainer: Trainer, metrics: Mapping[str, Any], *, model_path: str) -> Artifacts | None:
        """Wait for checkpoint uploads, then (rank 0) upload the final artifacts with a manifest; their URIs.

        Call after the engine wrote the model, metrics.json and spec.resolved.yaml. A final upload that
        fails after every retry raises :class:`FinalUploadError` (exit 1: the Job runs the pod again).
        """
        if self.uploader is not None:
            self.uploader.close()
            shutil.rmtree(self.output_dir / STAGING / f"node-{self.node.node}", ignore_errors=True)
            with contextlib.suppress(OSError):  # empty unless another node shares this disk
                (self.output_dir / STAGING).rmdir()
        if not self.node.is_main:
            return None
        out = self.output_dir
        try:
            write_model_card(self.spec, out, metrics, self.location)
            merged = save_merged_model(self.spec, out, model_path) if self.spec.output.save_merged_model else None
            artifacts = Artifacts(
                model=str(self.location.final),
                metrics=str(self.location.final.join(METRICS_FILE)),
                merged_model=str(self.location.merged) if merged is not None else None,
            )
            common = {"globalStep": trainer.state.global_step, "resumedFrom": self.resumed_from}
            if merged is not None:
                self.upload_artifacts(merged, self.location.merged, "merged", common)
            self.upload_artifacts(out, self.location.final, "final", {**common, "metrics": dict(metrics)})
            self._report(artifacts)
        except StorageError as err:
            raise FinalUploadError(
                f"the final artifacts could not be uploaded to {self.location.root}: {err}. They are still in "
                f"{out} on this pod; the job fails with the retryable exit code so that Kubernetes retries it, "
                "and the retry resumes from the last checkpoint in S3."
            ) from err
        finally:
            if self._owns_reporter and self.reporter is not None:
                self.reporter.close()  # sends what is pending (the artifacts) before the process ends
        log.info("final artifacts in %s", self.location.final)
        return artifacts

    def upload_artifacts(self, directory: Path, prefix: S3Uri, kind: str, extra: Mapping[str, Any]) -> dict[str, Any]:
        """Upload a directory's artifacts (not checkpoints or staging) under prefix, then its manifest."""
        names = [n for n in relative_files(directory) if _is_artifact(n)]
        started = time.monotonic()
        entries = self.store.storage.upload_directory(directory, prefix, names)
        manifest = {
            "format": MANIFEST_FORMAT,
            "kind": kind,
            "uri": str(prefix),
            **extra,
            "worldSize": self.node.world_size,
            "fingerprint": fingerprint(self.spec_fields),
            "spec": self.spec_fields,
            "createdAt": now(),
            "totalBytes": sum(e.size for e in entries.values()),
            "files": _entries_json(entries),
        }
        self.store.storage.write_json(prefix.join(MANIFEST), manifest)
        log.info("uploaded %d files to %s in %.1f s", len(entries), prefix, time.monotonic() - started)
        return manifest


class FinalUploadError(StorageError):
    """The final artifacts did not reach S3 after every retry (retryable: the Job runs the pod again)."""

    exit_code = EXIT_RETRYABLE


def _is_artifact(relative: str) -> bool:
    top = relative.split("/", 1)[0]
    return not (step_of(top) is not None or top.startswith((STAGING, DOWNLOADING)) or top == MERGED_LOCAL)


class S3CheckpointCallback(TrainerCallback):
    """Hands every saved checkpoint to the S3 uploader (on_save runs in every process)."""

    def __init__(self, output: S3JobOutput):
        self.output = output

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **_: Any) -> None:
        self.output.checkpoint_saved(str(args.output_dir or self.output.output_dir), state.global_step)


def open_output(
    spec: FineTuneJobSpec,
    output_dir: str | Path,
    *,
    reporter: StatusReporter | None = None,
    environ: Mapping[str, str] | None = None,
) -> S3JobOutput | None:
    """The run's S3 output, or None when the spec has no output.s3.

    Checks the bucket at once (refused credentials, a missing bucket or an unreachable endpoint fail
    here, before the model loads), finds the newest complete checkpoint to resume and refuses one of
    an incompatible spec. Without a ``reporter`` rank 0 reports artifacts with its own
    (FTJ_NAME/FTJ_NAMESPACE), when in a cluster.
    """
    if spec.output.s3 is None:
        return None
    node = NodeInfo.from_env(environ)
    location = JobLocation.from_spec(spec, environ)
    storage = S3Storage.for_location(spec.output.s3)
    storage.check_access(location.root)
    store = S3CheckpointStore(storage, location)
    resume = store.latest()
    if resume is not None:
        check_compatible(resume, spec, S3Uri.parse(str(resume["uri"])))
        if int(resume.get("worldSize", node.world_size)) != node.world_size:
            if any(rank_of(name) is not None and "zero_pp_rank" in name for name in resume.get("files", {})):
                raise ConfigError(
                    f"cannot resume from {resume['uri']}: its DeepSpeed ZeRO shards are for {resume['worldSize']} "
                    f"processes and this run has {node.world_size}; set resources.nodes x gpusPerNode back, "
                    "or start over under another metadata.name"
                )
            log.warning(
                "resuming checkpoint of %s processes with %s: the data order and RNG streams differ from an "
                "uninterrupted run",
                resume.get("worldSize"),
                node.world_size,
            )
    elif node.is_main:
        log.info("no complete checkpoint under %s: training starts from the beginning", location.checkpoints)
    owns = False
    if reporter is None and node.is_main:
        from finetune_trainer.status_reporter import StatusReporter

        reporter = StatusReporter.from_env()
        owns = reporter is not None
    return S3JobOutput(spec, Path(output_dir), store, node=node, resume=resume, reporter=reporter, owns_reporter=owns)


# ---- final artifacts: model card, merged model ----


def write_model_card(spec: FineTuneJobSpec, out: Path, metrics: Mapping[str, Any], location: JobLocation) -> Path:
    """README.md for the final artifacts: what was trained, how well, how to load it, and the spec."""
    m = spec.model
    base = m.name or m.uri or m.path
    resolved = out / RESOLVED_SPEC_FILE
    spec_yaml = resolved.read_text() if resolved.is_file() else yaml.safe_dump(wire(spec), sort_keys=False)
    from peft.utils.constants import CONFIG_NAME as ADAPTER_CONFIG

    adapter = (out / ADAPTER_CONFIG).is_file()  # every peft method saves one; full models do not
    rows = "\n".join(
        f"| {k} | {v:.6g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in sorted(metrics.items())
    )
    header = yaml.safe_dump(
        {
            "library_name": "peft" if adapter else "transformers",
            "base_model": base,
            "tags": [API_GROUP, spec.task.type, spec.method.type],
        },
        sort_keys=False,
    )
    what = "a peft adapter (and the task head)" if adapter else "the full model"
    text = f"""---
{header}---
# {location.root.key.rstrip("/").rsplit("/", 1)[-1]}

Fine-tuned from `{base}` for **{spec.task.type}** with **{spec.method.type}** by a {KIND}
({API_GROUP_VERSION}). This folder holds {what}, the tokenizer, `{METRICS_FILE}`,
`trainer_state.json` and the resolved spec; `manifest.json` lists every file with its sha256.

- artifacts: `{location.final}`
- checkpoints: `{location.checkpoints}`

## Results

| metric | value |
|---|---|
{rows}

## Load it

```python
from finetune_trainer.engine import load_for_inference

run = load_for_inference("<this folder, downloaded>")
```

## Spec

```yaml
{spec_yaml.rstrip()}
```
"""
    path = out / MODEL_CARD
    path.write_text(text)
    return path


def save_merged_model(spec: FineTuneJobSpec, out: Path, model_path: str) -> Path:
    """The base with the trained LoRA adapter merged in (peft merge_and_unload), saved to out/merged.

    The base is loaded again unquantised (for qlora in the quantisation's compute dtype): 4-bit
    weights cannot take a merged update.
    """
    import torch
    from peft import PeftModel
    from transformers import AutoTokenizer

    from finetune_trainer.tasks import get_task

    kwargs: dict[str, Any] = {}
    if spec.method.type == "qlora":
        from finetune_api.spec import QuantizationOptions

        kwargs["dtype"] = getattr(torch, (spec.method.quantization or QuantizationOptions()).compute_dtype)
    base = get_task(spec.task.type).load_model(spec, model_path, kwargs)
    merged = PeftModel.from_pretrained(base, str(out)).merge_and_unload()
    dest = out / MERGED_LOCAL
    shutil.rmtree(dest, ignore_errors=True)
    merged.save_pretrained(str(dest))
    AutoTokenizer.from_pretrained(str(out)).save_pretrained(str(dest))
    if (out / RESOLVED_SPEC_FILE).is_file():
        shutil.copy2(out / RESOLVED_SPEC_FILE, dest / RESOLVED_SPEC_FILE)
    log.info("merged the adapter into the base: %s", dest)
    return dest
