"""Errors the trainer reports, which of them a retry can cure, and the exit codes the Job reads.

The codes and their meaning are part of the operator/trainer contract
(:mod:`finetune_api.contract`): 3 (spec) and 4 (data) are permanent, retrying the same spec on
the same data cannot succeed, so the Job fails at once instead of burning its backoff budget;
75 (retryable) is a transient failure - the network, a timeout, a 5xx answer, throttling, a lost
node, preemption - that outlasted the in-process retries, and the Job runs the pod again.

:func:`classify` is the one place that decides, from an exception and the exceptions it wraps,
whether a failure is permanent, retryable or unexpected (a bug: exit 1). :func:`retry_transient`
retries an action in-process, with exponential backoff, while it fails for a retryable reason.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar

from finetune_api.contract import (
    EXIT_CONFIG,
    EXIT_DATA,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_RETRYABLE,
    PERMANENT_EXIT_CODES,
    TERMINATION_MESSAGE_LIMIT,
    TERMINATION_MESSAGE_PATH,
)

__all__ = [
    "EXIT_CONFIG",
    "EXIT_DATA",
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_RETRYABLE",
    "PERMANENT_EXIT_CODES",
    "ConfigError",
    "DataError",
    "Failure",
    "RetryableError",
    "TrainerError",
    "classify",
    "retry_transient",
    "write_termination_message",
]

log = logging.getLogger(__name__)
T = TypeVar("T")


class TrainerError(Exception):
    """Base of the errors the trainer turns into a clear message and an exit code."""

    exit_code = EXIT_FAILED


class ConfigError(TrainerError):
    """The spec cannot run (names the field and the fix)."""

    exit_code = EXIT_CONFIG


class DataError(TrainerError):
    """The dataset does not fit the task (names the file or column and the fix)."""

    exit_code = EXIT_DATA


class RetryableError(TrainerError):
    """A transient failure outlasted the in-process retries (names what failed and why); the Job retries the pod."""

    exit_code = EXIT_RETRYABLE


# ---- classification ----

Kind = Literal["permanent", "retryable", "unexpected"]

# HTTP answers worth another try: timeouts, throttling, and the server's own trouble.
RETRYABLE_STATUS = frozenset({408, 425, 429})
# Socket errors of a network that may come back.
RETRYABLE_ERRNOS = frozenset(
    {
        errno.ECONNREFUSED,
        errno.ECONNRESET,
        errno.ECONNABORTED,
        errno.ETIMEDOUT,
        errno.EHOSTUNREACH,
        errno.ENETUNREACH,
        errno.ENETDOWN,
        errno.EPIPE,
        errno.EAGAIN,
    }
)
# S3 error codes that mean "later" (throttling, a store starting or losing quorum).
RETRYABLE_S3_CODES = frozenset(
    {
        "SlowDown",
        "RequestTimeout",
        "RequestTimeoutException",
        "InternalError",
        "ServiceUnavailable",
        "Throttling",
        "ThrottlingException",
        "XMinioServerNotInitialized",
        "XMinioStorageNotReady",
        "XMinioReadQuorum",
        "XMinioWriteQuorum",
    }
)

# torch.distributed errors of a peer that went away or never came (a node lost, a pod not yet scheduled).
PEER_ERRORS = frozenset(
    {
        "DistNetworkError",
        "DistStoreError",
        "RendezvousTimeoutError",
        "RendezvousClosedError",
        "RendezvousConnectionError",
    }
)


@dataclass(frozen=True)
class Failure:
    """What :func:`classify` says about an exception: its kind and a one-line reason."""

    kind: Kind
    reason: str

    @property
    def retryable(self) -> bool:
        """A retry (in-process, or of the pod) may succeed."""
        return self.kind == "retryable"

    @property
    def exit_code(self) -> int:
        """The exit code this failure ends the trainer with when nothing more specific applies."""
        return {"permanent": EXIT_CONFIG, "retryable": EXIT_RETRYABLE, "unexpected": EXIT_FAILED}[self.kind]


def classify(err: BaseException) -> Failure:
    """Permanent, retryable or unexpected, with the reason, from an exception and the chain it wraps.

    The outermost exception that says something decides: libraries wrap a network error in a
    generic ``OSError`` ("couldn't connect"), so a link that says nothing passes to its cause.
    """
    for link in _chain(err):
        failure = _verdict(link)
        if failure is not None:
            return failure
    return Failure("unexpected", _describe(err))


def _chain(err: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    link: BaseException | None = err
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        yield link
        link = link.__cause__ or link.__context__


def _describe(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _verdict(err: BaseException) -> Failure | None:
    """The verdict of one exception by itself, or None when it leaves the question to its cause."""
    for check in (_trainer_verdict, _library_verdict, _http_verdict, _builtin_verdict):
        failure = check(err)
        if failure is not None:
            return failure
    return None


def _trainer_verdict(err: BaseException) -> Failure | None:
    if isinstance(err, TrainerError):
        if err.exit_code == EXIT_RETRYABLE:
            return Failure("retryable", str(err))
        if err.exit_code in PERMANENT_EXIT_CODES:
            return Failure("permanent", str(err))
    return None  # other trainer errors (exit 1) are decided by what they wrap


def _module_of(err: BaseException) -> str:
    return type(err).__module__.split(".", 1)[0]


def _library_verdict(err: BaseException) -> Failure | None:
    """botocore, huggingface_hub and datasets errors, by type (their modules are imported only when seen)."""
    module = _module_of(err)
    if module == "botocore":
        return _botocore_verdict(err)
    if module == "huggingface_hub":
        return _hub_verdict(err)
    if module == "datasets":
        from datasets.exceptions import DataFilesNotFoundError, DatasetNotFoundError

        if isinstance(err, DatasetNotFoundError | DataFilesNotFoundError):
            return Failure("permanent", _describe(err))
    if module == "torch" and type(err).__name__ in PEER_ERRORS:
        return Failure("retryable", f"lost contact with the other trainer processes: {_describe(err)}")
    return None


def _botocore_verdict(err: BaseException) -> Failure | None:
    from botocore.exceptions import (
        ClientError,
        ConnectionClosedError,
        ConnectionError,
        EndpointConnectionError,
        HTTPClientError,
        IncompleteReadError,
        NoCredentialsError,
        PartialCredentialsError,
        ReadTimeoutError,
        ResponseStreamingError,
    )

    if isinstance(err, NoCredentialsError | PartialCredentialsError):
        return Failure("permanent", f"no S3 credentials: {_describe(err)}")
    if isinstance(err, ClientError):
        code = str(err.response.get("Error", {}).get("Code", ""))
        status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        reason = f"S3 answered {code or 'an error'}" + (f" (HTTP {status})" if status else "")
        if code in RETRYABLE_S3_CODES or (isinstance(status, int) and _retryable_status(status)):
            return Failure("retryable", reason)
        return Failure("permanent", reason)
    if isinstance(
        err,
        EndpointConnectionError
        | ConnectionError
        | ConnectionClosedError
        | ReadTimeoutError
        | HTTPClientError
        | IncompleteReadError
        | ResponseStreamingError,
    ):
        return Failure("retryable", f"S3 connection: {_describe(err)}")
    return None


def _hub_verdict(err: BaseException) -> Failure | None:
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if isinstance(err, OfflineModeIsEnabled):
        return Failure("permanent", f"the hub is off (HF_HUB_OFFLINE) and the files are not cached: {_describe(err)}")
    if isinstance(err, GatedRepoError):
        return Failure("permanent", f"gated repository: a token with access is needed ({_describe(err)})")
    if isinstance(err, RepositoryNotFoundError | RevisionNotFoundError):
        return Failure("permanent", _describe(err))
    if isinstance(err, LocalEntryNotFoundError):
        return None  # not cached, and the hub was not reached: the cause says why
    if isinstance(err, HfHubHTTPError):
        status = err.response.status_code if err.response is not None else None
        if status is not None:
            kind: Kind = "retryable" if _retryable_status(status) else "permanent"
            return Failure(kind, f"the hub answered HTTP {status}: {_describe(err)}")
    if isinstance(err, EntryNotFoundError):
        return Failure("permanent", _describe(err))
    return None


def _retryable_status(status: int) -> bool:
    return status >= 500 or status in RETRYABLE_STATUS


def _http_verdict(err: BaseException) -> Failure | None:
    """requests, urllib3 and httpx (the hub client's) errors: transport trouble, or an HTTP status."""
    module = _module_of(err)
    response = getattr(err, "response", None)
    status = getattr(response, "status_code", None)
    if module in ("requests", "httpx", "httpx2") and isinstance(status, int):
        kind: Kind = "retryable" if _retryable_status(status) else "permanent"
        return Failure(kind, f"HTTP {status}: {_describe(err)}")
    if module == "requests":
        from requests.exceptions import ChunkedEncodingError, ConnectionError, Timeout

        if isinstance(err, ConnectionError | Timeout | ChunkedEncodingError):
            return Failure("retryable", f"network: {_describe(err)}")
    elif module == "urllib3":
        from urllib3.exceptions import MaxRetryError, NewConnectionError, ProtocolError
        from urllib3.exceptions import TimeoutError as Urllib3Timeout

        if isinstance(err, MaxRetryError) and isinstance(err.reason, BaseException):
            return classify(err.reason)
        if isinstance(err, MaxRetryError | NewConnectionError | ProtocolError | Urllib3Timeout):
            return Failure("retryable", f"network: {_describe(err)}")
    elif module in ("httpx", "httpx2"):
        import importlib

        httpx = importlib.import_module(module)
        if isinstance(err, httpx.UnsupportedProtocol):
            return Failure("permanent", _describe(err))
        if isinstance(err, httpx.TransportError):
            return Failure("retryable", f"network: {_describe(err)}")
    return None


# What a collective raises, as a plain RuntimeError, when a peer process died or its link broke: gloo's
# TCP transport ("[.../gloo/transport/tcp/pair.cc:561] Connection closed by peer [10.0.0.7]:48037") and
# NCCL's "remote process exited or there was a network error". The restarted pods resume from S3.
PEER_LOST_MARKERS = (
    "Connection closed by peer",
    "Connection reset by peer",
    "remote process exited or there was a network error",
)


def _builtin_verdict(err: BaseException) -> Failure | None:
    if isinstance(err, RuntimeError) and any(marker in str(err) for marker in PEER_LOST_MARKERS):
        return Failure("retryable", f"lost contact with the other trainer processes: {_describe(err)}")
    if isinstance(err, TimeoutError):
        return Failure("retryable", f"timed out: {_describe(err)}")
    if isinstance(err, ConnectionError):
        return Failure("retryable", f"network: {_describe(err)}")
    if isinstance(err, OSError) and err.errno in RETRYABLE_ERRNOS:
        return Failure("retryable", f"network: {_describe(err)}")
    if isinstance(err, socket.gaierror) and err.errno == socket.EAI_AGAIN:
        return Failure("retryable", f"name lookup failed for now: {_describe(err)}")
    return None


# ---- retrying ----


def retry_transient(
    action: str,
    fn: Callable[[], T],
    *,
    budget_seconds: float,
    first_delay: float = 1.0,
    max_delay: float = 30.0,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> T:
    """``fn()``, tried again with exponential backoff while it fails for a retryable reason.

    Gives up when the next wait would pass ``budget_seconds``: a permanent or unexpected failure is
    raised as it is, a retryable one as :class:`RetryableError` naming ``action``, the attempts and
    the reason.
    """
    deadline = clock() + budget_seconds
    delay, attempt = first_delay, 1
    while True:
        try:
            return fn()
        except Exception as err:
            failure = classify(err)
            if not failure.retryable:
                raise
            if clock() + delay > deadline:
                raise RetryableError(
                    f"{action} failed {attempt} time(s) over {budget_seconds:.0f} s; last: {failure.reason}"
                ) from err
            log.warning("%s failed (attempt %d: %s); retrying in %.0f s", action, attempt, failure.reason, delay)
            sleep(delay)
            delay, attempt = min(delay * 2, max_delay), attempt + 1


def write_termination_message(text: str) -> None:
    """Leave the failure's reason where the kubelet reads it (the pod's terminated state); no-op elsewhere."""
    message = Path(TERMINATION_MESSAGE_PATH)
    if message.is_file():  # the kubelet creates it in each container; outside one it is absent
        with contextlib.suppress(OSError):
            message.write_text(text[:TERMINATION_MESSAGE_LIMIT])
