"""Every failure is permanent, retryable or unexpected: ``errors.classify`` over the exceptions the libraries raise.

The exceptions are the libraries' own: raised by their clients against a closed port on 127.0.0.1, produced
by the hub client's status handling from real HTTP responses, or constructed as the libraries construct them
and chained the way transformers and datasets wrap them.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from finetune_api import contract
from finetune_trainer.errors import (
    ConfigError,
    DataError,
    RetryableError,
    TrainerError,
    classify,
    retry_transient,
)
from finetune_trainer.launch import exit_code_for
from finetune_trainer.s3_errors import S3CredentialsError, S3EndpointError, S3UnavailableError, StorageError
from finetune_trainer.s3_types import S3Settings, S3Uri
from finetune_trainer.storage import S3Storage


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def raised(fn: Callable[[], Any]) -> BaseException:
    """The exception fn raises (with the chain its library built)."""
    try:
        fn()
    except BaseException as err:
        return err
    raise AssertionError("expected an exception")


def wrapped(outer: BaseException, inner: BaseException) -> BaseException:
    """``outer`` raised ``from inner``, as libraries wrap errors."""
    try:
        try:
            raise inner
        except BaseException as err:
            raise outer from err
    except BaseException as err:
        return err


def client_error(code: str, status: int) -> BaseException:
    from botocore.exceptions import ClientError

    return ClientError({"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "Op")


def hub_error(status: int, headers: dict[str, str] | None = None) -> BaseException:
    """What huggingface_hub raises for an HTTP answer (its own status handling on a real response)."""
    import httpx2
    from huggingface_hub.utils import hf_raise_for_status

    request = httpx2.Request("GET", "https://huggingface.co/api/models/someone/model")
    return raised(lambda: hf_raise_for_status(httpx2.Response(status, headers=headers or {}, request=request)))


# ---- network failures from the real clients ----


def test_connection_refused_by_requests_is_retryable() -> None:
    import requests

    err = raised(lambda: requests.get(f"http://127.0.0.1:{closed_port()}/", timeout=2))
    assert classify(err).kind == "retryable"


def test_connection_refused_by_urllib3_is_retryable() -> None:
    import urllib3

    pool = urllib3.PoolManager(retries=urllib3.Retry(total=0))
    err = raised(lambda: pool.request("GET", f"http://127.0.0.1:{closed_port()}/"))
    assert type(err).__name__ == "MaxRetryError"
    assert classify(err).kind == "retryable"


def test_connection_refused_by_the_hub_client_is_retryable() -> None:
    import httpx2

    err = raised(lambda: httpx2.get(f"http://127.0.0.1:{closed_port()}/"))
    failure = classify(err)
    assert failure.kind == "retryable" and "network" in failure.reason


def test_an_unreachable_s3_endpoint_is_retryable() -> None:
    import boto3
    from botocore.config import Config

    client = boto3.session.Session(aws_access_key_id="a", aws_secret_access_key="b").client(
        "s3",
        endpoint_url=f"http://127.0.0.1:{closed_port()}",
        region_name="us-east-1",
        config=Config(retries={"max_attempts": 1}, connect_timeout=2),
    )
    err = raised(lambda: client.list_objects_v2(Bucket="b"))
    assert type(err).__name__ == "EndpointConnectionError"
    assert classify(err).kind == "retryable"


def test_socket_level_failures_are_retryable() -> None:
    err = raised(lambda: socket.create_connection(("127.0.0.1", closed_port()), timeout=2))
    assert isinstance(err, ConnectionRefusedError)
    assert classify(err).kind == "retryable"
    assert classify(TimeoutError("timed out")).kind == "retryable"
    assert classify(socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")).kind == "retryable"


# ---- S3 answers ----


@pytest.mark.parametrize(
    ("code", "status"),
    [("SlowDown", 503), ("InternalError", 500), ("ServiceUnavailable", 503), ("TooManyRequests", 429)],
)
def test_s3_throttling_and_server_errors_are_retryable(code: str, status: int) -> None:
    failure = classify(client_error(code, status))
    assert failure.kind == "retryable" and code in failure.reason


@pytest.mark.parametrize(
    ("code", "status"),
    [("InvalidAccessKeyId", 403), ("SignatureDoesNotMatch", 403), ("AccessDenied", 403), ("NoSuchBucket", 404)],
)
def test_refused_credentials_and_missing_buckets_are_permanent(code: str, status: int) -> None:
    assert classify(client_error(code, status)).kind == "permanent"


def test_missing_s3_credentials_are_permanent() -> None:
    from botocore.exceptions import NoCredentialsError

    assert classify(NoCredentialsError()).kind == "permanent"


def test_the_storage_errors_exit_with_the_code_of_their_class() -> None:
    storage = S3Storage(settings=S3Settings(endpoint="http://127.0.0.1:9"), retry_seconds=3)
    uri = S3Uri("bucket", "key")
    unavailable = storage.error(client_error("SlowDown", 503), uri, "read")
    assert isinstance(unavailable, S3UnavailableError) and unavailable.exit_code == contract.EXIT_RETRYABLE
    assert "SlowDown" in str(unavailable) and "retried for 3 s" in str(unavailable)
    refused = storage.error(client_error("InvalidAccessKeyId", 403), uri, "read")
    assert isinstance(refused, S3CredentialsError) and refused.exit_code == contract.EXIT_CONFIG
    assert S3EndpointError("x").exit_code == contract.EXIT_RETRYABLE
    # A storage error nobody classified is decided by the error it wraps.
    assert classify(wrapped(StorageError("could not read"), client_error("InternalError", 500))).retryable


# ---- the hub ----


def test_hub_server_errors_and_throttling_are_retryable() -> None:
    for status in (500, 502, 503, 429):
        err = hub_error(status)
        assert type(err).__name__ == "HfHubHTTPError"
        assert classify(err).kind == "retryable", status


def test_a_gated_model_without_a_token_is_permanent() -> None:
    err = hub_error(403, {"X-Error-Code": "GatedRepo"})
    assert type(err).__name__ == "GatedRepoError"
    failure = classify(err)
    assert failure.kind == "permanent" and "token" in failure.reason


def test_a_missing_repository_or_revision_is_permanent() -> None:
    assert type(missing := hub_error(404, {"X-Error-Code": "RepoNotFound"})).__name__ == "RepositoryNotFoundError"
    assert classify(missing).kind == "permanent"
    assert classify(hub_error(404, {"X-Error-Code": "RevisionNotFound"})).kind == "permanent"
    assert classify(hub_error(401, {"X-Error-Message": "Invalid credentials in Authorization header"})).kind == (
        "permanent"
    )


def test_transformers_could_not_connect_is_retryable_through_its_cause() -> None:
    import httpx2
    from huggingface_hub.errors import LocalEntryNotFoundError

    # What AutoConfig.from_pretrained raises when the hub refuses the connection (three links deep).
    connect = raised(lambda: httpx2.get(f"http://127.0.0.1:{closed_port()}/"))
    not_cached = wrapped(LocalEntryNotFoundError("cannot find the requested files in the local cache"), connect)
    outer = wrapped(OSError("We couldn't connect to 'https://huggingface.co' to load the files"), not_cached)
    assert classify(outer).kind == "retryable"


def test_offline_mode_without_a_cached_copy_is_permanent() -> None:
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

    offline = wrapped(LocalEntryNotFoundError("not cached"), OfflineModeIsEnabled("HF_HUB_OFFLINE=1"))
    assert classify(wrapped(OSError("couldn't find them in the cached files"), offline)).kind == "permanent"


def test_datasets_errors() -> None:
    from datasets.exceptions import DataFilesNotFoundError, DatasetNotFoundError

    assert classify(DatasetNotFoundError("Dataset 'someone/x' doesn't exist on the Hub")).kind == "permanent"
    assert classify(DataFilesNotFoundError("No (supported) data files found")).kind == "permanent"
    # datasets reports an unreachable hub as the builtin ConnectionError, over a "not cached" FileNotFoundError.
    unreachable = wrapped(
        ConnectionError("Couldn't reach 'someone/x' on the Hub (LocalEntryNotFoundError)"),
        FileNotFoundError("Dataset someone/x is not cached"),
    )
    assert classify(unreachable).kind == "retryable"


# ---- ours, and the rest ----


def test_the_trainer_errors_keep_their_kind() -> None:
    assert classify(DataError("dataset.files.train has no column 'text'")).kind == "permanent"
    assert classify(ConfigError("model.name: ...")).kind == "permanent"
    assert classify(RetryableError("S3 down")).kind == "retryable"
    # A permanent error that wraps a network error stays permanent: the outermost verdict wins.
    assert classify(wrapped(DataError("bad file"), ConnectionResetError())).kind == "permanent"


def test_a_lost_peer_process_is_retryable() -> None:
    torch_distributed = pytest.importorskip("torch.distributed")
    from torch.distributed.elastic.rendezvous.api import RendezvousTimeoutError

    assert classify(torch_distributed.DistNetworkError("Connection reset by peer")).kind == "retryable"
    assert classify(RendezvousTimeoutError("the other nodes did not join in time")).kind == "retryable"


def test_a_collective_whose_peer_died_is_retryable_and_exits_75() -> None:
    """gloo raises a plain RuntimeError when the other pod is killed mid all-reduce (seen on the real node)."""
    gloo = RuntimeError(
        "[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:561] Connection closed by peer "
        "[127.0.0.1]:48037. This is typically caused by a remote worker crashing."
    )
    failure = classify(gloo)
    assert failure.kind == "retryable" and failure.exit_code == contract.EXIT_RETRYABLE
    assert "lost contact with the other trainer processes" in failure.reason
    # Any other RuntimeError (a shape mismatch, a CUDA assert) stays unexpected.
    assert classify(RuntimeError("mat1 and mat2 shapes cannot be multiplied")).kind == "unexpected"


def test_anything_else_is_unexpected_and_exits_1() -> None:
    for err in (KeyError("labels"), FileNotFoundError(2, "No such file"), TrainerError("?")):
        failure = classify(err)
        assert failure.kind == "unexpected" and failure.exit_code == contract.EXIT_FAILED


# ---- retrying ----


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def failing(times: int, err: Callable[[], BaseException]) -> Callable[[], str]:
    calls = {"n": 0}

    def fn() -> str:
        calls["n"] += 1
        if calls["n"] <= times:
            raise err()
        return "loaded"

    return fn


def test_a_transient_failure_is_retried_with_growing_waits() -> None:
    clock = FakeClock()
    result = retry_transient(
        "loading x", failing(3, ConnectionRefusedError), budget_seconds=60, sleep=clock.sleep, clock=lambda: clock.now
    )
    assert result == "loaded" and clock.sleeps == [1.0, 2.0, 4.0]


def test_retrying_stops_at_the_budget_with_a_retryable_error_and_the_reason() -> None:
    clock = FakeClock()
    with pytest.raises(RetryableError, match=r"loading x failed 4 time\(s\) over 10 s; last: network:") as info:
        retry_transient(
            "loading x",
            failing(99, ConnectionRefusedError),
            budget_seconds=10,
            sleep=clock.sleep,
            clock=lambda: clock.now,
        )
    assert clock.sleeps == [1.0, 2.0, 4.0] and info.value.exit_code == contract.EXIT_RETRYABLE


def test_a_permanent_failure_is_not_retried() -> None:
    clock = FakeClock()
    with pytest.raises(DataError):
        retry_transient("loading x", failing(1, lambda: DataError("no column")), budget_seconds=60, sleep=clock.sleep)
    assert clock.sleeps == []


def test_the_pod_keeps_a_retryable_code_over_the_sigterm_torchrun_sends_the_other_workers() -> None:
    assert exit_code_for([-15, contract.EXIT_RETRYABLE]) == contract.EXIT_RETRYABLE
    assert exit_code_for([contract.EXIT_RETRYABLE, contract.EXIT_DATA]) == contract.EXIT_DATA
    assert exit_code_for([-9, 0]) == 137


def test_a_failed_run_leaves_its_reason_in_the_termination_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from finetune_trainer import cli, errors

    message = tmp_path / "termination-log"
    message.touch()  # the kubelet creates the file in the container
    monkeypatch.setattr(errors, "TERMINATION_MESSAGE_PATH", str(message))
    config = tmp_path / "job.yaml"
    config.write_text(
        "model: {path: /nowhere}\ntask: {type: sequence-classification, labels: [a, b]}\n"
        "dataset: {files: {train: /nowhere/train.csv}}\n"
    )

    assert cli.main(["validate", "--config", str(config)]) == contract.EXIT_DATA
    assert message.read_text().startswith("data error: dataset.files.train: no such file /nowhere/train.csv")


def test_outside_a_pod_no_termination_message_is_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from finetune_trainer import errors

    monkeypatch.setattr(errors, "TERMINATION_MESSAGE_PATH", str(tmp_path / "absent"))
    errors.write_termination_message("retryable error: x")
    assert not (tmp_path / "absent").exists()
