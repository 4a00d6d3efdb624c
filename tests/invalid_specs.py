"""Invalid FineTuneJob specs, each with the field path its error must name.

Shared by the unit tests (our validation) and the cluster tests (the API server's CRD
schema and CEL rules), so both layers are held to the same cases.
"""

from __future__ import annotations

import copy
from typing import Any

BASE: dict[str, Any] = {
    "model": {"name": "bert-base-uncased"},
    "task": {"type": "sequence-classification", "labels": ["neg", "pos"]},
    "dataset": {"name": "imdb", "evalSplit": "test"},
    "method": {"type": "lora"},
}


def with_changes(**changes: Any) -> dict[str, Any]:
    """BASE with top-level sections merged (section=dict) or replaced (section=None removes)."""
    spec = copy.deepcopy(BASE)
    for section, value in changes.items():
        if value is None:
            spec.pop(section, None)
        elif isinstance(value, dict) and isinstance(spec.get(section), dict):
            spec[section] = {**spec[section], **value}
        else:
            spec[section] = value
    return spec


# (case id, spec, field path the error names, a fragment of our message)
INVALID_SPECS: list[tuple[str, dict[str, Any], str, str]] = [
    ("missing-model", with_changes(model=None), "spec.model", "required"),
    ("two-model-sources", with_changes(model={"name": "x", "path": "/m"}), "spec.model", "exactly one"),
    ("bad-model-uri", with_changes(model={"name": None, "uri": "http://x"}), "spec.model.uri", "pattern"),
    ("unknown-task", with_changes(task={"type": "summarisation"}), "spec.task.type", "sequence-classification"),
    ("unknown-method", with_changes(method={"type": "adapter"}), "spec.method.type", "lora"),
    ("unknown-field", with_changes(training={"epoch": 3}), "spec.training.epoch", "unknown field"),
    ("negative-epochs", with_changes(training={"epochs": -1}), "spec.training.epochs", "greater than 0"),
    ("zero-batch", with_changes(training={"batchSizePerDevice": 0}), "spec.training.batchSizePerDevice", "greater"),
    ("bad-precision", with_changes(training={"precision": "int8"}), "spec.training.precision", "auto"),
    ("lora-opts-on-full", with_changes(method={"type": "full", "lora": {"r": 8}}), "spec.method.lora", "lora or qlora"),
    ("quant-on-lora", with_changes(method={"type": "lora", "quantization": {}}), "spec.method.quantization", "qlora"),
    (
        "prompt-opts-on-lora",
        with_changes(method={"type": "lora", "promptTuning": {"numVirtualTokens": 4}}),
        "spec.method.promptTuning",
        "prompt-tuning",
    ),
    ("lora-rank-zero", with_changes(method={"type": "lora", "lora": {"r": 0}}), "spec.method.lora.r", "greater"),
    (
        "qlora-without-gpus",
        with_changes(method={"type": "qlora"}, resources={"gpusPerNode": 0}),
        "spec.method.type",
        "gpusPerNode",
    ),
    ("labels-missing", with_changes(task={"type": "sequence-classification", "labels": []}), "spec.task.labels", "2"),
    (
        "multilabel-on-ner",
        with_changes(task={"type": "token-classification", "labels": ["O", "B-X"], "multiLabel": True}),
        "spec.task.multiLabel",
        "sequence-classification",
    ),
    ("format-on-classification", with_changes(task={"format": "alpaca"}), "spec.task.format", "causal-lm"),
    ("unknown-column-role", with_changes(task={"columns": {"sentence": "s"}}), "spec.task.columns", "roles"),
    (
        "dataset-name-and-files",
        with_changes(dataset={"name": "imdb", "files": {"train": "/d/train.jsonl"}}),
        "spec.dataset",
        "exactly one",
    ),
    (
        "eval-split-and-fraction",
        with_changes(dataset={"evalFraction": 0.1}),
        "spec.dataset.evalFraction",
        "not both",
    ),
    (
        "eval-fraction-one",
        {**BASE, "dataset": {"name": "imdb", "evalFraction": 1.0}},
        "spec.dataset.evalFraction",
        "less",
    ),
    (
        "eval-steps-missing",
        with_changes(training={"evalStrategy": "steps", "saveStrategy": "steps", "saveSteps": 10}),
        "spec.training.evalSteps",
        "evalSteps",
    ),
    (
        "best-model-without-eval",
        with_changes(training={"evalStrategy": "no"}),
        "spec.training.loadBestModelAtEnd",
        "saveStrategy",
    ),
    (
        "save-steps-not-multiple",
        with_changes(training={"evalStrategy": "steps", "evalSteps": 30, "saveStrategy": "steps", "saveSteps": 50}),
        "spec.training.saveSteps",
        "multiple",
    ),
    (
        "patience-without-best",
        with_changes(training={"earlyStoppingPatience": 2, "loadBestModelAtEnd": False}),
        "spec.training.earlyStoppingPatience",
        "loadBestModelAtEnd",
    ),
    ("packing-on-classification", with_changes(training={"packing": True}), "spec.training.packing", "causal-lm"),
    ("dpo-on-classification", with_changes(training={"dpo": {"beta": 0.1}}), "spec.training.dpo", "preference"),
    (
        "orpo-options-on-dpo",
        with_changes(task={"type": "preference"}, training={"orpo": {"beta": 0.2}}),
        "spec.training.orpo",
        "orpo only",
    ),
    (
        "kto-options-on-orpo",
        with_changes(task={"type": "orpo"}, training={"kto": {"beta": 0.2}}),
        "spec.training.kto",
        "kto only",
    ),
    (
        "feature-extraction-for-causal-lm",
        with_changes(task={"type": "causal-lm", "labels": []}, method={"type": "feature-extraction"}),
        "spec.method.type",
        "not supported",
    ),
    (
        "prompt-tuning-for-qa",
        with_changes(task={"type": "question-answering", "labels": []}, method={"type": "prompt-tuning"}),
        "spec.method.type",
        "offset mapping",
    ),
    (
        "doc-stride-too-long",
        with_changes(
            task={"type": "question-answering", "labels": [], "docStride": 256}, training={"maxSeqLength": 256}
        ),
        "spec.task.docStride",
        "maxSeqLength",
    ),
    (
        "offload-params-stage-2",
        with_changes(distributed={"strategy": "deepspeed", "deepspeed": {"stage": 2, "offloadParams": True}}),
        "spec.distributed.deepspeed.offloadParams",
        "stage 3",
    ),
    (
        "deepspeed-opts-with-ddp",
        with_changes(distributed={"strategy": "ddp", "deepspeed": {"stage": 2}}),
        "spec.distributed.deepspeed",
        "strategy deepspeed",
    ),
    (
        "deepspeed-stage-4",
        with_changes(distributed={"strategy": "deepspeed", "deepspeed": {"stage": 4}}),
        "spec.distributed.deepspeed.stage",
        "less than or equal",
    ),
    (
        "bf16-on-cpu",
        with_changes(resources={"gpusPerNode": 0}, training={"precision": "bf16"}),
        "spec.training.precision",
        "GPUs",
    ),
    (
        "merged-model-for-full",
        with_changes(method={"type": "full"}, output={"saveMergedModel": True}),
        "spec.output.saveMergedModel",
        "lora or qlora",
    ),
    ("ia3-opts-on-lora", with_changes(method={"type": "lora", "ia3": {}}), "spec.method.ia3", "method.type ia3"),
    (
        "p-tuning-opts-on-prompt-tuning",
        with_changes(method={"type": "prompt-tuning", "pTuning": {}}),
        "spec.method.pTuning",
        "p-tuning",
    ),
    (
        "prefix-opts-on-lora",
        with_changes(method={"type": "lora", "prefixTuning": {}}),
        "spec.method.prefixTuning",
        "prefix-tuning",
    ),
    ("freeze-opts-on-full", with_changes(method={"type": "full", "freeze": {}}), "spec.method.freeze", "freeze"),
    (
        "freeze-zero-layers",
        with_changes(method={"type": "freeze", "freeze": {"trainableLayers": 0}}),
        "spec.method.freeze.trainableLayers",
        "greater",
    ),
    (
        "all-linear-with-names",
        with_changes(method={"type": "lora", "lora": {"targetModules": ["all-linear", "query"]}}),
        "spec.method.lora.targetModules",
        "alone",
    ),
    (
        "loftq-without-quantisation",
        with_changes(method={"type": "lora", "lora": {"initLoraWeights": "loftq"}}),
        "spec.method.lora.initLoraWeights",
        "qlora",
    ),
    (
        "pissa-on-4-bit",
        with_changes(method={"type": "qlora", "lora": {"initLoraWeights": "pissa"}}, resources={"gpusPerNode": 1}),
        "spec.method.lora.initLoraWeights",
        "singular value",
    ),
    (
        "dora-with-olora",
        with_changes(method={"type": "lora", "lora": {"useDora": True, "initLoraWeights": "olora"}}),
        "spec.method.lora.useDora",
        "DoRA",
    ),
    (
        "p-tuning-for-ner",
        with_changes(method={"type": "p-tuning"}, task={"type": "token-classification", "labels": ["O", "B-PER"]}),
        "spec.method.type",
        "prefix-tuning",
    ),
    (
        "test-split-with-files",
        with_changes(dataset={"name": None, "evalSplit": None, "files": {"train": "/d/t.jsonl"}, "testSplit": "test"}),
        "spec.dataset.testSplit",
        "files.test",
    ),
    (
        "test-split-for-dpo",
        with_changes(task={"type": "preference"}, dataset={"testSplit": "test"}),
        "spec.dataset.testSplit",
        "starting model",
    ),
    (
        "group-by-length-for-kto",
        with_changes(task={"type": "kto", "labels": []}, training={"groupByLength": True}),
        "spec.training.groupByLength",
        "fixed order",
    ),
    (
        "test-split-for-kto",
        with_changes(task={"type": "kto", "labels": []}, dataset={"testSplit": "test"}),
        "spec.dataset.testSplit",
        "starting model",
    ),
    (
        "feature-extraction-for-orpo",
        with_changes(task={"type": "orpo", "labels": []}, method={"type": "feature-extraction"}),
        "spec.method.type",
        "ORPO shifts",
    ),
    ("bad-bucket", with_changes(output={"s3": {"bucket": "Bad_Bucket"}}), "spec.output.s3.bucket", "pattern"),
    ("bad-memory", with_changes(resources={"memory": "lots"}), "spec.resources.memory", "pattern"),
    ("zero-nodes", with_changes(resources={"nodes": 0}), "spec.resources.nodes", "greater than or equal"),
    ("negative-backoff", with_changes(runPolicy={"backoffLimit": -1}), "spec.runPolicy.backoffLimit", "greater"),
    # Throughput options: refused where the device, precision, task or method cannot use them.
    ("unknown-attention", with_changes(training={"attention": "xformers"}), "spec.training.attention", "sdpa"),
    (
        "flash-attention-on-cpu",
        with_changes(resources={"gpusPerNode": 0}, training={"attention": "flash_attention_2"}),
        "spec.training.attention",
        "GPUs in bf16 or fp16",
    ),
    (
        "flash-attention-in-fp32",
        with_changes(training={"attention": "flash_attention_2", "precision": "fp32"}),
        "spec.training.attention",
        "bf16 or fp16",
    ),
    (
        "flex-attention-on-cpu",
        with_changes(resources={"gpusPerNode": 0}, training={"attention": "flex_attention"}),
        "spec.training.attention",
        "no backward pass on CPU",
    ),
    (
        "padding-free-sequence-classification",
        with_changes(training={"paddingFree": True}),
        "spec.training.paddingFree",
        "one position per example",
    ),
    (
        "padding-free-preference",
        with_changes(task={"type": "preference", "labels": []}, training={"paddingFree": True}),
        "spec.training.paddingFree",
        "DPOTrainer",
    ),
    (
        "padding-free-encoder-with-sdpa",
        with_changes(
            task={"type": "token-classification", "labels": ["O", "B-X"]},
            training={"paddingFree": True, "attention": "sdpa"},
        ),
        "spec.training.paddingFree",
        "flash_attention_2",
    ),
    (
        "padding-free-prompt-tuning",
        with_changes(
            task={"type": "causal-lm", "labels": []}, method={"type": "prompt-tuning"}, training={"paddingFree": True}
        ),
        "spec.training.paddingFree",
        "soft prompt",
    ),
    (
        "liger-on-cpu",
        with_changes(resources={"gpusPerNode": 0}, training={"ligerKernels": True}),
        "spec.training.ligerKernels",
        "gpusPerNode",
    ),
    (
        "compile-on-cpu",
        with_changes(resources={"gpusPerNode": 0}, training={"compile": True}),
        "spec.training.compile",
        "gpusPerNode",
    ),
]
