"""The checkpoint store against real MinIO servers: a checkpoint counts only once its manifest exists, the manifest
waits for every node's part, pruning keeps the best, and an upload survives the store going down and coming back."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from finetune_api.spec import S3Location
from finetune_trainer.checkpoint_store import S3CheckpointStore
from finetune_trainer.job_location import JobLocation
from finetune_trainer.s3_types import S3Uri
from finetune_trainer.storage import MB, S3Storage
from tests.cluster.fixture import MinIO
from tests.storage.own_minio import OwnMinIO

pytestmark = pytest.mark.cluster

SPEC_FIELDS = {"model": "tiny@main", "method.type": "lora"}


def store_in(endpoint: str, bucket: str) -> S3CheckpointStore:
    storage = S3Storage.for_location(S3Location(bucket=bucket, endpoint=endpoint, path_style=True))
    return S3CheckpointStore(storage, JobLocation(S3Uri(bucket, "runs/ns/job/")))


def checkpoint_dir(root: Path, step: int, files: dict[str, bytes] | None = None) -> Path:
    folder = root / f"checkpoint-{step}"
    for name, data in (files or {"model.safetensors": f"weights {step}".encode(), "rng_state.pth": b"rng"}).items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return folder


def save(store: S3CheckpointStore, root: Path, step: int, best: int | None = None) -> dict[str, Any]:
    parts = [
        {
            "node": 0,
            "files": {n: e.to_json() for n, e in store.upload_part(step, checkpoint_dir(root, step), 0).items()},
        }
    ]
    return store.commit(step, parts, spec_fields=SPEC_FIELDS, world_size=1, state={"best_global_step": best})


def test_a_checkpoint_without_a_manifest_is_not_the_latest(
    minio: MinIO, bucket: str, s3_env: dict, tmp_path: Path
) -> None:
    store = store_in(minio.endpoint, bucket)
    save(store, tmp_path, 4)
    store.upload_part(8, checkpoint_dir(tmp_path, 8), 0)  # uploaded, never committed: the pod died here

    latest = store.latest()

    assert latest is not None and latest["globalStep"] == 4
    assert store.steps() == [4, 8]
    assert store.complete_steps() == [4]


def test_the_manifest_waits_for_every_node_and_lists_their_files(
    minio: MinIO, bucket: str, s3_env: dict, tmp_path: Path
) -> None:
    store = store_in(minio.endpoint, bucket)
    node0 = checkpoint_dir(
        tmp_path / "n0", 6, {"model.safetensors": b"w", "rng_state_0.pth": b"r0", "rng_state_1.pth": b"r1"}
    )
    node1 = checkpoint_dir(tmp_path / "n1", 6, {"rng_state_2.pth": b"r2", "rng_state_3.pth": b"r3"})
    store.upload_part(6, node0, 0)

    assert store.wait_for_parts(6, nodes=2, timeout=0.5) is None  # node 1 has not uploaded yet
    assert store.latest() is None
    store.upload_part(6, node1, 1)
    parts = store.wait_for_parts(6, nodes=2, timeout=10)
    assert parts is not None
    manifest = store.commit(6, parts, spec_fields=SPEC_FIELDS, world_size=4, state={"epoch": 1.5})

    assert store.latest() == manifest
    assert manifest["nodes"] == 2 and manifest["worldSize"] == 4 and manifest["epoch"] == 1.5
    assert {n: f["node"] for n, f in manifest["files"].items()} == {
        "model.safetensors": 0,
        "rng_state_0.pth": 0,
        "rng_state_1.pth": 0,
        "rng_state_2.pth": 1,
        "rng_state_3.pth": 1,
    }
    assert manifest["files"]["rng_state_2.pth"]["sha256"] == hashlib.sha256(b"r2").hexdigest()


def test_pruning_keeps_the_newest_and_the_best(minio: MinIO, bucket: str, s3_env: dict, tmp_path: Path) -> None:
    store = store_in(minio.endpoint, bucket)
    for step in (2, 4, 6, 8):
        save(store, tmp_path, step, best=2)
    store.upload_part(5, checkpoint_dir(tmp_path, 5), 0)  # abandoned: older than the newest complete one
    store.upload_part(10, checkpoint_dir(tmp_path, 10), 0)  # still on its way

    deleted = store.prune(keep=2, best_step=2)

    assert deleted == [4, 5, 6]
    assert store.steps() == [2, 8, 10]
    assert store.complete_steps() == [2, 8]
    save(store, tmp_path, 10, best=8)
    assert store.prune(keep=2, best_step=8) == [2]  # the best is among the two newest now


def test_an_upload_rides_out_the_store_going_down_and_nothing_half_written_counts(
    own_minio: OwnMinIO, s3_env: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    own_minio.client().create_bucket(Bucket="outage")
    store = store_in(own_minio.endpoint, "outage")
    store.storage.chunk_size = 5 * MB
    store.storage.concurrency = 2  # slow enough to be cut in the middle
    folder = checkpoint_dir(tmp_path, 12, {f"shard-{i}.bin": os.urandom(12 * MB) for i in range(6)})
    sent = 0
    killed = threading.Event()

    def cut_after_some_bytes(n: int) -> None:
        nonlocal sent
        sent += n
        if sent > 20 * MB and not killed.is_set():
            killed.set()
            own_minio.kill()

    result: dict[str, Any] = {}

    def upload() -> None:
        try:
            entries = store.storage.upload_directory(
                folder, store.location.checkpoint(12), progress=cut_after_some_bytes
            )
            parts = [{"node": 0, "files": {n: e.to_json() for n, e in entries.items()}}]
            result["manifest"] = store.commit(12, parts, spec_fields=SPEC_FIELDS, world_size=1, state={})
        except Exception as err:
            result["error"] = err

    thread = threading.Thread(target=upload)
    thread.start()
    assert killed.wait(60), "the upload never got going"
    time.sleep(3)  # the store stays down for a while; the uploader backs off and retries
    own_minio.start()
    while thread.is_alive():
        # Whenever a checkpoint counts as complete, every file it lists is there in full.
        latest = store.latest()
        if latest is not None:
            objects = {o.key: o.size for o in store.storage.list_objects(store.location.checkpoint(12))}
            for name, entry in latest["files"].items():
                assert objects[store.location.checkpoint(12).join(name).key] == entry["size"]
        thread.join(0.2)

    assert "error" not in result, result.get("error")
    assert store.latest() == result["manifest"]
    down = tmp_path / "down"
    store.download(result["manifest"], down, ranks=None, skip=lambda _: False)  # sha256-verified
    assert all((down / n).read_bytes() == (folder / n).read_bytes() for n in result["manifest"]["files"])
