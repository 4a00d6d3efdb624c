"""The storage module against the local MinIO: transfers with checksums, listing, deleting, and errors that name
which problem it is (refused credentials, a missing bucket, an unreachable endpoint, a missing object)."""

from __future__ import annotations

import hashlib
import os
import socket
from pathlib import Path

import pytest

from finetune_api.spec import S3Location
from finetune_trainer.s3_cache import fetch_directory, fetch_file
from finetune_trainer.s3_errors import (
    S3BucketMissingError,
    S3CredentialsError,
    S3EndpointError,
    S3NotFoundError,
    StorageError,
)
from finetune_trainer.s3_types import FileEntry, S3Uri, relative_files
from finetune_trainer.storage import MB, S3Storage
from tests.cluster.fixture import MinIO

pytestmark = pytest.mark.cluster


def location(minio: MinIO, bucket: str, **overrides: object) -> S3Location:
    return S3Location.model_validate({"bucket": bucket, "endpoint": minio.endpoint, "pathStyle": True, **overrides})


def make_tree(root: Path) -> dict[str, bytes]:
    """A checkpoint-like folder: one file of several multipart parts, small files, a sub-folder, an empty file."""
    contents = {
        "model.safetensors": os.urandom(13 * MB),
        "config.json": b'{"a": 1}',
        "global_step4/zero_pp_rank_0_mp_rank_00_optim_states.pt": os.urandom(300_000),
        "empty.txt": b"",
    }
    for name, data in contents.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return contents


def test_a_directory_round_trips_with_sha256_of_every_file(
    minio: MinIO, bucket: str, s3_env: dict, tmp_path: Path
) -> None:
    storage = S3Storage.for_location(location(minio, bucket))
    storage.chunk_size = 5 * MB  # the big file goes as a multipart upload of three parts
    contents = make_tree(tmp_path / "up")
    prefix = S3Uri(bucket, "jobs/a/checkpoint-4/")

    entries = storage.upload_directory(tmp_path / "up", prefix)

    assert entries == {n: FileEntry(len(d), hashlib.sha256(d).hexdigest()) for n, d in contents.items()}
    listed = {o.key: o for o in storage.list_objects(prefix)}
    assert {k[len(prefix.key) :]: o.size for k, o in listed.items()} == {n: len(d) for n, d in contents.items()}
    assert listed[prefix.key + "model.safetensors"].etag.endswith("-3")  # three parts
    down = tmp_path / "down"
    storage.download_files([(prefix.join(n), down / n) for n in entries], {down / n: e for n, e in entries.items()})
    assert relative_files(down) == sorted(contents)
    assert all((down / n).read_bytes() == d for n, d in contents.items())


