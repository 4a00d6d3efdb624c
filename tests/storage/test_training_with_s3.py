"""Training runs of the tiny BERT with S3 output, in this process, against the local MinIO (and, for the status,
the local Kubernetes API server): checkpoints and final artifacts with manifests and checksums, pruning that keeps
the best, resume that skips incomplete checkpoints, refusal of an incompatible spec, an outage that costs one
checkpoint and not the run, and a model and dataset read from s3:// URIs."""

from __future__ import annotations

import json
import logging
import uuid
from pathlib import Path
from typing import Any

import pytest

from finetune_api.validation import parse_spec
from finetune_trainer import engine
from finetune_trainer.checkpoint_store import MANIFEST, S3CheckpointStore
from finetune_trainer.errors import ConfigError
from finetune_trainer.fingerprint import fingerprint, fingerprint_fields
from finetune_trainer.s3_output import FinalUploadError
from finetune_trainer.s3_types import S3Uri, relative_files
from finetune_trainer.storage import S3Storage
from tests.cluster.fixture import MinIO
from tests.storage.full_run import FullRun, store_for
from tests.storage.own_minio import OwnMinIO
from tests.storage.trainer_runs import s3_output, sentiment_spec, wait_for
from tests.trainer.tiny import StepCounter

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def assert_manifest_matches_s3(store: S3CheckpointStore, manifest: dict[str, Any], tmp_path: Path) -> None:
    """Every file of the manifest is in S3 at its size, and downloads with its sha256."""
    prefix = S3Uri.parse(manifest["uri"])
    sizes = {o.key[len(prefix.key) :]: o.size for o in store.storage.list_objects(prefix)}
    assert {n: f["size"] for n, f in manifest["files"].items()}.items() <= sizes.items()
    down = tmp_path / f"verify-{uuid.uuid4().hex[:6]}"
    store.download(manifest, down, ranks=None, skip=lambda _: False)  # raises on a sha256 mismatch
    assert relative_files(down) == sorted(manifest["files"])


# ---- one full run with checkpoints, final artifacts, the merged model and the status (tests/storage/full_run.py) ----


def test_every_checkpoint_in_s3_matches_its_manifest(full_run: FullRun) -> None:
    store = full_run.store
    complete = store.complete_steps()
    assert complete
    for step in complete:
        manifest = store.manifest(step)
        assert manifest is not None
        assert manifest["globalStep"] == step and manifest["worldSize"] == 1
        assert manifest["fingerprint"] == fingerprint(fingerprint_fields(full_run.spec))
        assert {"adapter_model.safetensors", "optimizer.pt", "scheduler.pt", "trainer_state.json"} <= set(
            manifest["files"]
        )
        assert_manifest_matches_s3(store, manifest, full_run.tmp)


