"""What a person sees when the S3 output is misconfigured: ``finetune_trainer run`` stops before loading anything,
with one line naming the problem and the setting to fix, and the exit code the Job's failure policy reads."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest

from tests.cluster.fixture import MinIO
from tests.storage.trainer_runs import s3_output, sentiment_spec, trainer_argv, trainer_env, write_config

pytestmark = pytest.mark.cluster


def closed_port_endpoint() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


@pytest.mark.parametrize(
    ("case", "exit_code", "expected"),
    [
        (
            "wrong-secret",
            3,
            "the S3 credentials were refused by {endpoint} (SignatureDoesNotMatch) trying to list s3://{bucket}/runs/"
            "local/spec-",
        ),
        ("missing-bucket", 3, "bucket 'no-such-bucket-here' does not exist at {endpoint}: create it, or fix "),
        ("bad-endpoint", 75, "cannot reach the S3 endpoint {endpoint} to list s3://{bucket}/runs/local/spec-"),
    ],
)
def test_a_misconfigured_store_stops_the_run_with_the_reason(
    minio: MinIO,
    bucket: str,
    s3_env: dict[str, str],
    sentiment_files: dict[str, Path],
    tmp_path: Path,
    case: str,
    exit_code: int,
    expected: str,
) -> None:
    endpoint, target, env = minio.endpoint, bucket, dict(s3_env)
    if case == "wrong-secret":
        env["AWS_SECRET_ACCESS_KEY"] = "not-the-secret"
    elif case == "missing-bucket":
        target = "no-such-bucket-here"
    else:
        endpoint = closed_port_endpoint()
        env["FTJ_S3_RETRY_SECONDS"] = "2"
    # The model does not exist: the S3 check must come first.
    spec = sentiment_spec(tmp_path / "no-model", sentiment_files, s3_output(endpoint, target))
    config = write_config(tmp_path / "job.yaml", spec)

    done = subprocess.run(
        trainer_argv(config, tmp_path / "out"), env=trainer_env(env), capture_output=True, text=True, timeout=300
    )

    assert done.returncode == exit_code, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert expected.format(endpoint=endpoint, bucket=target) in done.stderr
    field = {
        "wrong-secret": "check the Secret named in spec.output.s3.credentialsSecretRef",
        "missing-bucket": "fix spec.output.s3.bucket",
        "bad-endpoint": "check spec.output.s3.endpoint",
    }[case]
    assert field in done.stderr
