"""S3 (and S3-compatible: MinIO, Ceph, R2) storage for the trainer, on boto3's transfer manager.

One :class:`S3Storage` moves files between the pod's disk and ``s3://bucket/key`` URIs: a file or a
whole directory up (with a sha256 of every file, computed while the bytes travel) or down (verified
against the sha256 when one is known), listing, JSON objects, and deleting a prefix. Large files go
as multipart uploads with parts in parallel (:data:`TRANSFER_CONFIG`, tuned by measuring, see
``docs/benchmarks.md``).

Connection settings (:class:`S3Settings`): the endpoint is ``spec.output.s3.endpoint`` when set,
else ``AWS_ENDPOINT_URL_S3`` (the operator sets it) or ``AWS_ENDPOINT_URL``, else AWS itself; the
credentials are boto3's usual chain (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` from the
Secret in ``spec.output.s3.credentialsSecretRef``, or the pod's IRSA identity).

Failures are retried twice over: botocore retries single requests (standard mode), and every
transfer runs in our own loop that retries connection errors, timeouts and 5xx answers with
exponential backoff for up to ``FTJ_S3_RETRY_SECONDS`` (default 300 s) - long enough to ride out a
restarting MinIO or a network blip, short enough to fail a job whose store is really gone. What
cannot succeed by retrying fails at once with an error naming the problem and the setting to fix:
refused credentials, a missing bucket, an unreachable endpoint, a missing object.

``s3://`` models and datasets are downloaded into a local cache (:func:`fetch_file`,
:func:`fetch_directory`) and reused while their objects are unchanged (same ETags).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from finetune_api.contract import (
    ENV_HF_HOME,
    ENV_S3_CACHE_DIR,
    ENV_S3_ENDPOINT,
    ENV_S3_ENDPOINT_ANY_SERVICE,
    ENV_S3_REGION,
    ENV_S3_REGION_ALT,
    ENV_S3_RETRY_SECONDS,
)
from finetune_trainer.errors import EXIT_CONFIG, EXIT_DATA, EXIT_RETRYABLE, TrainerError, classify

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

RETRY_SECONDS_ENV = ENV_S3_RETRY_SECONDS
DEFAULT_RETRY_SECONDS = 300.0
MAX_BACKOFF_SECONDS = 30.0
CACHE_DIR_ENV = ENV_S3_CACHE_DIR

# S3 error codes, by what a person has to do about them.
CREDENTIAL_CODES = frozenset(
    {"InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken", "InvalidSecurity"}
)
MISSING_BUCKET_CODES = frozenset({"NoSuchBucket"})
MISSING_KEY_CODES = frozenset({"NoSuchKey", "NotFound", "404"})
DENIED_CODES = frozenset({"AccessDenied", "Forbidden", "403", "AllAccessDisabled"})
T = TypeVar("T")
ProgressFn = Callable[[int], None]


# ---- errors ----


class StorageError(TrainerError):
    """An S3 operation failed in a way nobody classified (exit 1: the Job runs the pod again)."""


class S3CredentialsError(StorageError):
    """S3 refused the credentials (or there are none): retrying with the same Secret cannot help."""

    exit_code = EXIT_CONFIG


class S3BucketMissingError(StorageError):
    """The bucket does not exist at the endpoint."""

    exit_code = EXIT_CONFIG


class S3AccessDeniedError(StorageError):
    """The credentials are valid but may not do this operation on this bucket or key."""

    exit_code = EXIT_CONFIG


class S3EndpointError(StorageError):
    """The endpoint did not answer for the whole retry budget (wrong URL, or the store is down): it may come back."""

    exit_code = EXIT_RETRYABLE


class S3UnavailableError(StorageError):
    """The store kept answering 5xx or throttling for the whole retry budget: retryable, it may recover."""

    exit_code = EXIT_RETRYABLE


class S3LocationError(StorageError):
    """An s3:// URI in the spec is malformed (no bucket, a prefix where a file is needed)."""

    exit_code = EXIT_CONFIG


class S3NotFoundError(StorageError):
    """An object (model, dataset file) is not in the bucket."""

    exit_code = EXIT_DATA


# ---- values ----


