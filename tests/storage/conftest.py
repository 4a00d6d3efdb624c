"""Fixtures of the S3 tests: the local MinIO with a fresh bucket per test, a MinIO of the test's own
to stop and start, and the tiny BERT with its data."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster.fixture import REPO_ROOT, MinIO, read_env_file
from tests.storage.full_run import full_run  # noqa: F401  (the shared training run)
from tests.storage.own_minio import OwnMinIO
from tests.trainer import tiny

# Nothing here may reach the network beyond the local MinIO: models and data are local.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def sentiment_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A training CSV and a validation JSON lines file of the sentiment task."""
    root = tmp_path_factory.mktemp("sentiment")
    return {
        "train": tiny.write_csv(root / "train.csv", tiny.sentiment_rows(192, seed=0)),
        "validation": tiny.write_jsonl(root / "val.jsonl", tiny.sentiment_rows(32, seed=1, label_ids=True)),
    }


@pytest.fixture
def bucket(minio: MinIO) -> Iterator[str]:
    """A fresh, empty bucket in the local MinIO; emptied and removed after the test."""
    name = f"ftj-{uuid.uuid4().hex[:10]}"
    client = minio.client()
    client.create_bucket(Bucket=name)
    yield name
    paginator = client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=name):
        keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        if keys:
            client.delete_objects(Bucket=name, Delete={"Objects": keys})
    client.delete_bucket(Bucket=name)


@pytest.fixture
def s3_env(minio: MinIO, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, str]:
    """MinIO's credentials and endpoint in the environment (this process's, and returned for subprocesses)."""
    env = {
        "AWS_ACCESS_KEY_ID": minio.access_key,
        "AWS_SECRET_ACCESS_KEY": minio.secret_key,
        "AWS_DEFAULT_REGION": minio.region,
        "AWS_ENDPOINT_URL_S3": minio.endpoint,
        "FTJ_S3_CACHE_DIR": str(tmp_path / "s3-cache"),
        "FTJ_S3_RETRY_SECONDS": "30",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    # A run outside a job unless a test names one; and no status reporting to whatever cluster is around.
    for key in ("FTJ_NAME", "FTJ_NAMESPACE", "KUBECONFIG", "AWS_ENDPOINT_URL", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    return env


# ---- a MinIO of the test's own, to stop and start ----


@pytest.fixture
def own_minio(minio: MinIO, tmp_path: Path) -> Iterator[OwnMinIO]:
    """A MinIO of this test's own (the cluster fixture builds the binary), stopped afterwards."""
    versions = read_env_file(REPO_ROOT / "tests" / "cluster" / "versions.env")
    binary = REPO_ROOT / ".cache" / "cluster" / "bin" / f"minio-{versions['MINIO_VERSION']}"
    data = tmp_path / "own-minio"
    data.mkdir()
    server = OwnMinIO(binary, data, tmp_path / "own-minio.log", minio.access_key, minio.secret_key).start()
    yield server
    server.kill()
