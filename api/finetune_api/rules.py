"""Cross-field rules of the spec, each written once for the API server and once for Python.

A rule lives on one model class. ``cel`` becomes an ``x-kubernetes-validations`` entry on
that class's schema in the CRD (so ``kubectl apply`` refuses the object); ``check`` is the
same condition in Python, used by :func:`finetune_api.validation.parse_spec` for the
trainer's local runs and the operator. ``tests/unit/test_invalid_specs.py`` holds a
violating spec for every rule, and the cluster tests send the same specs to a real API
server, so the two spellings cannot drift apart unnoticed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from finetune_api.changes import transition_rules
from finetune_api.matrix import TASK_COLUMN_ROLES, UNSUPPORTED
from finetune_api.spec import (
    DatasetSpec,
    DeepSpeedOptions,
    DistributedSpec,
    FineTuneJobSpec,
    LoraOptions,
    MethodSpec,
    ModelSource,
    TaskSpec,
    TrainingSpec,
)


@dataclass(frozen=True)
class Rule:
    """One cross-field constraint on instances of ``scope``."""

    scope: type
    field: str  # path below the scope the message is about, camelCase ('' for the object itself)
    cel: str
    message: str
    check: Callable[[Any], bool] | None  # None: a transition rule only the API server can judge

    @property
    def transition(self) -> bool:
        return "oldSelf" in self.cel


def _one_of(*values: object) -> bool:
    return sum(v is not None for v in values) == 1


def _cel_list(values: list[str]) -> str:
    return "[" + ", ".join(f"'{v}'" for v in values) + "]"


def _roles_cel() -> str:
    entries = ", ".join(f"'{task}': {_cel_list(list(roles))}" for task, roles in TASK_COLUMN_ROLES.items())
    return f"self.columns.all(k, k in {{{entries}}}[self.type])"


def _roles_message() -> str:
    listed = "; ".join(f"{task}: {', '.join(roles)}" for task, roles in TASK_COLUMN_ROLES.items())
    return f"columns has a role this task does not read; the roles per task are {listed}"


def _pair_allowed(task: str, method: str) -> Callable[[FineTuneJobSpec], bool]:
    return lambda s: not (s.task.type == task and s.method.type == method)


def _options_only_for(attr: str, method: str) -> Callable[[MethodSpec], bool]:
    return lambda m: getattr(m, attr) is None or m.type == method


CLASSIFICATION = ["sequence-classification", "token-classification"]
# Tasks whose batches can be flattened: per-token labels, no per-example pooling.
PADDING_FREE_TASKS = ["causal-lm", "token-classification"]
# Tasks whose metrics need the starting policy as a reference (gone once training ends: no test split).
REFERENCE_TASKS = ["preference", "kto"]

RULES: list[Rule] = [
    Rule(
        ModelSource,
        "",
        "[has(self.name), has(self.uri), has(self.path)].filter(x, x).size() == 1",
        "set exactly one of model.name (hub id), model.uri (s3://bucket/prefix) or model.path (a mounted volume)",
        lambda m: _one_of(m.name, m.uri, m.path),
    ),
    Rule(
        TaskSpec,
        "multiLabel",
        "!self.multiLabel || self.type == 'sequence-classification'",
        "multiLabel applies to sequence-classification only; remove it or change task.type",
        lambda t: not t.multi_label or t.type == "sequence-classification",
    ),
    Rule(
        TaskSpec,
        "labels",
        f"!(self.type in {_cel_list(CLASSIFICATION)}) || size(self.labels) >= (self.multiLabel ? 1 : 2)",
        "classification needs its label names in task.labels (at least 2; at least 1 with multiLabel), "
        "in the order of their ids",
        lambda t: t.type not in CLASSIFICATION or len(t.labels) >= (1 if t.multi_label else 2),
    ),
    Rule(
        TaskSpec,
        "labels",
        f"size(self.labels) == 0 || self.type in {_cel_list(CLASSIFICATION)}",
        "task.labels applies to sequence- and token-classification only; remove it",
        lambda t: not t.labels or t.type in CLASSIFICATION,
    ),
    Rule(
        TaskSpec,
        "format",
        "!has(self.format) || self.type == 'causal-lm'",
        "task.format applies to causal-lm only (text, alpaca, chatml, messages); remove it",
        lambda t: t.format is None or t.type == "causal-lm",
    ),
    Rule(
        TaskSpec,
        "columns",
        _roles_cel(),
        _roles_message(),
        lambda t: all(k in TASK_COLUMN_ROLES[t.type] for k in t.columns),
    ),
    Rule(
        DatasetSpec,
        "",
        "has(self.name) != has(self.files)",
        "set exactly one of dataset.name (hub dataset) or dataset.files (jsonl/csv/parquet paths or s3:// URIs)",
        lambda d: _one_of(d.name, d.files),
    ),
    Rule(
        DatasetSpec,
        "evalFraction",
        "!(has(self.evalSplit) && has(self.evalFraction))",
        "set dataset.evalSplit or dataset.evalFraction, not both",
        lambda d: d.eval_split is None or d.eval_fraction is None,
    ),
    Rule(
        DatasetSpec,
        "testSplit",
        "!has(self.testSplit) || has(self.name)",
        "dataset.testSplit names a hub dataset split; with dataset.files set dataset.files.test instead",
        lambda d: d.test_split is None or d.name is not None,
    ),
    Rule(
        FineTuneJobSpec,
        "dataset.testSplit",
        f"!has(self.dataset.testSplit) || !(self.task.type in {_cel_list(REFERENCE_TASKS)})",
        "a test split is not evaluated for tasks preference and kto: their metrics compare the policy with the "
        "starting model, which is gone once training ends; evaluate held-out rows with dataset.evalSplit",
        lambda s: s.dataset.test_split is None or s.task.type not in REFERENCE_TASKS,
    ),
    Rule(
        DatasetSpec,
        "config",
        "!has(self.config) || has(self.name)",
        "dataset.config names a hub dataset configuration and needs dataset.name",
        lambda d: d.config is None or d.name is not None,
    ),
    Rule(
        MethodSpec,
        "lora",
        "!has(self.lora) || self.type in ['lora', 'qlora']",
        "method.lora applies to method.type lora or qlora only; remove it or change the method",
        lambda m: m.lora is None or m.type in ("lora", "qlora"),
    ),
    Rule(
        MethodSpec,
        "quantization",
        "!has(self.quantization) || self.type == 'qlora'",
        "method.quantization applies to method.type qlora only; remove it or use qlora",
        lambda m: m.quantization is None or m.type == "qlora",
    ),
    Rule(
        MethodSpec,
        "promptTuning",
        "!has(self.promptTuning) || self.type == 'prompt-tuning'",
        "method.promptTuning applies to method.type prompt-tuning only; remove it or use prompt-tuning",
        lambda m: m.prompt_tuning is None or m.type == "prompt-tuning",
    ),
    *[
        Rule(
            MethodSpec,
            field,
            f"!has(self.{field}) || self.type == '{method}'",
            f"method.{field} applies to method.type {method} only; remove it or use {method}",
            _options_only_for(attr, method),
        )
        for field, attr, method in (
            ("ia3", "ia3", "ia3"),
            ("pTuning", "p_tuning", "p-tuning"),
            ("prefixTuning", "prefix_tuning", "prefix-tuning"),
            ("freeze", "freeze", "freeze"),
        )
    ],
    Rule(
        LoraOptions,
        "targetModules",
        "!has(self.targetModules) || !self.targetModules.exists(m, m == 'all-linear') || size(self.targetModules) == 1",
        "targetModules all-linear already names every linear layer: give [all-linear] alone or list module names",
        lambda o: not o.target_modules or "all-linear" not in o.target_modules or len(o.target_modules) == 1,
    ),
    Rule(
        LoraOptions,
        "useDora",
        "!self.useDora || !(self.initLoraWeights in ['pissa', 'olora'])",
        "useDora cannot be combined with initLoraWeights pissa or olora: their adapter is converted at the end "
        "into a plain LoRA adapter for the original base, which has no place for DoRA's magnitudes",
        lambda o: not o.use_dora or o.init_lora_weights not in ("pissa", "olora"),
    ),
    Rule(
        MethodSpec,
        "lora.initLoraWeights",
        "!has(self.lora) || self.lora.initLoraWeights != 'loftq' || self.type == 'qlora'",
        "initLoraWeights loftq initialises the adapter to offset the error of 4-bit quantisation: use it with "
        "method qlora (with lora there is no quantisation error; use default, pissa or olora)",
        lambda m: m.lora is None or m.lora.init_lora_weights != "loftq" or m.type == "qlora",
    ),
    Rule(
        MethodSpec,
        "lora.initLoraWeights",
        "!has(self.lora) || self.lora.initLoraWeights != 'pissa' || self.type != 'qlora'",
        "initLoraWeights pissa takes the singular value decomposition of full-precision weights, which peft "
        "cannot do on a 4-bit base: with qlora use olora or loftq, or use pissa with method lora",
        lambda m: m.lora is None or m.lora.init_lora_weights != "pissa" or m.type != "qlora",
    ),
    Rule(
        TrainingSpec,
        "evalSteps",
        "self.evalStrategy != 'steps' || has(self.evalSteps)",
        "evalStrategy steps needs training.evalSteps (evaluate every N steps)",
        lambda t: t.eval_strategy != "steps" or t.eval_steps is not None,
    ),
    Rule(
        TrainingSpec,
        "saveSteps",
        "self.saveStrategy != 'steps' || has(self.saveSteps)",
        "saveStrategy steps needs training.saveSteps (checkpoint every N steps)",
        lambda t: t.save_strategy != "steps" or t.save_steps is not None,
    ),
    Rule(
        TrainingSpec,
        "loadBestModelAtEnd",
        "!self.loadBestModelAtEnd || (self.evalStrategy != 'no' && self.saveStrategy == self.evalStrategy)",
        "loadBestModelAtEnd needs evaluation and checkpoints on the same schedule: set saveStrategy equal to "
        "evalStrategy (not no), or set loadBestModelAtEnd to false",
        lambda t: not t.load_best_model_at_end or (t.eval_strategy != "no" and t.save_strategy == t.eval_strategy),
    ),
    Rule(
        TrainingSpec,
        "saveSteps",
        "!(self.loadBestModelAtEnd && self.saveStrategy == 'steps' && has(self.saveSteps) && has(self.evalSteps))"
        " || self.saveSteps % self.evalSteps == 0",
        "with loadBestModelAtEnd, saveSteps must be a multiple of evalSteps so every checkpoint has a score",
        lambda t: (
            not (t.load_best_model_at_end and t.save_strategy == "steps" and t.save_steps and t.eval_steps)
            or t.save_steps % t.eval_steps == 0
        ),
    ),
    Rule(
        TrainingSpec,
        "earlyStoppingPatience",
        "!has(self.earlyStoppingPatience) || self.loadBestModelAtEnd",
        "earlyStoppingPatience needs loadBestModelAtEnd: true (early stopping keeps the best checkpoint)",
        lambda t: t.early_stopping_patience is None or t.load_best_model_at_end,
    ),
    Rule(
        DeepSpeedOptions,
        "offloadParams",
        "!self.offloadParams || self.stage == 3",
        "deepspeed.offloadParams needs ZeRO stage 3 (only stage 3 partitions parameters)",
        lambda d: not d.offload_params or d.stage == 3,
    ),
    Rule(
        DistributedSpec,
        "deepspeed",
        "!has(self.deepspeed) || self.strategy == 'deepspeed'",
        "distributed.deepspeed applies to strategy deepspeed only; set strategy: deepspeed or remove it",
        lambda d: d.deepspeed is None or d.strategy == "deepspeed",
    ),
    Rule(
        DistributedSpec,
        "fsdp",
        "!has(self.fsdp) || self.strategy == 'fsdp'",
        "distributed.fsdp applies to strategy fsdp only; set strategy: fsdp or remove it",
        lambda d: d.fsdp is None or d.strategy == "fsdp",
    ),
    Rule(
        FineTuneJobSpec,
        "training.packing",
        "!self.training.packing || self.task.type == 'causal-lm'",
        "training.packing applies to causal-lm only; remove it",
        lambda s: not s.training.packing or s.task.type == "causal-lm",
    ),
    Rule(
        FineTuneJobSpec,
        "training.dpo",
        "!has(self.training.dpo) || self.task.type == 'preference'",
        "training.dpo applies to task.type preference only; remove it",
        lambda s: s.training.dpo is None or s.task.type == "preference",
    ),
    Rule(
        FineTuneJobSpec,
        "training.orpo",
        "!has(self.training.orpo) || self.task.type == 'orpo'",
        "training.orpo applies to task.type orpo only; remove it",
        lambda s: s.training.orpo is None or s.task.type == "orpo",
    ),
    Rule(
        FineTuneJobSpec,
        "training.groupByLength",
        "!self.training.groupByLength || self.task.type != 'kto'",
        "training.groupByLength cannot apply to task kto: KTO's KL estimate pairs each row with its neighbour, so "
        "TRL reads the rows in a fixed order (shuffled once by the trainer); remove it",
        lambda s: not s.training.group_by_length or s.task.type != "kto",
    ),
    Rule(
        FineTuneJobSpec,
        "training.kto",
        "!has(self.training.kto) || self.task.type == 'kto'",
        "training.kto applies to task.type kto only; remove it",
        lambda s: s.training.kto is None or s.task.type == "kto",
    ),
    Rule(
        FineTuneJobSpec,
        "task.docStride",
        "self.task.type != 'question-answering' || self.task.docStride < self.training.maxSeqLength",
        "task.docStride must be smaller than training.maxSeqLength (the overlap must fit in a window)",
        lambda s: s.task.type != "question-answering" or s.task.doc_stride < s.training.max_seq_length,
    ),
    Rule(
        FineTuneJobSpec,
        "method.type",
        "self.method.type != 'qlora' || self.resources.gpusPerNode > 0",
        "qlora quantises the base with bitsandbytes on GPUs: set resources.gpusPerNode to 1 or more, "
        "or use method lora on CPU",
        lambda s: s.method.type != "qlora" or s.resources.gpus_per_node > 0,
    ),
    Rule(
        FineTuneJobSpec,
        "distributed.strategy",
        "!(self.distributed.strategy in ['deepspeed', 'fsdp']) || self.resources.gpusPerNode > 0",
        "DeepSpeed and FSDP need GPUs: set resources.gpusPerNode to 1 or more, or use strategy ddp",
        lambda s: s.distributed.strategy not in ("deepspeed", "fsdp") or s.resources.gpus_per_node > 0,
    ),
    Rule(
        FineTuneJobSpec,
        "training.precision",
        "self.resources.gpusPerNode > 0 || self.training.precision in ['auto', 'fp32']",
        "bf16 and fp16 need GPUs: use precision auto or fp32 with gpusPerNode 0",
        lambda s: s.resources.gpus_per_node > 0 or s.training.precision in ("auto", "fp32"),
    ),
    Rule(
        FineTuneJobSpec,
        "training.attention",
        "self.training.attention != 'flash_attention_2' || "
        "(self.resources.gpusPerNode > 0 && self.training.precision != 'fp32')",
        "attention flash_attention_2 runs on GPUs in bf16 or fp16: set resources.gpusPerNode to 1 or more and "
        "precision auto, bf16 or fp16, or use attention auto or sdpa",
        lambda s: (
            s.training.attention != "flash_attention_2"
            or (s.resources.gpus_per_node > 0 and s.training.precision != "fp32")
        ),
    ),
    Rule(
        FineTuneJobSpec,
        "training.attention",
        "self.training.attention != 'flex_attention' || self.resources.gpusPerNode > 0",
        "attention flex_attention trains on GPUs only (torch's FlexAttention has no backward pass on CPU): set "
        "resources.gpusPerNode to 1 or more, or use attention auto, sdpa or eager",
        lambda s: s.training.attention != "flex_attention" or s.resources.gpus_per_node > 0,
    ),
    Rule(
        FineTuneJobSpec,
        "training.paddingFree",
        f"!self.training.paddingFree || self.task.type in {_cel_list(PADDING_FREE_TASKS)}",
        "training.paddingFree applies to causal-lm and token-classification only: sequence-classification and "
        "question-answering heads read one position per example (the first token, the answer span), which a "
        "flattened batch does not keep, and TRL 1.16's DPOTrainer has padding-free turned off; remove it",
        lambda s: not s.training.padding_free or s.task.type in PADDING_FREE_TASKS,
    ),
    Rule(
        FineTuneJobSpec,
        "training.paddingFree",
        "!(self.training.paddingFree && self.task.type == 'token-classification') || "
        "self.training.attention == 'flash_attention_2'",
        "training.paddingFree for token-classification needs attention flash_attention_2 (on a GPU): under sdpa, "
        "eager and flex_attention transformers builds an encoder's attention mask without the position ids, so "
        "the flattened examples would attend to each other",
        lambda s: (
            not (s.training.padding_free and s.task.type == "token-classification")
            or s.training.attention == "flash_attention_2"
        ),
    ),
    Rule(
        FineTuneJobSpec,
        "training.paddingFree",
        "!self.training.paddingFree || self.method.type != 'prompt-tuning'",
        "training.paddingFree does not combine with method prompt-tuning: the soft prompt is prepended to every "
        "row, so a flattened batch would get one prompt for all its examples; remove paddingFree",
        lambda s: not s.training.padding_free or s.method.type != "prompt-tuning",
    ),
    Rule(
        FineTuneJobSpec,
        "training.ligerKernels",
        "!self.training.ligerKernels || self.resources.gpusPerNode > 0",
        "training.ligerKernels are Triton GPU kernels: set resources.gpusPerNode to 1 or more, or remove it",
        lambda s: not s.training.liger_kernels or s.resources.gpus_per_node > 0,
    ),
    Rule(
        FineTuneJobSpec,
        "training.compile",
        "!self.training.compile || self.resources.gpusPerNode > 0",
        "training.compile (torch.compile) is for GPUs: on CPU it compiles for minutes for little gain; set "
        "resources.gpusPerNode to 1 or more, or remove it",
        lambda s: not s.training.compile or s.resources.gpus_per_node > 0,
    ),
    Rule(
        FineTuneJobSpec,
        "output.saveMergedModel",
        "!self.output.saveMergedModel || self.method.type in ['lora', 'qlora']",
        "output.saveMergedModel merges a LoRA adapter into its base: it needs method lora or qlora",
        lambda s: not s.output.save_merged_model or s.method.type in ("lora", "qlora"),
    ),
    *[
        Rule(
            FineTuneJobSpec,
            "method.type",
            f"!(self.task.type == '{task}' && self.method.type == '{method}')",
            f"method {method} is not supported for task {task}: {reason}",
            _pair_allowed(task, method),
        )
        for (task, method), reason in UNSUPPORTED.items()
    ],
    # Transition rules (oldSelf): what may change once a job exists, and when (finetune_api.changes).
    *[Rule(FineTuneJobSpec, field, cel, message, None) for field, cel, message in transition_rules()],
]


def rules_for(scope: type) -> list[Rule]:
    """The rules attached to one model class, in declaration order."""
    return [r for r in RULES if r.scope is scope]
