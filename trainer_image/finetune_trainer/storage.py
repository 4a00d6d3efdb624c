"""S3 (and S3-compatible: MinIO, Ceph, R2) storage for the trainer, on boto3's transfer manager.

One :class:`S3Storage` moves files between the pod's disk and ``s3://bucket/key`` URIs: a file or a
whole directory up (with a sha256 of every file, computed while the bytes travel) or down (verified
against the sha256 when one is known), listing, JSON objects, and deleting a prefix. Large files go
as multipart uploads with parts in parallel (:data:`TRANSFER_CONFIG`, tuned by measuring, see
``docs/benchmarks.md``).

Connection settings and the values passed around are in :mod:`finetune_trainer.s3_types`.

Failures are retried twice over: botocore retries single requests (standard mode), and every
transfer runs in our own loop that retries connection errors, timeouts and 5xx answers with
exponential backoff for up to ``FTJ_S3_RETRY_SECONDS`` (default 300 s) - long enough to ride out a
restarting MinIO or a network blip, short enough to fail a job whose store is really gone. What
cannot succeed by retrying fails at once with an error naming the problem and the setting to fix:
refused credentials, a missing bucket, an unreachable endpoint, a missing object
(:mod:`finetune_trainer.s3_errors`). ``s3://`` inputs are cached by :mod:`finetune_trainer.s3_cache`.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from finetune_trainer.s3_errors import (
    MISSING_BUCKET_CODES,
    OUTPUT_CONTEXT,
    ChecksumMismatch,
    ErrorContext,
    StorageError,
    error_code,
    is_retryable,
    storage_error,
)
from finetune_trainer.s3_types import (
    FileEntry,
    ObjectInfo,
    S3Settings,
    S3Uri,
    file_entry,
    relative_files,
    retry_seconds_from_env,
)

if TYPE_CHECKING:
    from finetune_api.spec import S3Location

log = logging.getLogger(__name__)

MB = 1024 * 1024
# Multipart part size and parallel requests, chosen by measuring with tests/benchmarks/bench_s3_upload.py
# (docs/benchmarks.md): parts of 64 MB instead of boto3's 8 MB cut the per-request overhead (one
# HTTP exchange, checksum and signature per part); beyond ~8 requests in flight nothing was gained on
# the measured machine. Parts are read from the file as they are sent, not buffered whole.
CHUNK_SIZE = 64 * MB
CONCURRENCY = 8
# Socket read size for downloads (boto3's default 256 KB costs a Python call per 256 KB).
IO_CHUNK_SIZE = 1 * MB

MAX_BACKOFF_SECONDS = 30.0

T = TypeVar("T")
ProgressFn = Callable[[int], None]


# ---- the storage ----


def transfer_config(chunk_size: int = CHUNK_SIZE, concurrency: int = CONCURRENCY) -> Any:
    """The boto3 TransferConfig the trainer uses (the classic s3transfer engine, threads)."""
    from boto3.s3.transfer import TransferConfig

    return TransferConfig(
        multipart_threshold=chunk_size,
        multipart_chunksize=chunk_size,
        max_concurrency=concurrency,
        io_chunksize=IO_CHUNK_SIZE,
        use_threads=True,
        # The CRT engine is only used when awscrt is installed; pin the behaviour we measured.
        preferred_transfer_client="classic",
    )


class _Progress:
    """s3transfer subscriber that forwards byte counts."""

    def __init__(self, fn: ProgressFn):
        from s3transfer.subscribers import BaseSubscriber

        outer = fn

        class Subscriber(BaseSubscriber):
            def on_progress(self, future: Any, bytes_transferred: int, **kwargs: Any) -> None:
                outer(bytes_transferred)

        self.subscriber = Subscriber()


@dataclass
class S3Storage:
    """Transfers between local files and s3:// URIs, with retries and errors that name the fix."""

    settings: S3Settings = field(default_factory=S3Settings)
    context: ErrorContext = OUTPUT_CONTEXT
    retry_seconds: float = field(default_factory=retry_seconds_from_env)
    chunk_size: int = CHUNK_SIZE
    concurrency: int = CONCURRENCY
    _client: Any = field(default=None, init=False, repr=False)

    @classmethod
    def for_location(cls, location: S3Location | None, context: ErrorContext = OUTPUT_CONTEXT) -> S3Storage:
        """A storage for spec.output.s3 (or the environment's settings when None)."""
        return cls(settings=S3Settings.resolve(location), context=context)

    @property
    def client(self) -> Any:
        """The boto3 S3 client (created on first use; thread-safe, shared by every transfer)."""
        if self._client is None:
            import boto3
            from botocore.config import Config

            config = Config(
                region_name=self.settings.region,
                signature_version="s3v4",
                s3={
                    "addressing_style": "path" if self.settings.path_style else "auto",
                    # botocore already skips the SHA-256 of request bodies over https; over plain http
                    # (an in-cluster MinIO) it would hash every byte once more, the costliest step of an
                    # upload. Bodies stay covered by the signed CRC32 checksum header, and every file by
                    # the sha256 in the manifests, checked on download.
                    "payload_signing_enabled": False,
                },
                # botocore retries single requests a little; the long outages are our loop's job.
                retries={"max_attempts": 3, "mode": "standard"},
                max_pool_connections=self.concurrency + 4,
                connect_timeout=10,
                read_timeout=120,
                tcp_keepalive=True,
            )
            self._client = boto3.session.Session().client("s3", endpoint_url=self.settings.endpoint, config=config)
        return self._client

    @contextlib.contextmanager
    def _manager(self) -> Iterator[Any]:
        from boto3.s3.transfer import create_transfer_manager

        manager = create_transfer_manager(self.client, transfer_config(self.chunk_size, self.concurrency))
        with manager:
            yield manager

    # -- errors --

    def error(self, err: BaseException, uri: S3Uri, action: str) -> StorageError:
        """The StorageError a person reads for a failed S3 call: what was refused, and what to fix."""
        return storage_error(
            err,
            uri,
            action,
            endpoint=self.settings.display_endpoint,
            endpoint_source=self.settings.endpoint_source,
            context=self.context,
            retry_seconds=self.retry_seconds,
        )

    def _retrying(self, action: str, uri: S3Uri, fn: Callable[[], T]) -> T:
        """fn(), retried with backoff while it fails for reasons that may pass; clear errors otherwise."""
        deadline = time.monotonic() + self.retry_seconds
        delay, attempt = 1.0, 1
        while True:
            try:
                return fn()
            except Exception as err:
                if not is_retryable(err) or time.monotonic() + delay > deadline:
                    raise self.error(err, uri, action) from err
                log.warning("S3 %s %s failed (attempt %d: %s); retrying in %.0f s", action, uri, attempt, err, delay)
                time.sleep(delay)
                delay, attempt = min(delay * 2, MAX_BACKOFF_SECONDS), attempt + 1

    def _run_batch(
        self,
        action: str,
        items: list[T],
        uri_of: Callable[[T], S3Uri],
        submit: Callable[[Any, T], Future[Any]],
        verify: Callable[[T], None] | None = None,
    ) -> None:
        """Run one transfer per item through one transfer manager; retry the failed ones until the deadline."""
        deadline = time.monotonic() + self.retry_seconds
        delay, attempt = 1.0, 1
        pending = list(items)
        while pending:
            failed: list[tuple[T, BaseException]] = []
            with self._manager() as manager:
                futures = [(item, submit(manager, item)) for item in pending]
                for item, future in futures:
                    try:
                        future.result()
                        if verify is not None:
                            verify(item)
                    except Exception as err:
                        failed.append((item, err))
            if not failed:
                return
            item, problem = next(((i, e) for i, e in failed if not is_retryable(e)), failed[0])
            if not is_retryable(problem) or time.monotonic() + delay > deadline:
                raise self.error(problem, uri_of(item), action) from problem
            log.warning(
                "S3 %s: %d of %d transfers failed (attempt %d, first: %s: %s); retrying them in %.0f s",
                action,
                len(failed),
                len(pending),
                attempt,
                uri_of(item),
                problem,
                delay,
            )
            time.sleep(delay)
            delay, attempt = min(delay * 2, MAX_BACKOFF_SECONDS), attempt + 1
            pending = [i for i, _ in failed]

    # -- uploads --

    def upload_files(self, pairs: Iterable[tuple[Path, S3Uri]], progress: ProgressFn | None = None) -> list[FileEntry]:
        """Upload (local file, target) pairs in parallel; their entries (size, sha256) in the same order.

        The sha256 of each file is computed on other threads while the upload runs.
        """
        items = list(pairs)
        subscribers = [_Progress(progress).subscriber] if progress else None
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="ftj-sha256") as hashing:
            digests = [hashing.submit(file_entry, path) for path, _ in items]
            self._run_batch(
                "upload",
                items,
                lambda item: item[1],
                lambda manager, item: manager.upload(str(item[0]), item[1].bucket, item[1].key, None, subscribers),
            )
            return [d.result() for d in digests]

    def upload_file(self, path: Path, uri: S3Uri, progress: ProgressFn | None = None) -> FileEntry:
        """Upload one file; its size and sha256."""
        return self.upload_files([(path, uri)], progress)[0]

    def upload_directory(
        self,
        directory: Path,
        prefix: S3Uri,
        files: Iterable[str] | None = None,
        progress: ProgressFn | None = None,
    ) -> dict[str, FileEntry]:
        """Upload files of a directory (all, or the given relative paths) under prefix; {relative path: entry}."""
        names = sorted(files) if files is not None else relative_files(directory)
        base = prefix.as_prefix()
        entries = self.upload_files([(directory / name, base.join(name)) for name in names], progress)
        return dict(zip(names, entries, strict=True))

    def write_json(self, uri: S3Uri, data: Any) -> None:
        """Store a JSON document (one PUT: it appears whole or not at all)."""
        self.write_bytes(uri, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode(), "application/json")

    def write_bytes(self, uri: S3Uri, body: bytes, content_type: str) -> None:
        """Store a small object in one PUT (it appears whole or not at all)."""
        self._retrying(
            "write",
            uri,
            lambda: self.client.put_object(Bucket=uri.bucket, Key=uri.key, Body=body, ContentType=content_type),
        )

    # -- downloads --

    def download_files(
        self,
        pairs: Iterable[tuple[S3Uri, Path]],
        expected: Mapping[Path, FileEntry] | None = None,
        progress: ProgressFn | None = None,
    ) -> None:
        """Download (source, local path) pairs in parallel; files with an expected entry are sha256-verified."""
        items = list(pairs)
        checks = expected or {}
        subscribers = [_Progress(progress).subscriber] if progress else None
        for _, dest in items:
            dest.parent.mkdir(parents=True, exist_ok=True)

        def verify(item: tuple[S3Uri, Path]) -> None:
            uri, dest = item
            want = checks.get(dest)
            if want is None:
                return
            got = file_entry(dest)
            if got != want:
                dest.unlink(missing_ok=True)
                raise ChecksumMismatch(
                    f"{uri}: downloaded {got.size} bytes with sha256 {got.sha256}, the manifest says "
                    f"{want.size} bytes with sha256 {want.sha256}"
                )

        # s3transfer writes into a temporary name and renames when complete: no half file under dest.
        self._run_batch(
            "download",
            items,
            lambda item: item[0],
            lambda manager, item: manager.download(item[0].bucket, item[0].key, str(item[1]), None, subscribers),
            verify,
        )

    def download_file(self, uri: S3Uri, dest: Path, expected: FileEntry | None = None) -> Path:
        """Download one object to dest (verified when expected is given)."""
        self.download_files([(uri, dest)], {dest: expected} if expected else None)
        return dest

    def read_json(self, uri: S3Uri) -> Any:
        """A stored JSON document, or None when there is no such object."""

        def get() -> Any | None:
            try:
                response = self.client.get_object(Bucket=uri.bucket, Key=uri.key)
            except Exception as err:
                code, status, _ = error_code(err)
                if code in ("NoSuchKey", "404", "NotFound") or (status == 404 and code not in MISSING_BUCKET_CODES):
                    return None
                raise
            return json.loads(response["Body"].read())

        return self._retrying("read", uri, get)

    # -- listing and deleting --

    def list_objects(self, prefix: S3Uri) -> list[ObjectInfo]:
        """Every object under prefix (a key prefix, as given)."""

        def run() -> list[ObjectInfo]:
            found = []
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=prefix.bucket, Prefix=prefix.key):
                for obj in page.get("Contents", []):
                    found.append(ObjectInfo(obj["Key"], int(obj["Size"]), str(obj.get("ETag", "")).strip('"')))
            return found

        return self._retrying("list", prefix, run)

    def list_dirs(self, prefix: S3Uri) -> list[str]:
        """Names of the 'directories' directly under prefix (common prefixes, without the trailing /)."""
        base = prefix.as_prefix()

        def run() -> list[str]:
            names = []
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=base.bucket, Prefix=base.key, Delimiter="/"):
                for common in page.get("CommonPrefixes", []):
                    names.append(common["Prefix"][len(base.key) :].rstrip("/"))
            return names

        return self._retrying("list", base, run)

    def exists(self, uri: S3Uri) -> bool:
        """Whether the object exists."""

        def head() -> bool:
            try:
                self.client.head_object(Bucket=uri.bucket, Key=uri.key)
            except Exception as err:
                code, status, _ = error_code(err)
                if status == 404 and code not in MISSING_BUCKET_CODES:
                    return False
                raise
            return True

        return self._retrying("read", uri, head)

    def delete(self, uri: S3Uri) -> None:
        """Delete one object (no error when it is already gone)."""
        self._retrying("delete", uri, lambda: self.client.delete_object(Bucket=uri.bucket, Key=uri.key))

    def delete_prefix(self, prefix: S3Uri, first: Iterable[str] = ()) -> int:
        """Delete every object under prefix; the keys in ``first`` go before the rest. The number deleted."""
        keys = [o.key for o in self.list_objects(prefix)]
        early = [k for k in first if k in keys]
        for key in early:
            self.delete(S3Uri(prefix.bucket, key))
        rest = [k for k in keys if k not in early]
        for start in range(0, len(rest), 1000):  # DeleteObjects takes at most 1000 keys
            batch = {"Objects": [{"Key": k} for k in rest[start : start + 1000]], "Quiet": True}
            response = self._retrying("delete", prefix, functools.partial(self._delete_batch, prefix.bucket, batch))
            if response.get("Errors"):
                first_error = response["Errors"][0]
                raise StorageError(
                    f"could not delete {len(response['Errors'])} objects under {prefix}: "
                    f"{first_error.get('Key')}: {first_error.get('Code')} {first_error.get('Message')}"
                )
        return len(keys)

    def _delete_batch(self, bucket: str, batch: dict[str, Any]) -> Any:
        return self.client.delete_objects(Bucket=bucket, Delete=batch)

    def check_access(self, prefix: S3Uri) -> None:
        """Fail early, with the reason, when the bucket is missing, the endpoint is down or the keys are refused."""
        self._retrying(
            "list",
            prefix,
            lambda: self.client.list_objects_v2(Bucket=prefix.bucket, Prefix=prefix.key, MaxKeys=1),
        )
