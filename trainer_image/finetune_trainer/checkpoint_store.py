"""The job's checkpoints in S3: part manifests, the commit manifest, listing, download and pruning.

A checkpoint counts only once its ``manifest.json`` exists (:data:`MANIFEST_FORMAT`: files with size
and sha256, global step, world size, best step, and the spec fingerprint), so a half-uploaded one is
never taken as the latest. Every node uploads the files it holds and then writes its part manifest;
rank 0 writes ``manifest.json`` only after every node's part exists. Pruning deletes a checkpoint's
manifest before its files.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finetune_api.contract import (
    API_GROUP,
)
from finetune_api.status import now
from finetune_trainer.fingerprint import fingerprint
from finetune_trainer.job_location import JobLocation, step_of
from finetune_trainer.s3_types import FileEntry, S3Uri
from finetune_trainer.storage import S3Storage

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
PARTS = "_parts"
MANIFEST_FORMAT = f"{API_GROUP}/manifest/v1"
# Files that belong to one rank: its RNG state, its ZeRO partition. A node downloads only its ranks' ones.
RANK_FILES = (re.compile(r"(?:^|/)rng_state_(\d+)\.pth$"), re.compile(r"(?:^|/)(?:bf16_)?zero_pp_rank_(\d+)_"))


def entries_json(entries: Mapping[str, FileEntry], node: int | None = None) -> dict[str, Any]:
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
        part = {"format": MANIFEST_FORMAT, "node": node, "files": entries_json(entries)}
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