def test_s3_keeps_the_checkpoints_the_trainer_keeps_the_best_among_them(full_run: FullRun) -> None:
    out = full_run.result.output_dir
    local = sorted(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*"))
    best = full_run.result.trainer.state.best_global_step
    assert len(local) == 2 and 12 in local and best in local
    assert full_run.store.complete_steps() == local
    assert full_run.store.steps() == local  # nothing incomplete left behind


def test_final_artifacts_and_the_merged_model_have_manifests(full_run: FullRun) -> None:
    store = full_run.store
    final = store.storage.read_json(store.location.final.join(MANIFEST))
    merged = store.storage.read_json(store.location.merged.join(MANIFEST))
    assert final["kind"] == "final" and merged["kind"] == "merged"
    assert final["metrics"] == full_run.result.metrics and final["globalStep"] == 12
    assert {
        "adapter_model.safetensors",
        "adapter_config.json",
        "tokenizer.json",
        "metrics.json",
        "trainer_state.json",
        "spec.resolved.yaml",
        "README.md",
    } <= set(final["files"])
    assert not any(n.startswith(("checkpoint-", ".s3", "merged")) for n in final["files"])
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= set(merged["files"])
    assert_manifest_matches_s3(store, final, full_run.tmp)
    assert_manifest_matches_s3(store, merged, full_run.tmp)
    card = (full_run.result.output_dir / "README.md").read_text()
    assert "sequence-classification" in card and "```yaml" in card and "maxSteps: 12" in card


def test_the_merged_model_predicts_like_the_trained_adapter(full_run: FullRun) -> None:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    store = full_run.store
    merged_manifest = store.storage.read_json(store.location.merged.join(MANIFEST))
    local = full_run.tmp / "merged-download"
    store.download(merged_manifest, local, ranks=None, skip=lambda _: False)
    merged = AutoModelForSequenceClassification.from_pretrained(str(local)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(local))
    batch = tokenizer(["the movie was really good", "the meal was so awful"], return_tensors="pt", padding=True)
    trained = full_run.result.model.eval()
    with torch.no_grad():
        assert torch.allclose(merged(**batch).logits, trained(**batch).logits, atol=1e-4)


def test_the_status_names_the_artifacts(full_run: FullRun) -> None:
    location = full_run.store.location
    assert full_run.status["artifacts"] == {
        "latestCheckpoint": str(location.checkpoint(12)),
        "model": str(location.final),
        "mergedModel": str(location.merged),
        "metrics": str(location.final.join("metrics.json")),
    }
    assert location.root.key.endswith("/bert-s3/")


def test_the_status_carries_the_curves_and_s3_the_full_history(full_run: FullRun) -> None:
    logged = full_run.result.trainer.state.log_history
    history = full_run.status["history"]
    assert history["maxPoints"] == 256 and history["uri"] == str(full_run.store.location.history)
    # Under the budget nothing is merged: one training point per logged loss, one evaluation every 3 steps.
    assert [(p["step"], p["firstStep"], p["loss"]) for p in history["train"]] == [
        (e["step"], e["step"], e["loss"]) for e in logged if "loss" in e
    ]
    assert all(p["learningRate"] >= 0 and p["epoch"] > 0 for p in history["train"])
    assert [(p["step"], p["loss"], p["metrics"]["accuracy"]) for p in history["eval"]] == [
        (e["step"], e["eval_loss"], e["eval_accuracy"]) for e in logged if "eval_loss" in e
    ]
    assert [p["step"] for p in history["eval"]][:4] == [3, 6, 9, 12]
    body = full_run.store.storage.client.get_object(
        Bucket=full_run.store.location.root.bucket, Key=full_run.store.location.history.key
    )["Body"].read()
    assert [json.loads(line) for line in body.decode().splitlines()] == logged


# ---- resume, refusal, outage, s3 inputs ----


def resumable_spec(
    task: str,
    output: dict[str, Any],
    tiny_bert: Path,
    sentiment_files: dict[str, Path],
    tmp_path: Path,
    method: str = "lora",
    **training: Any,
) -> dict[str, Any]:
    """A LoRA run of ``task`` with S3 output: sentiment and scores on the tiny BERT, seq2seq on a T5, reward
    modelling and ORPO/KTO on a Llama."""
    if task == "sequence-classification":  # with a test file: its predictions go to S3
        files = {**sentiment_files, "test": sentiment_files["validation"]}
        return sentiment_spec(tiny_bert, files, output, {"type": method}, **training)
    from tests.trainer import tiny, tiny_causal

    if task == "regression":  # a numeric score on the tiny BERT, with a test file (predictions to S3)
        scores = {
            name: tiny.write_jsonl(tmp_path / f"scores-{name}.jsonl", tiny.score_rows(n, seed=seed))
            for name, n, seed in (("train", 32, 0), ("validation", 8, 1), ("test", 8, 2))
        }
        spec = sentiment_spec(tiny_bert, scores, output, **training)
        spec["task"] = {"type": "regression"}
        return spec
    if task == "seq2seq":
        model, rows = tiny_causal.build_tiny_seq2seq(tmp_path / "t5"), tiny_causal.summary_rows
    else:
        rows = tiny_causal.feedback_rows if task == "kto" else tiny_causal.preference_rows
        model = tiny_causal.build_tiny_causal(tmp_path / "llama")
    files = {
        "train": str(tiny.write_jsonl(tmp_path / f"{task}.jsonl", rows(32, seed=0))),
        "validation": str(tiny.write_jsonl(tmp_path / f"{task}-val.jsonl", rows(8, seed=1))),
    }
    spec = tiny_causal.causal_spec(model, {"type": task}, files, {"type": "lora"}, **training)
    spec["output"] = output
    return spec


RESUMABLE = [
    *[("sequence-classification", m) for m in ("lora", "freeze", "ia3", "prefix-tuning", "p-tuning")],
    *[(t, "lora") for t in ("regression", "seq2seq", "reward-modeling", "orpo", "kto")],
]


@pytest.mark.parametrize(("task", "method"), RESUMABLE, ids=[f"{t}-{m}" for t, m in RESUMABLE])
def test_a_rerun_resumes_from_the_newest_checkpoint_that_has_a_manifest(
    task: str,
    method: str,
    minio: MinIO,
    bucket: str,
    s3_env: dict,
    tiny_bert: Path,
    sentiment_files: dict[str, Path],
    tmp_path: Path,
) -> None:
    schedule: dict[str, Any] = {
        "evalStrategy": "no",
        "loadBestModelAtEnd": False,
        "saveStrategy": "steps",
        "saveSteps": 2,
    }
    output = s3_output(minio.endpoint, bucket)
    spec = resumable_spec(task, output, tiny_bert, sentiment_files, tmp_path, method, maxSteps=4, **schedule)
    engine.train(parse_spec(spec), tmp_path / "first")
    store = store_for(spec)
    assert store.complete_steps() == [2, 4]
    # The pod died after uploading checkpoint-4's files but before its manifest: it must not count.
    store.storage.delete(store.location.checkpoint(4).join(MANIFEST))

    counter = StepCounter()
    longer = {**spec, "training": {**spec["training"], "maxSteps": 6}}
    result = engine.train(parse_spec(longer), tmp_path / "fresh", callbacks=[counter.callback])

    assert result.metrics["global_step"] == 6
    assert counter.steps == 4  # steps 3..6: resumed from checkpoint-2
    final = store.storage.read_json(store.location.final.join(MANIFEST))
    assert final["resumedFrom"] == {"checkpoint": str(store.location.checkpoint(2)), "globalStep": 2}
    # The test predictions (classification) or the sample generations (generative tasks) went up with the model.
    extra = {"sequence-classification": "predictions.jsonl", "regression": None, "reward-modeling": None}.get(
        task, "samples.jsonl"
    )
    assert extra is None or extra in final["files"], sorted(final["files"])


def test_resuming_with_another_lora_rank_is_refused_before_anything_loads(
    minio: MinIO,
    bucket: str,
    s3_env: dict,
    sentiment_files: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    job = {"FTJ_NAMESPACE": "team-a", "FTJ_NAME": "bert"}
    spec = sentiment_spec(None, sentiment_files, s3_output(minio.endpoint, bucket), {"type": "lora", "lora": {"r": 8}})
    store = store_for(spec, job)
    (tmp_path / "ck").mkdir()
    (tmp_path / "ck" / "trainer_state.json").write_text("{}")
    store.upload_part(10, tmp_path / "ck", 0)
    parts = store.wait_for_parts(10, nodes=1, timeout=5) or []
    store.commit(10, parts, spec_fields=fingerprint_fields(parse_spec(spec)), world_size=1, state={})
    # The same job restarted with a changed rank; the model path does not even exist: nothing loads first.
    changed = {**spec, "method": {"type": "lora", "lora": {"r": 16}}}
    for key, value in job.items():
        monkeypatch.setenv(key, value)

    with pytest.raises(ConfigError) as err:
        engine.train(parse_spec(changed), tmp_path / "out")
    assert "spec.method.lora.r: the checkpoint was trained with 8, the spec now says 16" in str(err.value)
    assert str(store.location.checkpoint(10)) in str(err.value)


def test_an_outage_longer_than_the_retries_costs_one_checkpoint_not_the_run(
    own_minio: OwnMinIO,
    s3_env: dict,
    tiny_bert: Path,
    sentiment_files: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from transformers import TrainerCallback

    monkeypatch.setenv("FTJ_S3_RETRY_SECONDS", "2")
    own_minio.client().create_bucket(Bucket="outage")
    spec = sentiment_spec(
        tiny_bert,
        sentiment_files,
        s3_output(own_minio.endpoint, "outage"),
        maxSteps=6,
        evalStrategy="no",
        loadBestModelAtEnd=False,
        saveStrategy="steps",
        saveSteps=2,
        saveTotalLimit=None,
    )
    store = store_for(spec)

    class Outage(TrainerCallback):
        """Stops MinIO once checkpoint-2 is in, and starts it again once checkpoint-4 has failed."""

        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.global_step == 3:
                wait_for("checkpoint-2 in S3", lambda: store.manifest(2), timeout=60)
                own_minio.kill()
            if state.global_step == 5:
                wait_for("checkpoint-4 to fail", lambda: "checkpoint-4 was not uploaded" in caplog.text, timeout=60)
                own_minio.start()

    with caplog.at_level(logging.INFO, logger="finetune_trainer"):
        result = engine.train(parse_spec(spec), tmp_path / "out", callbacks=[Outage()])

    assert result.metrics["global_step"] == 6
    assert "Training goes on; the next checkpoint tries again" in caplog.text
    assert store.complete_steps() == [2, 6]
    assert store.storage.read_json(store.location.final.join(MANIFEST))["globalStep"] == 6


def test_a_model_and_a_dataset_from_s3_uris_train(
    minio: MinIO, bucket: str, s3_env: dict, tiny_bert: Path, sentiment_files: dict[str, Path], tmp_path: Path
) -> None:
    storage = S3Storage.for_location(None)
    storage.upload_directory(tiny_bert, S3Uri(bucket, "models/tiny-bert/"))
    for path in sentiment_files.values():
        storage.upload_file(path, S3Uri(bucket, f"data/{path.name}"))
    files = {split: f"s3://{bucket}/data/{path.name}" for split, path in sentiment_files.items()}
    spec = sentiment_spec(None, files, {}, maxSteps=2, evalStrategy="no", saveStrategy="no", loadBestModelAtEnd=False)
    spec["model"] = {"uri": f"s3://{bucket}/models/tiny-bert"}

    result = engine.train(parse_spec(spec), tmp_path / "out")

    assert result.metrics["global_step"] == 2
    assert (tmp_path / "out" / "adapter_model.safetensors").is_file()


def test_a_final_upload_that_keeps_failing_fails_the_run_and_keeps_the_files(
    own_minio: OwnMinIO,
    s3_env: dict,
    tiny_bert: Path,
    sentiment_files: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from transformers import TrainerCallback

    monkeypatch.setenv("FTJ_S3_RETRY_SECONDS", "2")
    own_minio.client().create_bucket(Bucket="gone")
    spec = sentiment_spec(
        tiny_bert,
        sentiment_files,
        s3_output(own_minio.endpoint, "gone"),
        maxSteps=2,
        evalStrategy="no",
        loadBestModelAtEnd=False,
        saveStrategy="no",
    )

    class StoreDiesAtTheEnd(TrainerCallback):
        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            own_minio.kill()

    with pytest.raises(FinalUploadError) as err:
        engine.train(parse_spec(spec), tmp_path / "out", callbacks=[StoreDiesAtTheEnd()])

    message = str(err.value)
    assert message.startswith("the final artifacts could not be uploaded to s3://gone/runs/local/spec-")
    assert f"cannot reach the S3 endpoint {own_minio.endpoint}" in message
    assert f"They are still in {tmp_path / 'out'} on this pod" in message
    assert err.value.exit_code == 75  # retryable: the Job runs the pod again
    assert (tmp_path / "out" / "adapter_model.safetensors").is_file()
    assert (tmp_path / "out" / "metrics.json").is_file()
