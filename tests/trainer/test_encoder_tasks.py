"""Every supported encoder task x method pair trains through engine.train on the tiny BERT.

For each pair, one short run (shared by the tests of that pair) must: lower the training loss,
write the artifacts (model or adapter, tokenizer, metrics.json, spec.resolved.yaml), and reload
into a model that predicts exactly what the in-memory model predicted at the end of training.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from finetune_api.matrix import supported_pairs
from finetune_api.validation import load_spec_file, parse_spec
from tests.trainer import tiny

# Learning rates that move the tiny random model within a few dozen steps: a frozen body needs a
# much larger step on the few parameters that train.
LEARNING_RATES = {
    "full": 5e-3,
    "feature-extraction": 1e-1,
    "freeze": 1e-2,
    "lora": 3e-2,
    "ia3": 1e-1,
    "prompt-tuning": 3e-2,
    "p-tuning": 3e-2,
    "prefix-tuning": 3e-2,
}
PEFT_METHODS = ("lora", "ia3", "prompt-tuning", "p-tuning", "prefix-tuning")


@dataclass(frozen=True)
class Case:
    """One task x method run."""

    task: str
    method: str
    multi_label: bool = False
    training: dict[str, Any] = field(default_factory=dict)
    lora: dict[str, Any] = field(default_factory=dict)  # extra method.lora options
    test: bool = False  # with a test file: test metrics and predictions.jsonl

    @property
    def id(self) -> str:
        options = "".join(f"-{k}={v}" for k, v in self.lora.items())
        return f"{self.task}{'-multi-label' if self.multi_label else ''}-{self.method}{options}"


CASES = [
    Case("sequence-classification", "full"),
    Case("sequence-classification", "feature-extraction"),
    Case("sequence-classification", "lora", test=True),
    # Only a few virtual tokens and the head train on a random body, and independent labels need
    # more steps: both get a longer schedule.
    Case("sequence-classification", "prompt-tuning", training={"epochs": 5}),
    Case("sequence-classification", "lora", multi_label=True, training={"epochs": 5}),
    Case("sequence-classification", "freeze"),
    Case("sequence-classification", "ia3"),
    Case("sequence-classification", "p-tuning", training={"epochs": 5}),
    Case("sequence-classification", "prefix-tuning"),
    # LoRA options: each changes what trains or how it starts; all must still learn and reload.
    Case("sequence-classification", "lora", lora={"useDora": True}),
    Case("sequence-classification", "lora", lora={"initLoraWeights": "pissa", "useRslora": True}),
    Case("sequence-classification", "lora", lora={"initLoraWeights": "olora"}),
    Case("sequence-classification", "lora", lora={"targetModules": ["all-linear"], "initLoraWeights": "gaussian"}),
    Case("regression", "full"),
    Case("regression", "lora"),
    Case("token-classification", "full"),
    Case("token-classification", "feature-extraction"),
    Case("token-classification", "lora", test=True),
    Case("token-classification", "freeze"),
    Case("token-classification", "ia3"),
    Case("token-classification", "prefix-tuning"),
    Case("token-classification", "lora", lora={"targetModules": ["all-linear"]}),
    # Short windows so every context spans two of them (docStride overlap).
    Case("question-answering", "full", training={"maxSeqLength": 32}),
    Case("question-answering", "feature-extraction", training={"maxSeqLength": 32}),
    Case("question-answering", "lora", training={"maxSeqLength": 32}, test=True),
    Case("question-answering", "freeze", training={"maxSeqLength": 32}),
    Case("question-answering", "ia3", training={"maxSeqLength": 32}),
    Case("question-answering", "prefix-tuning", training={"maxSeqLength": 32}),
]


def spec_for(case: Case, model_dir: Path, data: dict[str, Path]) -> dict[str, Any]:
    """The spec dict of a case: the task's generated files, the method, a short schedule."""
    if case.task == "sequence-classification" and case.multi_label:
        task = {
            "type": case.task,
            "multiLabel": True,
            "labels": sorted(tiny.TOPICS),
            "columns": {"label": "labels"},
        }
        files = {"train": str(data["topics_train"]), "validation": str(data["topics_val"])}
    elif case.task == "sequence-classification":
        task = {"type": case.task, "labels": ["neg", "pos"]}
        files = {"train": str(data["seq_train"]), "validation": str(data["seq_val"])}
    elif case.task == "regression":
        task = {"type": case.task}
        # With a test file: the final model is also evaluated on it.
        files = {
            "train": str(data["scores_train"]),
            "validation": str(data["scores_val"]),
            "test": str(data["scores_test"]),
        }
    elif case.task == "token-classification":
        task = {"type": case.task, "labels": tiny.NER_LABELS}
        files = {"train": str(data["ner_train"]), "validation": str(data["ner_val"])}
    else:
        task = {"type": case.task, "docStride": 8}
        files = {"train": str(data["qa_train"]), "validation": str(data["qa_val"])}
    method: dict[str, Any] = {"type": case.method}
    if case.method == "prompt-tuning":
        method["promptTuning"] = {"numVirtualTokens": 4, "initText": "classify the review"}
    if case.method == "p-tuning":
        method["pTuning"] = {"numVirtualTokens": 4, "encoderHiddenSize": 32}
    if case.method == "prefix-tuning":
        method["prefixTuning"] = {"numVirtualTokens": 4}
    if case.method == "freeze":
        method["freeze"] = {"trainableLayers": 1}
    if case.method == "lora":
        method["lora"] = {"r": 8, "alpha": 16, "dropout": 0.0, **case.lora}
    if case.test:
        files["test"] = str(
            data[{"sequence-classification": "seq_test", "token-classification": "ner_test"}.get(case.task, "qa_test")]
        )
    training = {"learningRate": LEARNING_RATES[case.method], **case.training}
    return tiny.spec_dict(model_dir, task, files, method, **training)


