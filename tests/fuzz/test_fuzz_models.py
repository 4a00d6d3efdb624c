"""Generated model directories, LoRA target lists and output directories around valid ones, through ``run``
on the tiny BERT: each trains, or is refused with exit 3 naming the field, the value and the fix, before
anything is written."""

from __future__ import annotations

import copy
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz import harness
from tests.fuzz.oracle import Expect, check
from tests.fuzz.profiles import cases

pytestmark = pytest.mark.slow

# What is done to a copy of the tiny BERT's directory, and what the run must then do.
MODEL_DAMAGE: dict[str, Expect] = {
    "intact": Expect(True),
    "empty-directory": Expect(False, ("model.path", "config.json"), (3,), "no model files"),
    "no-config": Expect(False, ("model.path", "config.json"), (3,), "no config.json"),
    "no-weights": Expect(False, ("model.path",), (3,), "no weights"),
    "no-tokenizer": Expect(False, ("model.path", "tokenizer"), (3,), "no tokenizer files"),
    "truncated-weights": Expect(False, ("model.path",), (3,), "weights cut short"),
    "config-not-json": Expect(False, ("model.path", "config.json"), (3,), "config.json is not JSON"),
    "unknown-model-type": Expect(False, ("model.path", "no-such-architecture"), (3,), "an unknown model type"),
}
LINEAR = ["query", "key", "value", "dense"]


def damage(source: Path, target: Path, how: str) -> Path:
    shutil.copytree(source, target)
    weights = target / "model.safetensors"
    if how == "empty-directory":
        for child in target.iterdir():
            child.unlink()
    elif how == "no-config":
        (target / "config.json").unlink()
    elif how == "no-weights":
        weights.unlink()
    elif how == "no-tokenizer":
        for child in target.iterdir():
            if child.name.startswith(("tokenizer", "vocab", "special_tokens")):
                child.unlink()
    elif how == "truncated-weights":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 3])
    elif how == "config-not-json":
        (target / "config.json").write_text('{"model_type": "bert", "hidden_size": ')
    elif how == "unknown-model-type":
        config = json.loads((target / "config.json").read_text())
        (target / "config.json").write_text(json.dumps({**config, "model_type": "no-such-architecture"}))
    return target


def sentiment_spec(model: Path, train: Path, method: dict[str, Any] | None = None, **training: Any) -> dict[str, Any]:
    from tests.fuzz.data_cases import TASKS
    from tests.trainer import tiny

    return tiny.spec_dict(
        model,
        copy.deepcopy(TASKS["sentiment"]),
        {"train": str(train)},
        method or {"type": "full"},
        **{
            "maxSteps": 1,
            "batchSizePerDevice": 4,
            "evalStrategy": "no",
            "saveStrategy": "no",
            "loadBestModelAtEnd": False,
            **training,
        },
    )


def write_train(root: Path) -> Path:
    from tests.trainer import tiny

    return tiny.write_jsonl(root / "train.jsonl", tiny.sentiment_rows(6))


@cases(8)
@given(how=st.sampled_from(sorted(MODEL_DAMAGE)))
def test_a_damaged_model_directory_is_named_not_a_tokenizer_library(tiny_bert: Path, how: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = damage(tiny_bert, root / "model", how)
        config = harness.write_config(root / "job.yaml", sentiment_spec(model, write_train(root)))
        outcome = harness.run(config, root / "out")
        assert not check("models: run", outcome, MODEL_DAMAGE[how], how)


@cases(10)
@given(targets=st.lists(st.sampled_from([*LINEAR, "q_proj", "foo", "c_attn"]), min_size=1, max_size=3, unique=True))
def test_lora_target_modules_must_all_exist(tiny_bert: Path, targets: list[str]) -> None:
    unknown = [t for t in targets if t not in LINEAR]
    expect = (
        Expect(False, ("method.lora.targetModules", *(repr(u) for u in unknown), "query"), (3,), f"targets {targets}")
        if unknown
        else Expect(True)
    )
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        spec = sentiment_spec(tiny_bert, write_train(root), {"type": "lora", "lora": {"targetModules": targets}})
        outcome = harness.run(harness.write_config(root / "job.yaml", spec), root / "out")
        assert not check("lora targets: run", outcome, expect, "+".join(targets))


METHODS: dict[str, dict[str, Any]] = {
    "full": {"type": "full"},
    "lora": {"type": "lora"},
    "lora-r4": {"type": "lora", "lora": {"r": 4}},
    "feature-extraction": {"type": "feature-extraction"},
}


@cases(6)
@given(first=st.sampled_from(sorted(METHODS)), second=st.sampled_from(sorted(METHODS)))
def test_a_checkpoint_of_another_method_in_the_output_directory_is_refused(
    tiny_bert: Path, first: str, second: str
) -> None:
    """Full, then LoRA, into one output directory: the second run must not resume the first one's checkpoint."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        train, out = write_train(root), root / "out"
        saving = {"saveStrategy": "steps", "saveSteps": 1}
        earlier = sentiment_spec(tiny_bert, train, METHODS[first], **saving)
        assert harness.run(harness.write_config(root / "first.yaml", earlier), out).exit_code == 0
        later = sentiment_spec(tiny_bert, train, METHODS[second], maxSteps=2, **saving)
        compatible = first == second
        expect = Expect(True) if compatible else Expect(False, ("method",), (3,), f"{first} then {second}")
        outcome = harness.run(harness.write_config(root / "second.yaml", later), out)
        assert not check("output dir: run", outcome, expect, f"{first} then {second}")
