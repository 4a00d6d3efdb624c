"""What went wrong with S3, and whether trying again can help.

Failures that cannot succeed by retrying (refused credentials, a missing bucket or object, an
unreachable endpoint) become errors naming the problem and the setting to fix; connection errors,
timeouts, 5xx answers and throttling are retryable (:func:`is_retryable`).
"""

from __future__ import annotations

import errno
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from finetune_trainer.errors import EXIT_CONFIG, EXIT_DATA, EXIT_RETRYABLE, TrainerError, classify

if TYPE_CHECKING:
    from finetune_trainer.s3_types import S3Uri

    pass

log = logging.getLogger(__name__)


# S3 error codes, by what a person has to do about them.
CREDENTIAL_CODES = frozenset(
    {"InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken", "InvalidSecurity"}
)
MISSING_BUCKET_CODES = frozenset({"NoSuchBucket"})
MISSING_KEY_CODES = frozenset({"NoSuchKey", "NotFound", "404"})
DENIED_CODES = frozenset({"AccessDenied", "Forbidden", "403", "AllAccessDisabled"})

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


# ---- classification of failures ----


def error_code(err: BaseException) -> tuple[str, int | None, str]:
    from botocore.exceptions import ClientError

    if isinstance(err, ClientError):
        error = err.response.get("Error", {})
        status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return str(error.get("Code", "")), status, str(error.get("Message", "") or "")
    return "", None, ""


def root_cause(err: BaseException) -> BaseException:
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
    err = root_cause(err)
    if isinstance(err, ChecksumError | OSError) and not _is_local_file_problem(err):
        return True
    return classify(err).retryable


def _is_local_file_problem(err: BaseException) -> bool:
    """Errors of this pod's disk (a vanished file, a full disk): waiting does not fix them."""
    local = FileNotFoundError | PermissionError | IsADirectoryError | NotADirectoryError
    return isinstance(err, local) or (isinstance(err, OSError) and err.errno == errno.ENOSPC)


class ChecksumMismatch(Exception):
    """A downloaded file's sha256 differs from the manifest's (retried: the download may have been cut)."""


def storage_error(
    err: BaseException,
    uri: S3Uri,
    action: str,
    *,
    endpoint: str,
    endpoint_source: str,
    context: ErrorContext,
    retry_seconds: float,
) -> StorageError:
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
    err = root_cause(err)
    code, status, message = error_code(err)
    if isinstance(err, NoCredentialsError | PartialCredentialsError):
        return S3CredentialsError(
            f"no S3 credentials to {action} {uri}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY; "
            f"{context.credentials_hint}"
        )
    if code in CREDENTIAL_CODES:
        return S3CredentialsError(
            f"the S3 credentials were refused by {endpoint} ({code}) trying to {action} {uri}: "
            f"{context.credentials_hint}"
        )
    if code in MISSING_BUCKET_CODES:
        return S3BucketMissingError(
            f"bucket {uri.bucket!r} does not exist at {endpoint}: create it, or fix {context.bucket_field}"
        )
    if code in DENIED_CODES:
        return S3AccessDeniedError(
            f"access denied trying to {action} {uri} at {endpoint} ({code}): the credentials are not allowed "
            f"this on bucket {uri.bucket!r}; grant them access, or {context.credentials_hint}"
        )
    if code in MISSING_KEY_CODES or status == 404:
        return S3NotFoundError(f"{uri} does not exist at {endpoint}: check {context.bucket_field}")
    if isinstance(err, EndpointConnectionError | ConnectTimeoutError | ConnectionError):
        return S3EndpointError(
            f"cannot reach the S3 endpoint {endpoint} to {action} {uri} (retried for {retry_seconds:.0f} s): "
            f"{err}; check {endpoint_source} and that the store is up"
        )
    if is_retryable(err):
        answer = f"{code} (HTTP {status}) {message}".strip() if code else f"{type(err).__name__}: {err}"
        return S3UnavailableError(
            f"S3 at {endpoint} kept failing to {action} {uri} (retried for {retry_seconds:.0f} s): {answer}"
        )
    if code:
        return StorageError(f"S3 refused to {action} {uri} at {endpoint}: {code} (HTTP {status}) {message}")
    return StorageError(f"could not {action} {uri} at {endpoint}: {type(err).__name__}: {err}")