@dataclass(frozen=True)
class S3Uri:
    """``s3://bucket/key``; a key ending in ``/`` (or empty) names a prefix."""

    bucket: str
    key: str

    @classmethod
    def parse(cls, uri: str, field: str = "uri") -> S3Uri:
        """Split an s3:// URI; ``field`` names the setting in the error."""
        if not uri.startswith("s3://"):
            raise S3LocationError(f"{field}: {uri!r} is not an s3:// URI; write s3://bucket/key")
        bucket, _, key = uri[len("s3://") :].partition("/")
        if not bucket:
            raise S3LocationError(f"{field}: {uri!r} names no bucket; write s3://bucket/key")
        return cls(bucket, key)

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    def join(self, *parts: str) -> S3Uri:
        """This prefix with path parts appended (``/`` between them)."""
        key = self.key
        for part in parts:
            part = part.lstrip("/")
            key = f"{key}{part}" if not key or key.endswith("/") else f"{key}/{part}"
        return S3Uri(self.bucket, key)

    def as_prefix(self) -> S3Uri:
        """The same location as a prefix (trailing ``/``), so ``a/b`` does not match ``a/bc``."""
        return self if not self.key or self.key.endswith("/") else S3Uri(self.bucket, self.key + "/")


@dataclass(frozen=True)
class FileEntry:
    """Size and sha256 of one stored file, as manifests record them."""

    size: int
    sha256: str

    def to_json(self) -> dict[str, Any]:
        """The manifest form: {"size": ..., "sha256": ...}."""
        return {"size": self.size, "sha256": self.sha256}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> FileEntry:
        """Read the manifest form back."""
        return cls(size=int(data["size"]), sha256=str(data["sha256"]))


@dataclass(frozen=True)
class ObjectInfo:
    """One listed object."""

    key: str
    size: int
    etag: str


@dataclass(frozen=True)
class ErrorContext:
    """Which settings an error names: the store of spec.output.s3, or a model/dataset URI."""

    bucket_field: str = "spec.output.s3.bucket"
    credentials_hint: str = "check the Secret named in spec.output.s3.credentialsSecretRef"


OUTPUT_CONTEXT = ErrorContext()


def input_context(field: str) -> ErrorContext:
    """The error context of an s3:// input (``model.uri``, ``dataset.files.train``)."""
    return ErrorContext(
        bucket_field=f"spec.{field}",
        credentials_hint=(
            "check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (in a cluster: the Secret named in "
            "spec.output.s3.credentialsSecretRef)"
        ),
    )


@dataclass(frozen=True)
class S3Settings:
    """How to reach the store: endpoint, region, addressing style (credentials come from the environment)."""

    endpoint: str | None = None
    region: str = "us-east-1"
    path_style: bool = False
    endpoint_source: str = "the default AWS endpoint"

    @classmethod
    def resolve(cls, location: S3Location | None = None, environ: Mapping[str, str] | None = None) -> S3Settings:
        """spec.output.s3 where given; the endpoint falls back to AWS_ENDPOINT_URL_S3, then AWS_ENDPOINT_URL."""
        env = os.environ if environ is None else environ
        endpoint, source = None, "the default AWS endpoint"
        if location is not None and location.endpoint:
            endpoint, source = location.endpoint, "spec.output.s3.endpoint"
        else:
            for name in (ENV_S3_ENDPOINT, ENV_S3_ENDPOINT_ANY_SERVICE):
                if env.get(name):
                    endpoint, source = env[name], f"{name} (from spec.output.s3.endpoint in a cluster)"
                    break
        if location is not None:
            region, path_style = location.region, location.path_style
        else:
            region = env.get(ENV_S3_REGION_ALT) or env.get(ENV_S3_REGION) or "us-east-1"
            # Without a spec to say so, a custom endpoint is most likely MinIO-like: path-style.
            path_style = endpoint is not None
        return cls(endpoint=endpoint, region=region, path_style=path_style, endpoint_source=source)

    @property
    def display_endpoint(self) -> str:
        """The endpoint as errors name it."""
        return self.endpoint or f"AWS S3 ({self.region})"


def env_number(name: str, default: float) -> float:
    """A number from the environment variable ``name``; ``default`` when unset or not a number (logged)."""
    raw = os.environ.get(name)
    try:
        return float(raw) if raw else default
    except ValueError:
        log.warning("%s=%r is not a number; using %s", name, raw, default)
        return default


def retry_seconds_from_env() -> float:
    """How long transfers keep retrying (FTJ_S3_RETRY_SECONDS, default 300)."""
    return env_number(RETRY_SECONDS_ENV, DEFAULT_RETRY_SECONDS)


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's content."""
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def file_entry(path: Path) -> FileEntry:
    """Size and sha256 of a local file."""
    return FileEntry(size=path.stat().st_size, sha256=sha256_file(path))


