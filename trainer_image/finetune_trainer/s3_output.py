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
again); a failed final upload fails the job (exit 75, retried by the Job) and leaves the files on disk.

Resuming refuses a spec whose fingerprint (model, task type and labels, method, LoRA rank and target
modules, prompt-tuning tokens) differs from the checkpoint's, naming each changed field: weights of
another shape or meaning must not be mixed silently. Learning rate, epochs and other schedule
settings may change between restarts.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from finetune_api.contract import (
    ENV_S3_PART_TIMEOUT,
    ENV_S3_UPLOAD_QUEUE,
    METRICS_FILE,
    PREDICTIONS_FILE,
)
from finetune_api.status import Artifacts, FineTuneJobStatus, now
from finetune_trainer.checkpoint_store import (
    MANIFEST,
    MANIFEST_FORMAT,
    S3CheckpointStore,
    entries_json,
    manifest_entries,
    rank_of,
)
from finetune_trainer.checkpoint_uploader import CheckpointUploader, PendingCheckpoint, snapshot_directory
from finetune_trainer.errors import EXIT_RETRYABLE, ConfigError
from finetune_trainer.fingerprint import check_compatible, fingerprint, fingerprint_fields
from finetune_trainer.history_recorder import history_jsonl
from finetune_trainer.job_location import JobLocation, checkpoint_name, step_of
from finetune_trainer.s3_errors import StorageError
from finetune_trainer.s3_types import S3Uri, env_number, relative_files
from finetune_trainer.storage import S3Storage
from finetune_trainer.world import WorldInfo, barrier

if TYPE_CHECKING:
    from transformers import Trainer

    from finetune_api.spec import FineTuneJobSpec
    from finetune_trainer.status_reporter import StatusReporter

log = logging.getLogger(__name__)

TRAINER_STATE = "trainer_state.json"
# Local folders of this module inside the output dir; never part of the final artifacts.
STAGING = ".s3-staging"
DOWNLOADING = ".s3-download"
MERGED_LOCAL = "merged"

QUEUE_ENV = ENV_S3_UPLOAD_QUEUE
PART_TIMEOUT_ENV = ENV_S3_PART_TIMEOUT
DEFAULT_PART_TIMEOUT = 1800.0
# Rank 0 stops waiting for another node's part of a checkpoint this long after a newer one is queued.
SUPERSEDED_WAIT = 60.0
# Not needed to load the best checkpoint's weights at the end (only to resume training from it).
RESUME_ONLY_FILES = re.compile(r"^(optimizer\.pt|scheduler\.pt|scaler\.pt|rng_state(_\d+)?\.pth)$")


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
        node: WorldInfo,
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
        self.part_timeout = env_number(PART_TIMEOUT_ENV, DEFAULT_PART_TIMEOUT)
        self.uploaded: list[int] = []  # checkpoints this process committed (rank 0) or uploaded parts of
        self.failed: list[int] = []
        self.resumed_from: dict[str, Any] | None = None
        self.uploader: CheckpointUploader | None = None
        if spec.output.upload_checkpoints and node.is_node_leader:
            self.uploader = CheckpointUploader(self._upload_checkpoint, int(env_number(QUEUE_ENV, 1)))
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
        barrier()
        if self.uploader is None:
            return
        folder = Path(output_dir) / checkpoint_name(step)
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
            self.upload_history(state.get("log_history") or [])
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
        target = run_dir / checkpoint_name(step)
        if self.node.is_node_leader:
            best_step = manifest.get("bestStep")
            best_path: str | None = None
            if best_step is not None and int(best_step) != step and trainer.args.load_best_model_at_end:
                best = self.store.manifest(int(best_step))
                if best is not None:
                    self._download(best, run_dir / checkpoint_name(int(best_step)), skip=RESUME_ONLY_FILES.match)
                    best_path = os.path.join(args_dir, checkpoint_name(int(best_step)))
            elif best_step is not None and int(best_step) == step:
                best_path = os.path.join(args_dir, checkpoint_name(step))
            self._download(manifest, target, skip=lambda _: False, best_path=best_path)
        barrier()
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

    def finish(self, trainer: Trainer, metrics: Mapping[str, Any], *, merged: Path | None = None) -> Artifacts | None:
        """Wait for checkpoint uploads, then (rank 0) upload the final artifacts with a manifest; their URIs.

        Call after the engine wrote the model, metrics.json, spec.resolved.yaml, the model card and the
        ``merged`` model (:mod:`finetune_trainer.artifacts`). A final upload that
        fails after every retry raises :class:`FinalUploadError` (exit 75: the Job runs the pod again).
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
            artifacts = Artifacts(
                model=str(self.location.final),
                metrics=str(self.location.final.join(METRICS_FILE)),
                predictions=str(self.location.final.join(PREDICTIONS_FILE))
                if (self.output_dir / PREDICTIONS_FILE).is_file()
                else None,
                merged_model=str(self.location.merged) if merged is not None else None,
            )
            common = {"globalStep": trainer.state.global_step, "resumedFrom": self.resumed_from}
            if merged is not None:
                self.upload_artifacts(merged, self.location.merged, "merged", common)
            self.upload_artifacts(out, self.location.final, "final", {**common, "metrics": dict(metrics)})
            self.upload_history(trainer.state.log_history)
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

    def upload_history(self, log_history: Iterable[Mapping[str, Any]]) -> None:
        """Replace history.jsonl with the run's every log entry (rank 0); a failure costs a warning, not the run."""
        try:
            self.store.storage.write_bytes(self.location.history, history_jsonl(log_history), "application/jsonl")
        except StorageError as err:
            log.warning("the history was not written to %s: %s", self.location.history, err)

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
            "files": entries_json(entries),
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
    node = WorldInfo.from_env(environ)
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
