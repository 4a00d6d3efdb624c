"""``python -m finetune_trainer preflight`` against real files and a real MinIO: each failure kind is a problem naming
its field, a store that is down is ``unreachable`` (retried by the operator), and a good job reports the model's
config fields the fit check needs without fetching the weights."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from finetune_api.preflight import PreflightResult
from finetune_api.spec import wire
from finetune_api.validation import parse_spec
from finetune_trainer.cli import main
from finetune_trainer.preflight import preflight
from tests.cluster.fixture import MinIO
from tests.storage.own_minio import OwnMinIO
from tests.trainer import tiny


def _spec(model: dict[str, Any], train: Path | str, s3: dict[str, Any] | None, labels: list[str] | None = None) -> Any:
    raw = tiny.spec_dict(
        Path("."),
        {"type": "sequence-classification", "labels": labels or ["neg", "pos"]},
        {"train": str(train)},
        evalStrategy="no",
        saveStrategy="no",
        loadBestModelAtEnd=False,
    )
    raw["model"] = model
    if s3 is not None:
        raw["output"] = {"s3": s3}
    return parse_spec(raw)


@pytest.fixture
def train(tmp_path: Path) -> Path:
    return tiny.write_jsonl(tmp_path / "train.jsonl", tiny.sentiment_rows(8))


def _objects(minio: MinIO, bucket: str) -> list[str]:
    return [o["Key"] for o in minio.client().list_objects_v2(Bucket=bucket).get("Contents", [])]


def test_a_good_job_passes_and_reports_the_model_shape(
    tiny_bert: Path, train: Path, minio: MinIO, bucket: str, s3_env: dict[str, str], tmp_path: Path, capsys: Any
) -> None:
    config = tmp_path / "job.yaml"
    spec = _spec({"path": str(tiny_bert)}, train, {"bucket": bucket, "endpoint": minio.endpoint, "pathStyle": True})
    config.write_text(json.dumps(wire(spec)))
    assert main(["preflight", "--config", str(config)]) == 0
    result = PreflightResult.decode(capsys.readouterr().out.strip().splitlines()[-1])
    assert result.ok, result
    shipped = json.loads((tiny_bert / "config.json").read_text())
    assert result.model_config["hidden_size"] == shipped["hidden_size"]
    assert result.model_config["model_type"] == "bert"
    assert "id2label" not in result.model_config
    assert result.checked[:2] == ["model config.json", "data (train 8 rows) and tokenizer"]
    assert result.checked[2].startswith(f"write to s3://{bucket}/")
    assert _objects(minio, bucket) == []  # the write probe is deleted again


def test_a_model_in_s3_is_checked_without_its_weights(
    tiny_bert: Path, train: Path, minio: MinIO, bucket: str, s3_env: dict[str, str], tmp_path: Path
) -> None:
    client = minio.client()
    for file in tiny_bert.iterdir():
        client.upload_file(str(file), bucket, f"model/{file.name}")
    # A weights file that cannot be read: fetching it would not be noticed, so make it unreadable by name.
    client.put_object(Bucket=bucket, Key="model/model.safetensors", Body=b"not weights")
    spec = _spec({"uri": f"s3://{bucket}/model/"}, train, {"bucket": bucket, "endpoint": minio.endpoint})
    result = preflight(spec)
    assert result.ok, result
    cache = Path(s3_env["FTJ_S3_CACHE_DIR"])
    assert not list(cache.rglob("*.safetensors")) if cache.exists() else True


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("missing-model", "model.path:"),
        ("missing-column", "Columns present: review, label"),
        ("unknown-label", "label 'neutral' is not in task.labels"),
        ("missing-bucket", "does not exist"),
        ("refused-credentials", "credentials were refused"),
    ],
)
def test_each_failure_kind_is_a_problem_naming_its_field(
    case: str,
    expected: str,
    tiny_bert: Path,
    tmp_path: Path,
    minio: MinIO,
    bucket: str,
    s3_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model: dict[str, Any] = {"path": str(tiny_bert)}
    rows = tiny.sentiment_rows(6)
    s3 = {"bucket": bucket, "endpoint": minio.endpoint}
    if case == "missing-model":
        model = {"path": str(tmp_path / "nothing")}
    elif case == "missing-column":
        rows = [{"review": r["text"], "label": r["label"]} for r in rows]
    elif case == "unknown-label":
        rows = [*rows, {"text": "meh", "label": "neutral"}]
    elif case == "missing-bucket":
        s3["bucket"] = "no-such-bucket"
    else:
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    train = tiny.write_jsonl(tmp_path / "train.jsonl", rows)
    result = preflight(_spec(model, train, s3))
    assert result.unreachable is None
    assert len(result.problems) == 1, result.problems
    assert expected in result.problems[0]


def test_a_store_that_is_down_is_unreachable_not_a_problem(
    tiny_bert: Path, train: Path, own_minio: OwnMinIO, s3_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    own_minio.client().create_bucket(Bucket="out")
    spec = _spec({"path": str(tiny_bert)}, train, {"bucket": "out", "endpoint": own_minio.endpoint})
    monkeypatch.setenv("FTJ_S3_RETRY_SECONDS", "2")
    own_minio.kill()
    down = preflight(spec)
    assert down.problems == []
    assert down.unreachable is not None and own_minio.endpoint.split("//")[1] in down.unreachable
    own_minio.start()
    assert preflight(spec).ok