def relative_files(directory: Path) -> list[str]:
    """Every regular file under directory, as sorted POSIX paths relative to it."""
    return sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file())


# ---- classification of failures ----


def _error_code(err: BaseException) -> tuple[str, int | None, str]:
    from botocore.exceptions import ClientError

    if isinstance(err, ClientError):
        error = err.response.get("Error", {})
        status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return str(error.get("Code", "")), status, str(error.get("Message", "") or "")
    return "", None, ""


def _root_cause(err: BaseException) -> BaseException:
    """s3transfer wraps download failures in RetriesExceededError; look at what it wraps."""
    from s3transfer.exceptions import RetriesExceededError

    while isinstance(err, RetriesExceededError) and err.last_exception is not None:
        err = err.last_exception
    return err


def is_retryable(err: BaseException) -> bool:
    """Connection trouble, timeouts, throttling and 5xx answers (:func:`errors.classify`): worth another try.

    During a transfer, also a cut-off or corrupted body and any socket error but this pod's own disk's.
    """
    from botocore.exceptions import ChecksumError
    from s3transfer.exceptions import RetriesExceededError

    if isinstance(err, ChecksumMismatch | RetriesExceededError):
        return True
    err = _root_cause(err)
    if isinstance(err, ChecksumError | OSError) and not _is_local_file_problem(err):
        return True
    return classify(err).retryable


def _is_local_file_problem(err: BaseException) -> bool:
    """Errors of this pod's disk (a vanished file, a full disk): waiting does not fix them."""
    local = FileNotFoundError | PermissionError | IsADirectoryError | NotADirectoryError
    return isinstance(err, local) or (isinstance(err, OSError) and err.errno == errno.ENOSPC)


