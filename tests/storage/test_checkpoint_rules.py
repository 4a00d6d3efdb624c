"""Checkpoint rules that need no S3: the upload queue's superseding policy, who does what in a multi-node run,
per-rank files, the job prefix and the spec fingerprint."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from finetune_api.validation import parse_spec
from finetune_trainer.artifacts import write_model_card
from finetune_trainer.checkpoint_store import rank_of
from finetune_trainer.checkpoint_uploader import CheckpointUploader, PendingCheckpoint, snapshot_directory
from finetune_trainer.errors import ConfigError
from finetune_trainer.fingerprint import check_compatible, fingerprint, fingerprint_fields
from finetune_trainer.job_location import JobLocation
from finetune_trainer.world import WorldInfo


def spec(**changes: Any) -> Any:
    base: dict[str, Any] = {
        "model": {"name": "bert-base-uncased"},
        "task": {"type": "sequence-classification", "labels": ["neg", "pos"]},
        "dataset": {"name": "imdb"},
        "method": {"type": "lora", "lora": {"r": 8}},
        "output": {"s3": {"bucket": "models", "prefix": "runs"}},
    }
    for section, value in changes.items():
        base[section] = value
    return parse_spec(base)


def test_a_full_queue_supersedes_the_oldest_waiting_checkpoint(tmp_path: Path) -> None:
    release = threading.Event()
    started = threading.Event()
    uploaded: list[int] = []

    def upload(item: PendingCheckpoint) -> None:
        started.set()
        release.wait(10)
        uploaded.append(item.step)

    uploader = CheckpointUploader(upload, max_pending=1)
    snapshots = {}
    for step in (2, 4, 6):
        snapshots[step] = tmp_path / f"checkpoint-{step}"
        snapshots[step].mkdir()
        uploader.submit(PendingCheckpoint(step, snapshots[step]))
        if step == 2:
            assert started.wait(10)  # checkpoint-2 is uploading; 4 then waits, and 6 supersedes it

    assert uploader.newer_than(2)
    release.set()
    assert uploader.close(timeout=10)
    assert uploaded == [2, 6]
    assert uploader.superseded == [4]
    assert not any(p.exists() for p in snapshots.values())  # snapshots are removed once done with


def test_submitting_never_blocks_training_while_an_upload_hangs(tmp_path: Path) -> None:
    hang, started = threading.Event(), threading.Event()

    def upload(item: PendingCheckpoint) -> None:
        started.set()
        hang.wait(10)

    uploader = CheckpointUploader(upload, max_pending=2)
    uploader.submit(PendingCheckpoint(1, tmp_path / "s1"))
    assert started.wait(10)
    for step in range(2, 20):
        uploader.submit(PendingCheckpoint(step, tmp_path / f"s{step}"))
    assert not uploader.drain(timeout=0.2)
    hang.set()
    assert uploader.close(timeout=10)
    assert len(uploader.superseded) == 16  # 1 uploading, 2 waiting at any time


def test_node_roles_follow_torchrun_variables() -> None:
    env = {"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "4", "GROUP_RANK": "1"}
    node = WorldInfo.from_env(env)
    assert (node.node, node.nodes, node.is_main, node.is_node_leader) == (1, 2, False, False)
    assert list(node.node_ranks) == [4, 5, 6, 7]
    assert WorldInfo.from_env({}) == WorldInfo()  # a plain single process


@pytest.mark.parametrize(
    ("path", "rank"),
    [
        ("rng_state_3.pth", 3),
        ("rng_state.pth", None),
        ("global_step8/zero_pp_rank_2_mp_rank_00_optim_states.pt", 2),
        ("global_step8/bf16_zero_pp_rank_12_mp_rank_00_optim_states.pt", 12),
        ("global_step8/mp_rank_00_model_states.pt", None),
        ("model.safetensors", None),
    ],
)
def test_per_rank_files_are_recognised(path: str, rank: int | None) -> None:
    assert rank_of(path) == rank


def test_the_job_prefix_is_the_namespace_and_name_under_the_spec_prefix() -> None:
    job = JobLocation.from_spec(spec(), {"FTJ_NAMESPACE": "team-a", "FTJ_NAME": "bert-imdb"})
    assert str(job.checkpoint(40)) == "s3://models/runs/team-a/bert-imdb/checkpoints/checkpoint-40/"
    assert str(job.final) == "s3://models/runs/team-a/bert-imdb/final/"
    assert str(job.merged) == "s3://models/runs/team-a/bert-imdb/merged/"


def test_a_local_run_is_named_by_what_it_trains_on_what() -> None:
    local = JobLocation.from_spec(spec(), {})
    assert local.root.key.startswith("runs/local/spec-")
    # Another schedule is the same run (it resumes); another dataset is another run.
    assert JobLocation.from_spec(spec(training={"epochs": 9}), {}) == local
    assert JobLocation.from_spec(spec(dataset={"name": "sst2"}), {}) != local


def test_the_fingerprint_ignores_the_schedule_but_not_the_lora_rank() -> None:
    assert fingerprint(fingerprint_fields(spec(training={"learningRate": 0.1}))) == fingerprint(
        fingerprint_fields(spec())
    )
    assert fingerprint(fingerprint_fields(spec(method={"type": "lora", "lora": {"r": 16}}))) != fingerprint(
        fingerprint_fields(spec())
    )


@pytest.mark.parametrize(
    "method",
    [
        {"type": "lora", "lora": {"useDora": True}},
        {"type": "lora", "lora": {"initLoraWeights": "pissa"}},
        {"type": "lora", "lora": {"modulesToSave": ["pooler"]}},
        {"type": "ia3", "ia3": {"targetModules": ["key"], "feedforwardModules": []}},
        {"type": "prefix-tuning", "prefixTuning": {"numVirtualTokens": 4}},
        {"type": "freeze", "freeze": {"trainableLayers": 3}},
    ],
    ids=["dora", "pissa", "modules-to-save", "ia3", "prefix", "freeze"],
)
def test_adapter_options_change_the_fingerprint(method: dict) -> None:
    # A checkpoint holds weights of exactly this shape and meaning: resuming it under other options must be refused.
    plain = {"type": method["type"]}
    assert fingerprint(fingerprint_fields(spec(method=method))) != fingerprint(fingerprint_fields(spec(method=plain)))


def test_default_lora_options_keep_the_fingerprint_of_older_checkpoints() -> None:
    explicit = {"type": "lora", "lora": {"useDora": False, "initLoraWeights": "default", "modulesToSave": []}}
    assert fingerprint_fields(spec(method=explicit)) == fingerprint_fields(spec(method={"type": "lora"}))


def test_an_incompatible_spec_is_refused_naming_each_change() -> None:
    fields = fingerprint_fields(spec())
    manifest = {"fingerprint": fingerprint(fields), "spec": fields}
    changed = spec(model={"name": "roberta-base"}, method={"type": "lora", "lora": {"r": 16}})

    with pytest.raises(ConfigError) as err:
        check_compatible(manifest, changed, JobLocation.from_spec(changed, {}).checkpoint(8))
    message = str(err.value)
    assert "cannot resume from s3://models/runs/local/" in message
    assert "spec.method.lora.r: the checkpoint was trained with 8, the spec now says 16" in message
    assert (
        "spec.model: the checkpoint was trained with 'bert-base-uncased@main', the spec now says 'roberta-base@main'"
        in message
    )
    check_compatible(manifest, spec(training={"epochs": 9}), JobLocation.from_spec(spec(), {}).checkpoint(8))


def test_a_snapshot_survives_the_trainer_deleting_the_checkpoint(tmp_path: Path) -> None:
    source = tmp_path / "checkpoint-2"
    (source / "sub").mkdir(parents=True)
    (source / "model.safetensors").write_bytes(b"weights")
    (source / "sub" / "x").write_bytes(b"x")
    snapshot = snapshot_directory(source, tmp_path / ".s3-staging" / "checkpoint-2")
    for p in sorted(source.rglob("*"), reverse=True):
        p.unlink() if p.is_file() else p.rmdir()
    assert (snapshot / "model.safetensors").read_bytes() == b"weights"
    assert (snapshot / "sub" / "x").read_bytes() == b"x"


@pytest.mark.parametrize(("method", "adapter"), [("ia3", True), ("prefix-tuning", True), ("freeze", False)])
def test_the_model_card_says_adapter_for_every_peft_method(tmp_path: Path, method: str, adapter: bool) -> None:
    job = spec(method={"type": method})
    if adapter:
        (tmp_path / "adapter_config.json").write_text("{}")
    metrics = {"trainable_parameters": 1538, "total_parameters": 109483778, "test_accuracy": 0.9}
    card = write_model_card(job, tmp_path, metrics, JobLocation.from_spec(job, {})).read_text()
    assert ("library_name: peft" in card) is adapter
    assert "a peft adapter" in card if adapter else "the full model" in card
    # Parameter counts and test metrics are in the card's results table.
    assert "| trainable_parameters | 1538 |" in card and "| test_accuracy | 0.9 |" in card


def test_the_model_card_shows_sample_generations(tmp_path: Path) -> None:
    job = spec()
    samples = [
        {"prompt": "Summarise: the cat sat.", "generated": "cat sat", "reference": "a cat sat"},
        {"prompt": "Say hi.", "generated": "hi", "reference": None},
    ]
    card = write_model_card(job, tmp_path, {}, JobLocation.from_spec(job, {}), samples).read_text()
    section = card.split("## Sample generations", 1)[1].split("## Load it", 1)[0]
    assert "Summarise: the cat sat.\n```" in section and "```text\ncat sat\n```" in section
    assert "```text\na cat sat\n```" in section
    assert section.count("Reference:") == 1  # none for a sample without one
    assert (
        "## Sample generations" not in write_model_card(job, tmp_path, {}, JobLocation.from_spec(job, {})).read_text()
    )
