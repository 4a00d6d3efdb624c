"""One LoRA run of the tiny BERT with S3 output and its status on the local API server, shared by the S3 tests and
the kubectl finetune tests (session-scoped: it trains once per test session)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from finetune_api.spec import FineTuneJobSpec
from finetune_api.validation import parse_spec
from finetune_trainer import engine
from finetune_trainer.checkpoint_store import S3CheckpointStore
from finetune_trainer.job_location import JobLocation
from finetune_trainer.s3_types import S3Uri
from finetune_trainer.storage import S3Storage
from tests.cluster.fixture import Kube, MinIO
from tests.integration.operator_process import install_crds
from tests.storage.trainer_runs import s3_output, sentiment_spec, wait_for


def store_for(spec: dict[str, Any], environ: dict[str, str] | None = None) -> S3CheckpointStore:
    parsed = parse_spec(spec)
    return S3CheckpointStore(S3Storage.for_location(parsed.output.s3), JobLocation.from_spec(parsed, environ or {}))


@dataclass
class FullRun:
    spec: FineTuneJobSpec
    result: engine.RunResult
    store: S3CheckpointStore
    status: dict[str, Any]
    tmp: Path
    namespace: str
    name: str = "bert-s3"


@pytest.fixture(scope="session")
def full_run(
    minio: MinIO,
    kube: Kube,
    tiny_bert: Path,
    sentiment_files: dict[str, Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[FullRun]:
    """A 12-step LoRA run checkpointing every 3 steps (keep 2), merged model on, as job ftj/<ns>/bert-s3.

    The job names its S3 credentials Secret (s3-creds, created here), as a job the operator runs does.
    """
    install_crds(kube)
    tmp = tmp_path_factory.mktemp("full-run")
    namespace = f"test-{uuid.uuid4().hex[:8]}"
    bucket = f"ftj-{uuid.uuid4().hex[:10]}"
    minio.client().create_bucket(Bucket=bucket)
    spec = sentiment_spec(
        tiny_bert,
        sentiment_files,
        s3_output(minio.endpoint, bucket, saveMergedModel=True),
        maxSteps=12,
        evalStrategy="steps",
        evalSteps=3,
        saveStrategy="steps",
        saveSteps=3,
        saveTotalLimit=2,
    )
    spec["output"]["s3"]["credentialsSecretRef"] = {"name": "s3-creds"}
    kube.kubectl("create", "namespace", namespace)
    kube.kubectl(
        "create",
        "secret",
        "generic",
        "s3-creds",
        "-n",
        namespace,
        f"--from-literal=AWS_ACCESS_KEY_ID={minio.access_key}",
        f"--from-literal=AWS_SECRET_ACCESS_KEY={minio.secret_key}",
    )
    kube.kubectl(
        "apply",
        "-n",
        namespace,
        "-f",
        "-",
        input={
            "apiVersion": "finetune.dev/v1alpha1",
            "kind": "FineTuneJob",
            "metadata": {"name": "bert-s3"},
            "spec": spec,
        },
    )
    env = {
        "AWS_ACCESS_KEY_ID": minio.access_key,
        "AWS_SECRET_ACCESS_KEY": minio.secret_key,
        "FTJ_NAME": "bert-s3",
        "FTJ_NAMESPACE": namespace,
        "FTJ_STATUS_INTERVAL": "0",
        "KUBECONFIG": str(kube.kubeconfig),
    }

    def status_with_model() -> dict[str, Any] | None:
        status = kube.kubectl_json("get", "finetunejob", "bert-s3", "-n", namespace).get("status", {})
        return status if status.get("artifacts", {}).get("model") else None

    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        result = engine.train(parse_spec(spec), tmp / "out")
        status = wait_for("status.artifacts.model", status_with_model, timeout=30)
        run = FullRun(parse_spec(spec), result, store_for(spec, env), status, tmp, namespace)
        yield run
        kube.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
        run.store.storage.delete_prefix(S3Uri(bucket, ""))  # with the run's credentials, as it was written
        minio.client().delete_bucket(Bucket=bucket)