class ChecksumMismatch(Exception):
    """A downloaded file's sha256 differs from the manifest's (retried: the download may have been cut)."""


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
        from botocore.exceptions import (
            ConnectionError,
            ConnectTimeoutError,
            EndpointConnectionError,
            NoCredentialsError,
            PartialCredentialsError,
        )

        if isinstance(err, StorageError):
            return err
        err = _root_cause(err)
        endpoint = self.settings.display_endpoint
        code, status, message = _error_code(err)
        if isinstance(err, NoCredentialsError | PartialCredentialsError):
            return S3CredentialsError(
                f"no S3 credentials to {action} {uri}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY; "
                f"{self.context.credentials_hint}"
            )
        if code in CREDENTIAL_CODES:
            return S3CredentialsError(
                f"the S3 credentials were refused by {endpoint} ({code}) trying to {action} {uri}: "
                f"{self.context.credentials_hint}"
            )
        if code in MISSING_BUCKET_CODES:
            return S3BucketMissingError(
                f"bucket {uri.bucket!r} does not exist at {endpoint}: create it, or fix {self.context.bucket_field}"
            )
        if code in DENIED_CODES:
            return S3AccessDeniedError(
                f"access denied trying to {action} {uri} at {endpoint} ({code}): the credentials are not allowed "
                f"this on bucket {uri.bucket!r}; grant them access, or {self.context.credentials_hint}"
            )
        if code in MISSING_KEY_CODES or status == 404:
            return S3NotFoundError(f"{uri} does not exist at {endpoint}: check {self.context.bucket_field}")
        if isinstance(err, EndpointConnectionError | ConnectTimeoutError | ConnectionError):
            return S3EndpointError(
                f"cannot reach the S3 endpoint {endpoint} to {action} {uri} (retried for {self.retry_seconds:.0f} s): "
                f"{err}; check {self.settings.endpoint_source} and that the store is up"
            )
        if is_retryable(err):
            answer = f"{code} (HTTP {status}) {message}".strip() if code else f"{type(err).__name__}: {err}"
            return S3UnavailableError(
                f"S3 at {endpoint} kept failing to {action} {uri} (retried for {self.retry_seconds:.0f} s): {answer}"
            )
        if code:
            return StorageError(f"S3 refused to {action} {uri} at {endpoint}: {code} (HTTP {status}) {message}")
        return StorageError(f"could not {action} {uri} at {endpoint}: {type(err).__name__}: {err}")

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
        body = (json.dumps(data, indent=2, sort_keys=True) + "\n").encode()
        self._retrying(
            "write",
            uri,
            lambda: self.client.put_object(Bucket=uri.bucket, Key=uri.key, Body=body, ContentType="application/json"),
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
                code, status, _ = _error_code(err)
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
                code, status, _ = _error_code(err)
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


# ---- s3:// models and datasets: a local cache ----


def cache_dir() -> Path:
    """Where s3:// inputs are cached: FTJ_S3_CACHE_DIR, else beside HF_HOME (<HF_HOME>/../s3), else ~/.cache."""
    if os.environ.get(CACHE_DIR_ENV):
        return Path(os.environ[CACHE_DIR_ENV]).expanduser()
    if os.environ.get(ENV_HF_HOME):
        return Path(os.environ[ENV_HF_HOME]).expanduser().parent / "s3"
    return Path("~/.cache/finetune-trainer/s3").expanduser()


@contextlib.contextmanager
def _cache_lock(path: Path) -> Iterator[None]:
    """One process downloads an input; the other ranks on the node wait, then reuse it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def _naming_field(field: str) -> Iterator[None]:
    """Start every storage error of an input with the spec field it came from."""
    try:
        yield
    except StorageError as err:
        if str(err).startswith(f"{field}: "):
            raise
        renamed = type(err)(f"{field}: {err}")
        raise renamed.with_traceback(err.__traceback__) from err.__cause__


def _cache_slot(uri: S3Uri, endpoint: str | None) -> Path:
    digest = hashlib.sha256(f"{endpoint or ''}|{uri}".encode()).hexdigest()[:16]
    return cache_dir() / digest


def _sync_into_cache(
    storage: S3Storage, objects: list[ObjectInfo], base_key: str, target: Path, record: Path, uri: S3Uri
) -> None:
    """Download the objects whose ETag differs from the record of the last download into target."""
    try:
        known = json.loads(record.read_text()) if record.is_file() else {}
    except (OSError, ValueError):
        known = {}
    wanted = {o.key[len(base_key) :]: o for o in objects}
    stale = [
        (rel, o)
        for rel, o in wanted.items()
        if known.get(rel) != o.etag or not (target / rel).is_file() or (target / rel).stat().st_size != o.size
    ]
    if stale:
        log.info("downloading %d of %d files of %s into %s", len(stale), len(wanted), uri, target)
        storage.download_files([(S3Uri(uri.bucket, o.key), target / rel) for rel, o in stale])
    record.write_text(json.dumps({rel: o.etag for rel, o in wanted.items()}, sort_keys=True))


def fetch_file(uri: str, *, field: str, location: S3Location | None = None) -> Path:
    """A local copy of the object at an s3:// URI (a dataset file), downloaded once per ETag.

    ``field`` names the spec setting in errors (``dataset.files.train``); ``location`` gives the
    connection settings of spec.output.s3 (the environment's when None).
    """
    parsed = S3Uri.parse(uri, field)
    if not parsed.key or parsed.key.endswith("/"):
        raise S3LocationError(f"{field}: {uri} names a prefix, not a file; give the URI of one data file")
    storage = S3Storage.for_location(location, input_context(field))
    slot = _cache_slot(parsed, storage.settings.endpoint)
    with _naming_field(field), _cache_lock(slot.with_suffix(".lock")):
        objects = [o for o in storage.list_objects(parsed) if o.key == parsed.key]
        if not objects:
            raise S3NotFoundError(
                f"{field}: {uri} does not exist at {storage.settings.display_endpoint}; check the bucket and key"
            )
        name = parsed.key.rsplit("/", 1)[-1]
        _sync_into_cache(storage, objects, parsed.key[: -len(name)], slot / "files", slot / "etags.json", parsed)
        return slot / "files" / name


def fetch_directory(uri: str, *, field: str, location: S3Location | None = None) -> Path:
    """A local copy of every object under an s3:// prefix (a saved model), refreshed when ETags change."""
    parsed = S3Uri.parse(uri, field).as_prefix()
    storage = S3Storage.for_location(location, input_context(field))
    slot = _cache_slot(parsed, storage.settings.endpoint)
    with _naming_field(field), _cache_lock(slot.with_suffix(".lock")):
        objects = [o for o in storage.list_objects(parsed) if not o.key.endswith("/")]
        if not objects:
            raise S3NotFoundError(
                f"{field}: no objects under {parsed} at {storage.settings.display_endpoint}; give the prefix of a "
                "saved model directory (config.json, weights, tokenizer files)"
            )
        _sync_into_cache(storage, objects, parsed.key, slot / "files", slot / "etags.json", parsed)
        return slot / "files"