def probe_outputs(model: Any, tokenizer: Any, case: Case) -> dict[str, Any]:
    """The model's raw outputs on a few fixed inputs of the case's task."""
    import torch

    if case.task in ("sequence-classification", "regression"):
        texts = [
            r["text"] for r in (tiny.topic_rows(6, seed=9) if case.multi_label else tiny.sentiment_rows(6, seed=9))
        ]
        batch = tokenizer(texts, padding=True, return_tensors="pt")
        names = ["logits"]
    elif case.task == "token-classification":
        words = [r["tokens"] for r in tiny.entity_rows(6, seed=9)]
        batch = tokenizer(words, is_split_into_words=True, padding=True, return_tensors="pt")
        names = ["logits"]
    else:
        rows = tiny.question_rows(6, seed=9)
        batch = tokenizer(
            [r["question"] for r in rows], [r["context"] for r in rows], padding=True, return_tensors="pt"
        )
        names = ["start_logits", "end_logits"]
    model.eval()
    with torch.no_grad():
        output = model(**batch)
    return {name: getattr(output, name).detach().clone() for name in names}


@dataclass
class Trained:
    case: Case
    output_dir: Path
    result: Any
    in_memory: dict[str, Any]


@pytest.fixture(scope="module", params=CASES, ids=lambda c: c.id)
def trained(
    request: pytest.FixtureRequest, tiny_bert: Path, encoder_data: dict[str, Path], tmp_path_factory
) -> Trained:
    """One short training run per case, shared by the tests below."""
    from finetune_trainer import engine

    case: Case = request.param
    spec = parse_spec(spec_for(case, tiny_bert, encoder_data))
    output_dir = tmp_path_factory.mktemp(case.id)
    result = engine.train(spec, output_dir)
    in_memory = probe_outputs(result.model, result.tokenizer, case)
    return Trained(case, output_dir, result, in_memory)


def test_the_cases_cover_every_supported_encoder_pair() -> None:
    # regression shares sequence classification's model class and adapters: two of its methods run here.
    encoder_tasks = {"sequence-classification", "token-classification", "question-answering"}
    expected = {(t, m) for t, m in supported_pairs() if t in encoder_tasks and m != "qlora"}
    assert {(c.task, c.method) for c in CASES if c.task != "regression"} == expected


@pytest.mark.slow
def test_training_loss_falls(trained: Trained) -> None:
    losses = [entry["loss"] for entry in trained.result.trainer.state.log_history if "loss" in entry]
    assert len(losses) >= 6
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < 0.9 * first, f"loss did not fall enough: first {losses[:3]}, last {losses[-3:]}"


# Metric, and the value the final evaluation must beat, per task the suite checks against chance (0 for
# Pearson); 36 steps move the tiny model clearly past it, not to a good score. The classification tasks'
# learning is pinned by test_minilm_learns.py on a real model.
BEATS_CHANCE = {"regression": ("eval_pearson", 0.3)}


@pytest.mark.slow
def test_the_final_metric_beats_chance(trained: Trained) -> None:
    if trained.case.task not in BEATS_CHANCE or trained.case.multi_label:
        pytest.skip("this task's metric is checked by its own tests")
    name, floor = BEATS_CHANCE[trained.case.task]
    assert trained.result.metrics[name] > floor, trained.result.metrics


@pytest.mark.slow
def test_test_split_metrics_are_those_of_the_saved_model(trained: Trained) -> None:
    if trained.case.task != "regression":
        pytest.skip("the regression cases carry a test file")
    import numpy as np
    import pyarrow.parquet as pq
    import torch

    from finetune_trainer import engine

    metrics = json.loads((trained.output_dir / "metrics.json").read_text())
    rows = pq.read_table(_test_file(trained)).to_pylist()
    loaded = engine.load_for_inference(trained.output_dir)
    batch = loaded.tokenizer([r["text"] for r in rows], padding=True, return_tensors="pt")
    with torch.no_grad():
        predicted = loaded.model(**batch).logits.view(-1).numpy()
    truth = np.array([r["label"] for r in rows])
    assert metrics["test_mse"] == pytest.approx(float(np.mean((predicted - truth) ** 2)), rel=1e-4)
    assert metrics["test_pearson"] == pytest.approx(float(np.corrcoef(predicted, truth)[0, 1]), rel=1e-4)
    assert metrics["test_pearson"] > 0.3  # above chance (0) on rows never seen in training or evaluation


