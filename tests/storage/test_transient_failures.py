"""Real faults while the trainer loads its data from S3: what a retry can cure is retried, the rest fails at once.

The dataset files live in a MinIO of the test's own that the test stops and starts; the trainer runs as the
pod runs it (``python -m finetune_trainer run``) and its exit code is what the Job's podFailurePolicy reads:
0 when the store came back within the retry budget, 75 (retryable) with the reason when it did not, 4 for
data that does not fit the task and 3 for refused credentials - both without a single retry.
"""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest

from finetune_api import contract
from tests.cluster.fixture import REPO_ROOT, read_env_file
from tests.storage.own_minio import OwnMinIO
from tests.storage.trainer_runs import last_json_line, trainer_argv, trainer_env, wait_for, write_config
from tests.trainer import tiny

pytestmark = pytest.mark.slow

ACCESS_KEY = "ftj-faults"
SECRET_KEY = "ftj-faults-secret"
RETRY_WARNING = "failed (attempt 1"


def minio_binary() -> Path:
    versions = read_env_file(REPO_ROOT / "tests" / "cluster" / "versions.env")
    binary = REPO_ROOT / ".cache" / "cluster" / "bin" / f"minio-{versions['MINIO_VERSION']}"
    if not binary.is_file():
        subprocess.run([str(REPO_ROOT / "tests" / "cluster" / "build.sh"), "minio"], check=True)
    return binary


@pytest.fixture
def store(tmp_path: Path) -> Iterator[OwnMinIO]:
    """A MinIO holding the sentiment task's files in bucket ``data``; stopped afterwards."""
    data = tmp_path / "minio-data"
    data.mkdir()
    server = OwnMinIO(minio_binary(), data, tmp_path / "minio.log", ACCESS_KEY, SECRET_KEY).start()
    client = server.client()
    client.create_bucket(Bucket="data")
    files = {
        "train.csv": tiny.write_csv(tmp_path / "train.csv", tiny.sentiment_rows(64, seed=0)),
        "val.jsonl": tiny.write_jsonl(tmp_path / "val.jsonl", tiny.sentiment_rows(16, seed=1)),
    }
    for key, path in files.items():
        client.upload_file(str(path), "data", key)
    yield server
    server.kill()


def job(tmp_path: Path, model: Path, **task: object) -> Path:
    """A short sentiment run of the tiny BERT on the files in S3 (outputs stay on the pod's disk)."""
    files = {"train": "s3://data/train.csv", "validation": "s3://data/val.jsonl"}
    spec = tiny.spec_dict(
        model,
        {"type": "sequence-classification", "labels": ["neg", "pos"], **task},
        files,
        maxSteps=2,
        evalStrategy="no",
        saveStrategy="no",
        loadBestModelAtEnd=False,
    )
    return write_config(tmp_path / "job.yaml", spec)


def env_for(store: OwnMinIO, tmp_path: Path, retry_seconds: float, **extra: str) -> dict[str, str]:
    s3 = {
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL_S3": store.endpoint,
        contract.ENV_S3_CACHE_DIR: str(tmp_path / "s3-cache"),
        contract.ENV_S3_RETRY_SECONDS: str(retry_seconds),
    }
    return trainer_env(s3, **extra)


class Trainer:
    """The trainer as a child process whose output is read while it runs."""

    def __init__(self, config: Path, out: Path, env: dict[str, str]):
        self.proc = subprocess.Popen(
            trainer_argv(config, out), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._readers = [
            threading.Thread(target=self._read, args=(self.proc.stdout, self.stdout), daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stderr, self.stderr), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _read(stream: IO[str] | None, lines: list[str]) -> None:
        assert stream is not None
        for line in stream:
            lines.append(line)

    def said(self, text: str) -> bool:
        return any(text in line for line in self.stderr)

    def finish(self, timeout: float = 300) -> tuple[int, str, str]:
        """Exit code, stdout and stderr (read to the end)."""
        try:
            self.proc.wait(timeout)
        finally:
            self.proc.kill()  # no-op when it has exited
            for reader in self._readers:
                reader.join(30)
        return self.proc.returncode, "".join(self.stdout), "".join(self.stderr)


def test_a_store_that_comes_back_during_data_loading_is_waited_for(
    store: OwnMinIO, tiny_bert: Path, tmp_path: Path
) -> None:
    store.kill()
    trainer = Trainer(job(tmp_path, tiny_bert), tmp_path / "out", env_for(store, tmp_path, retry_seconds=180))

    # The trainer reached the data, found the store down and is retrying; the store comes back.
    wait_for("the trainer to retry the data download", lambda: trainer.said(RETRY_WARNING), timeout=240, interval=0.2)
    assert trainer.proc.poll() is None
    store.start()

    code, stdout, stderr = trainer.finish()
    assert code == 0, stderr[-3000:]
    assert "S3 list s3://data/train.csv failed (attempt 1" in stderr
    assert last_json_line(stdout)["global_step"] == 2


def test_a_store_down_for_longer_than_the_retry_budget_exits_retryable_with_the_reason(
    store: OwnMinIO, tiny_bert: Path, tmp_path: Path
) -> None:
    store.kill()
    trainer = Trainer(job(tmp_path, tiny_bert), tmp_path / "out", env_for(store, tmp_path, retry_seconds=3))

    code, _, stderr = trainer.finish()
    assert code == contract.EXIT_RETRYABLE, stderr[-3000:]
    assert "Traceback" not in stderr
    assert (
        f"retryable error: dataset.files.train: cannot reach the S3 endpoint {store.endpoint} to list "
        "s3://data/train.csv (retried for 3 s)"
    ) in stderr
    assert trainer.said(RETRY_WARNING)


def test_a_wrong_column_fails_at_once_naming_the_column(store: OwnMinIO, tiny_bert: Path, tmp_path: Path) -> None:
    config = job(tmp_path, tiny_bert, columns={"text": "review"})
    trainer = Trainer(config, tmp_path / "out", env_for(store, tmp_path, retry_seconds=180))

    code, _, stderr = trainer.finish()
    assert code == contract.EXIT_DATA, stderr[-3000:]
    assert "data error: dataset.files.train (s3://data/train.csv) has no column 'review' for the text role" in stderr
    assert "Set spec.task.columns.text" in stderr
    assert "retrying" not in stderr


def test_refused_credentials_fail_at_once_naming_the_setting(store: OwnMinIO, tiny_bert: Path, tmp_path: Path) -> None:
    env = env_for(store, tmp_path, retry_seconds=180, AWS_SECRET_ACCESS_KEY="not-the-secret")
    trainer = Trainer(job(tmp_path, tiny_bert), tmp_path / "out", env)

    code, _, stderr = trainer.finish()
    assert code == contract.EXIT_CONFIG, stderr[-3000:]
    assert (
        f"config error: dataset.files.train: the S3 credentials were refused by {store.endpoint} "
        "(SignatureDoesNotMatch)"
    ) in stderr
    assert "check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY" in stderr
    assert "retrying" not in stderr