def test_a_download_that_does_not_match_its_sha256_fails_and_leaves_no_file(
    minio: MinIO, bucket: str, s3_env: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FTJ_S3_RETRY_SECONDS", "1")
    storage = S3Storage.for_location(location(minio, bucket))
    (tmp_path / "f").write_bytes(b"the real bytes")
    storage.upload_file(tmp_path / "f", S3Uri(bucket, "f"))
    wrong = FileEntry(14, hashlib.sha256(b"other bytes!!!").hexdigest())

    with pytest.raises(StorageError, match="sha256"):
        storage.download_file(S3Uri(bucket, "f"), tmp_path / "down" / "f", wrong)
    assert not (tmp_path / "down" / "f").exists()


def test_listing_folders_json_and_deleting_a_prefix(minio: MinIO, bucket: str, s3_env: dict) -> None:
    storage = S3Storage.for_location(location(minio, bucket))
    for step in (2, 4):
        storage.write_json(S3Uri(bucket, f"j/checkpoints/checkpoint-{step}/manifest.json"), {"step": step})
    storage.write_json(S3Uri(bucket, "j/checkpoints/checkpoint-40/x.json"), {})

    assert sorted(storage.list_dirs(S3Uri(bucket, "j/checkpoints"))) == [
        "checkpoint-2",
        "checkpoint-4",
        "checkpoint-40",
    ]
    assert storage.read_json(S3Uri(bucket, "j/checkpoints/checkpoint-4/manifest.json")) == {"step": 4}
    assert storage.read_json(S3Uri(bucket, "j/checkpoints/checkpoint-4/nothing.json")) is None
    # checkpoint-4/ is a prefix of its own: checkpoint-40 is not under it.
    assert storage.delete_prefix(S3Uri(bucket, "j/checkpoints/checkpoint-4/")) == 1
    assert [o.key for o in storage.list_objects(S3Uri(bucket, "j/"))] == [
        "j/checkpoints/checkpoint-2/manifest.json",
        "j/checkpoints/checkpoint-40/x.json",
    ]


@pytest.mark.parametrize(
    ("access_key", "secret_key", "code"),
    [
        ("ftj-test-access", "not-the-secret", "SignatureDoesNotMatch"),
        ("nobody", "nothing-at-all", "InvalidAccessKeyId"),
    ],
)
def test_refused_credentials_name_the_secret_to_check(
    minio: MinIO,
    bucket: str,
    s3_env: dict,
    monkeypatch: pytest.MonkeyPatch,
    access_key: str,
    secret_key: str,
    code: str,
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret_key)
    storage = S3Storage.for_location(location(minio, bucket))

    with pytest.raises(S3CredentialsError) as err:
        storage.check_access(S3Uri(bucket, "runs/"))
    message = str(err.value)
    assert f"the S3 credentials were refused by {minio.endpoint} ({code})" in message
    assert "check the Secret named in spec.output.s3.credentialsSecretRef" in message
    assert err.value.exit_code == 3


def test_a_missing_bucket_is_named_with_the_field_to_fix(minio: MinIO, s3_env: dict) -> None:
    storage = S3Storage.for_location(location(minio, "no-such-bucket-here"))

    with pytest.raises(S3BucketMissingError) as err:
        storage.check_access(S3Uri("no-such-bucket-here", "runs/"))
    assert str(err.value) == (
        f"bucket 'no-such-bucket-here' does not exist at {minio.endpoint}: create it, or fix spec.output.s3.bucket"
    )


def test_an_unreachable_endpoint_is_named_after_the_retries(s3_env: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FTJ_S3_RETRY_SECONDS", "2")
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    storage = S3Storage.for_location(S3Location(bucket="models", endpoint=closed, path_style=True))

    with pytest.raises(S3EndpointError) as err:
        storage.check_access(S3Uri("models", "runs/"))
    assert f"cannot reach the S3 endpoint {closed}" in str(err.value)
    assert "check spec.output.s3.endpoint" in str(err.value)
    assert err.value.exit_code == 75  # the store may come back: the Job retries


def test_an_s3_dataset_file_is_downloaded_once_and_reused(
    minio: MinIO, bucket: str, s3_env: dict, tmp_path: Path
) -> None:
    client = minio.client()
    client.put_object(Bucket=bucket, Key="data/train.jsonl", Body=b'{"text": "a", "label": "pos"}\n')
    uri = f"s3://{bucket}/data/train.jsonl"

    first = fetch_file(uri, field="dataset.files.train")
    mtime = first.stat().st_mtime_ns
    again = fetch_file(uri, field="dataset.files.train")

    assert first == again and first.name == "train.jsonl"
    assert first.read_bytes() == b'{"text": "a", "label": "pos"}\n'
    assert again.stat().st_mtime_ns == mtime  # not downloaded again
    client.put_object(Bucket=bucket, Key="data/train.jsonl", Body=b'{"text": "b", "label": "neg"}\n')
    assert fetch_file(uri, field="dataset.files.train").read_bytes() == b'{"text": "b", "label": "neg"}\n'


def test_an_s3_model_directory_is_downloaded_whole(minio: MinIO, bucket: str, s3_env: dict, tmp_path: Path) -> None:
    client = minio.client()
    for key, body in {"m/config.json": b"{}", "m/weights/a.bin": b"abc", "mx/other": b"not ours"}.items():
        client.put_object(Bucket=bucket, Key=key, Body=body)

    local = fetch_directory(f"s3://{bucket}/m", field="model.uri")

    assert relative_files(local) == ["config.json", "weights/a.bin"]


def test_missing_s3_inputs_name_their_field(minio: MinIO, bucket: str, s3_env: dict) -> None:
    with pytest.raises(S3NotFoundError, match=rf"dataset\.files\.validation: s3://{bucket}/val\.jsonl does not exist"):
        fetch_file(f"s3://{bucket}/val.jsonl", field="dataset.files.validation")
    with pytest.raises(S3NotFoundError, match=rf"model\.uri: no objects under s3://{bucket}/models/bert/"):
        fetch_directory(f"s3://{bucket}/models/bert", field="model.uri")
    with pytest.raises(S3BucketMissingError, match=r"fix spec\.model\.uri"):
        fetch_directory("s3://no-such-bucket-here/models/bert", field="model.uri")