@pytest.mark.slow
def test_test_predictions_are_the_saved_model_s(trained: Trained) -> None:
    predictions_file = trained.output_dir / "predictions.jsonl"
    if not trained.case.test:
        assert not predictions_file.exists() or trained.case.task == "regression"
        pytest.skip("no test file")
    import torch

    from finetune_trainer import engine

    rows = [json.loads(line) for line in Path(_test_file(trained)).read_text().splitlines()]
    predicted = [json.loads(line) for line in predictions_file.read_text().splitlines()]
    assert [p["row"] for p in predicted] == list(range(len(rows)))
    metrics = json.loads((trained.output_dir / "metrics.json").read_text())
    loaded = engine.load_for_inference(trained.output_dir)
    if trained.case.task == "question-answering":
        # Extractive: each answer is a span of its context; the exact-match rate is the reported one.
        assert all(p["prediction"] in r["context"] for p, r in zip(predicted, rows, strict=True))
        from finetune_trainer.tasks.question_answering import normalize_answer

        hits = [
            normalize_answer(p["prediction"]) in {normalize_answer(a) for a in r["answers"]["text"]}
            for p, r in zip(predicted, rows, strict=True)
        ]
        assert metrics["test_exact_match"] == pytest.approx(sum(hits) / len(rows))
        return
    with torch.no_grad():
        if trained.case.task == "sequence-classification":
            batch = loaded.tokenizer([r["text"] for r in rows], padding=True, return_tensors="pt")
            expected = [["neg", "pos"][i] for i in loaded.model(**batch).logits.argmax(-1).tolist()]
            truth = [r["label"] for r in rows]
            accuracy = sum(p["prediction"] == t for p, t in zip(predicted, truth, strict=True)) / len(rows)
            assert metrics["test_accuracy"] == pytest.approx(accuracy)
        else:  # one tag per word: the first sub-token's
            expected = []
            for r in rows:
                batch = loaded.tokenizer(r["tokens"], is_split_into_words=True, return_tensors="pt")
                tags = loaded.model(**batch).logits[0].argmax(-1).tolist()
                firsts = {}
                for position, word in enumerate(batch.word_ids()):
                    if word is not None and word not in firsts:
                        firsts[word] = tiny.NER_LABELS[tags[position]]
                expected.append([firsts[w] for w in sorted(firsts)])
    assert [p["prediction"] for p in predicted] == expected


def _test_file(trained: Trained) -> str:
    spec = load_spec_file(trained.output_dir / "spec.resolved.yaml")
    assert spec.dataset.files is not None and spec.dataset.files.test is not None
    return spec.dataset.files.test


@pytest.mark.slow
def test_artifacts_are_written(trained: Trained) -> None:
    out = trained.output_dir
    if trained.case.method in PEFT_METHODS:
        assert (out / "adapter_config.json").is_file()
        assert (out / "adapter_model.safetensors").is_file()
        assert not (out / "model.safetensors").exists()
    else:
        assert (out / "config.json").is_file()
        assert (out / "model.safetensors").is_file()
    assert (out / "tokenizer.json").is_file() or (out / "vocab.txt").is_file()
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("trainable_parameters", "total_parameters", "train_runtime", "train_samples_per_second", "eval_loss"):
        assert key in metrics, key
    assert 0 < metrics["trainable_parameters"] <= metrics["total_parameters"]
    resolved = load_spec_file(out / "spec.resolved.yaml")
    assert resolved.training.metric_for_best_model


@pytest.mark.slow
def test_reloaded_model_predicts_like_the_trained_one(trained: Trained) -> None:
    import torch

    from finetune_trainer import engine

    loaded = engine.load_for_inference(trained.output_dir)
    reloaded = probe_outputs(loaded.model, loaded.tokenizer, trained.case)
    for name, expected in trained.in_memory.items():
        torch.testing.assert_close(reloaded[name], expected, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.slow
def test_only_the_method_s_parameters_train(trained: Trained) -> None:
    metrics = trained.result.metrics
    trainable, total = metrics["trainable_parameters"], metrics["total_parameters"]
    if trained.case.method == "full":
        assert trainable == total
    elif trained.case.method == "freeze":
        # One of the two layers and the head: fewer than the full model, more than the head alone.
        assert 2 * 32 * 32 < trainable < total
    else:
        assert trainable < 0.05 * total
