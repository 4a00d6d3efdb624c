"""The memory estimate's model states are exact: counted from config.json, checked against real models.

For every method the tiny models load exactly as a run loads them (task unit, then method unit);
the estimate, computed from the saved ``config.json`` alone, must equal to the byte:

* the trainable and total parameters as peft counts them;
* the bytes of every parameter (4-bit weights with their quantisation state);
* the bytes of the gradients after one backward pass;
* the bytes of the optimizer state after one real optimizer step.

Shape tables are also checked against models transformers builds on the meta device for every
supported family and task, and bert-base with LoRA r=8 on query/value gives peft's 296,450.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from finetune_api.estimate import estimate_memory, model_tensors
from finetune_api.model_shapes import model_shape
from finetune_api.validation import parse_spec
from tests.trainer import tiny, tiny_causal

FAMILIES = {
    "bert": ("BertConfig", {}),
    "roberta": ("RobertaConfig", {"vocab_size": 1000, "num_hidden_layers": 2}),
    "llama": ("LlamaConfig", {}),
    "llama-tied": ("LlamaConfig", {"tie_word_embeddings": True}),
    "mistral": ("MistralConfig", {}),
    "qwen2": ("Qwen2Config", {}),
    "qwen3": ("Qwen3Config", {"head_dim": 64}),
}
DECODER_SIZE = {
    "vocab_size": 1000,
    "hidden_size": 256,
    "intermediate_size": 512,
    "num_hidden_layers": 2,
    "num_attention_heads": 8,
    "num_key_value_heads": 2,
}
AUTO_CLASSES = {
    "sequence-classification": "AutoModelForSequenceClassification",
    "token-classification": "AutoModelForTokenClassification",
    "question-answering": "AutoModelForQuestionAnswering",
    "causal-lm": "AutoModelForCausalLM",
}


def _config(family: str, task: str) -> Any:
    import transformers

    name, extra = FAMILIES[family]
    size = DECODER_SIZE if name != "BertConfig" and name != "RobertaConfig" else {}
    labels = 2 if task == "question-answering" else 3
    return getattr(transformers, name)(**{**size, **extra, "num_labels": labels})


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("task", list(AUTO_CLASSES))
def test_shape_table_matches_the_model_transformers_builds(family: str, task: str) -> None:
    import torch
    import transformers

    config = _config(family, task)
    if config.model_type in ("bert", "roberta") and task == "causal-lm":
        pytest.skip("encoders are not causal LMs")
    with torch.device("meta"):
        model = getattr(transformers, AUTO_CLASSES[task]).from_config(config)
    real = {name: tuple(p.shape) for name, p in model.named_parameters()}
    ours = {p.name: p.shape for p in model_shape(config.to_dict(), task, labels=3).params}
    assert ours == real


def _bert_base_spec(method: dict[str, Any]) -> Any:
    return parse_spec(
        {
            "model": {"name": "bert-base-uncased"},
            "task": {"type": "sequence-classification", "labels": ["neg", "pos"]},
            "dataset": {"name": "imdb"},
            "method": method,
            "resources": {"gpusPerNode": 0},
        }
    )


def test_bert_base_lora_r8_query_value_is_peft_count() -> None:
    from transformers import BertConfig

    spec = _bert_base_spec({"type": "lora", "lora": {"r": 8, "targetModules": ["query", "value"]}})
    estimate = estimate_memory(spec, BertConfig().to_dict())
    assert (estimate.trainable, estimate.total) == (296_450, 109_780_228)


# ---- real tiny models, loaded as a run loads them ----


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_causal.cached_tiny_causal(tmp_path_factory)


def _bert_spec(model_dir: Path, method: dict[str, Any], optimizer: str = "adamw_torch") -> Any:
    task = {"type": "sequence-classification", "labels": ["neg", "pos"]}
    return parse_spec(tiny.spec_dict(model_dir, task, {"train": "x.jsonl"}, method, optimizer=optimizer))


def _llama_spec(model_dir: Path, method: dict[str, Any], optimizer: str = "adamw_torch") -> Any:
    task = {"type": "causal-lm", "format": "text"}
    return parse_spec(tiny_causal.causal_spec(model_dir, task, {"train": "x.jsonl"}, method, optimizer=optimizer))


def _prepared(spec: Any, model_dir: Path) -> Any:
    from finetune_trainer.methods import get_method
    from finetune_trainer.tasks import get_task

    method = get_method(spec.method.type)
    model = get_task(spec.task.type).load_model(spec, str(model_dir), method.load_kwargs(spec))
    return method.prepare(spec, model, get_task(spec.task.type).peft_task_type)


def _one_step(model: Any, spec: Any, inputs: dict[str, Any]) -> tuple[int, int]:
    """(gradient bytes, optimizer-state bytes) after one backward pass and one step of the spec's optimizer."""
    import torch

    from finetune_trainer.memory import gradient_bytes, optimizer_state_bytes

    params = [p for p in model.parameters() if p.requires_grad]
    name = spec.training.optimizer
    if name.startswith("adamw_torch"):
        optimizer: Any = torch.optim.AdamW(params, lr=1e-3, foreach=name == "adamw_torch")
    elif name == "adafactor":
        from transformers.optimization import Adafactor

        optimizer = Adafactor(params, lr=1e-3, scale_parameter=False, relative_step=False)
    elif name == "sgd":
        optimizer = torch.optim.SGD(params, lr=1e-3)
    else:
        import bitsandbytes as bnb

        optimizer = bnb.optim.AdamW8bit(params, lr=1e-3)
    model.train()
    model(**inputs).loss.backward()
    grads = gradient_bytes(model)
    optimizer.step()
    return grads, optimizer_state_bytes(optimizer)


def _config_of(model_dir: Path) -> dict[str, Any]:
    return json.loads((model_dir / "config.json").read_text())


def _check(spec: Any, model_dir: Path, inputs: dict[str, Any]) -> None:
    from finetune_trainer.memory import parameter_bytes
    from finetune_trainer.methods.base import count_parameters

    model = _prepared(spec, model_dir)
    estimate = estimate_memory(spec, _config_of(model_dir))
    assert (estimate.trainable, estimate.total) == count_parameters(model)
    assert estimate.model_states.weights == parameter_bytes(model)
    grads, states = _one_step(model, spec, inputs)
    assert estimate.model_states.gradients == grads
    assert estimate.model_states.optimizer_states == states


BERT_METHODS = [
    {"type": "full"},
    {"type": "feature-extraction"},
    {"type": "freeze", "freeze": {"trainableLayers": 1}},
    {"type": "lora", "lora": {"r": 4, "targetModules": ["query", "value", "dense"]}},
    {"type": "lora", "lora": {"r": 4, "targetModules": ["all-linear"], "useDora": True}},
    {"type": "prompt-tuning", "promptTuning": {"numVirtualTokens": 6}},
    {"type": "ia3"},
    {"type": "prefix-tuning", "prefixTuning": {"numVirtualTokens": 5}},
    {"type": "p-tuning", "pTuning": {"numVirtualTokens": 5, "encoderType": "lstm", "encoderHiddenSize": 24}},
]


@pytest.mark.parametrize("method", BERT_METHODS, ids=lambda m: f"{m['type']}-{m.get('lora', {})}")
def test_bert_model_states_are_exact(tiny_bert: Path, method: dict[str, Any]) -> None:
    import torch

    inputs = {"input_ids": torch.tensor([[101, 2204, 3185, 102]] * 2), "labels": torch.tensor([0, 1])}
    _check(_bert_spec(tiny_bert, method), tiny_bert, inputs)


LLAMA_METHODS = [
    {"type": "full"},
    {"type": "lora", "lora": {"r": 8, "targetModules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj"]}},
    {"type": "lora", "lora": {"r": 4, "targetModules": ["all-linear"], "modulesToSave": ["embed_tokens"]}},
    {"type": "freeze", "freeze": {"trainableLayers": 1}},
    {"type": "prompt-tuning", "promptTuning": {"numVirtualTokens": 4}},
    {
        "type": "ia3",
        "ia3": {"targetModules": ["k_proj", "v_proj", "up_proj", "down_proj"], "feedforwardModules": ["down_proj"]},
    },
    {"type": "prefix-tuning", "prefixTuning": {"numVirtualTokens": 5, "projection": True, "encoderHiddenSize": 24}},
    {"type": "p-tuning", "pTuning": {"numVirtualTokens": 5}},
]
QLORA_METHODS = [
    {"type": "qlora", "lora": {"r": 8}, "quantization": {"doubleQuant": True}},
    {"type": "qlora", "lora": {"r": 4, "useDora": True}, "quantization": {"doubleQuant": False, "quantType": "fp4"}},
]


@pytest.mark.parametrize("method", LLAMA_METHODS, ids=lambda m: f"{m['type']}-{m.get('lora', {})}")
def test_llama_model_states_are_exact(tiny_llama: Path, method: dict[str, Any]) -> None:
    import torch

    ids = torch.tensor([[5, 6, 7, 8, 9, 10]] * 2)
    _check(_llama_spec(tiny_llama, method), tiny_llama, {"input_ids": ids, "labels": ids})


@pytest.mark.parametrize("optimizer", ["adamw_torch_fused", "adafactor", "sgd", "adamw_bnb_8bit"])
def test_optimizer_states_are_exact_for_every_optimizer(tiny_llama: Path, optimizer: str) -> None:
    import torch

    ids = torch.tensor([[5, 6, 7, 8, 9, 10]] * 2)
    _check(_llama_spec(tiny_llama, {"type": "full"}, optimizer), tiny_llama, {"input_ids": ids, "labels": ids})


def test_qlora_tensors_are_4bit_where_transformers_quantises(tiny_llama: Path) -> None:
    import bitsandbytes as bnb

    spec = _llama_spec(tiny_llama, {"type": "qlora"})
    model = _prepared(spec, tiny_llama)
    quantised = sum(m.weight.numel() * 2 for m in model.modules() if isinstance(m, bnb.nn.Linear4bit))
    tensors = model_tensors(spec, model_shape(_config_of(tiny_llama), "causal-lm"))
    assert sum(t.numel for t in tensors if t.quantised) == quantised


@pytest.mark.parametrize(
    ("task", "method"),
    [("causal-lm", QLORA_METHODS[0]), ("causal-lm", QLORA_METHODS[1]), ("reward-modeling", QLORA_METHODS[0])],
    ids=["nf4-double-quant", "fp4-dora", "reward-model-nf4"],
)
def test_qlora_model_states_are_exact_in_a_real_run(
    tiny_llama: Path, tmp_path: Path, task: str, method: dict[str, Any]
) -> None:
    """Through the trainer's own run (TRL casts a quantised model's adapters to bfloat16, and the reward model's
    score head copy too): measured at the first optimizer step, on the model and optimizer the Trainer holds."""
    from transformers import TrainerCallback

    from finetune_trainer import engine
    from finetune_trainer.memory import gradient_bytes, optimizer_state_bytes, parameter_bytes
    from finetune_trainer.methods.base import count_parameters

    seen: dict[str, Any] = {}

    class Measure(TrainerCallback):
        def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            seen.setdefault("counts", count_parameters(kwargs["model"]))
            seen.setdefault("weights", parameter_bytes(kwargs["model"]))
            seen.setdefault("gradients", gradient_bytes(kwargs["model"]))

        def on_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            seen.setdefault("optimizer", optimizer_state_bytes(kwargs["optimizer"]))

    rows = tiny_causal.text_rows(8) if task == "causal-lm" else tiny_causal.preference_rows(8)
    train = tiny.write_jsonl(tmp_path / "train.jsonl", rows)
    task_spec = {"type": task, **({"format": "text"} if task == "causal-lm" else {})}
    spec = parse_spec(tiny_causal.causal_spec(tiny_llama, task_spec, {"train": str(train)}, method, maxSteps=1))
    engine.train(spec, tmp_path / "out", callbacks=[Measure()])
    estimate = estimate_memory(spec, _config_of(tiny_llama))
    assert seen["counts"] == (estimate.trainable, estimate.total)
    assert seen["weights"] == estimate.model_states.weights
    assert seen["gradients"] == estimate.model_states.gradients
    assert seen["optimizer"] == estimate.model_states.optimizer_states


def test_ia3_without_a_default_for_the_architecture_is_refused_not_guessed() -> None:
    from transformers import XLMRobertaConfig

    from finetune_api.model_shapes import EstimateUnavailable

    spec = _bert_base_spec({"type": "ia3"})
    config = {**XLMRobertaConfig(vocab_size=1000).to_dict(), "model_type": "roberta"}
    assert estimate_memory(spec, config).trainable > 0  # roberta has peft's default modules
    with pytest.raises(EstimateUnavailable, match=r"method\.ia3\.targetModules: no default modules for model type"):
        estimate_memory(spec, {**config, "model_type": "xlm-roberta"})


# ---- the tasks beyond the seed's: scalar heads, pairwise batches, reference copies ----

NEW_TASK_CLASSES = {
    "regression": ("AutoModelForSequenceClassification", 1),
    "reward-modeling": ("AutoModelForSequenceClassification", 1),
    "orpo": ("AutoModelForCausalLM", None),
    "kto": ("AutoModelForCausalLM", None),
}


@pytest.mark.parametrize("family", ["bert", "llama", "llama-tied", "qwen3"])
@pytest.mark.parametrize("task", list(NEW_TASK_CLASSES))
def test_shape_table_of_the_added_tasks_matches_transformers(family: str, task: str) -> None:
    import torch
    import transformers

    auto, labels = NEW_TASK_CLASSES[task]
    config = _config(family, "sequence-classification")
    if config.model_type == "bert" and auto == "AutoModelForCausalLM":
        pytest.skip("encoders are not causal LMs")
    config.num_labels = labels or 2
    with torch.device("meta"):
        model = getattr(transformers, auto).from_config(config)
    real = {name: tuple(p.shape) for name, p in model.named_parameters()}
    ours = {p.name: p.shape for p in model_shape(config.to_dict(), task, labels=labels or 2).params}
    assert ours == real


@pytest.mark.parametrize("method", [{"type": "full"}, {"type": "lora", "lora": {"r": 4}}], ids=["full", "lora"])
@pytest.mark.parametrize("task", ["regression", "reward-modeling"])
def test_scalar_head_tasks_model_states_are_exact(tiny_bert: Path, task: str, method: dict[str, Any]) -> None:
    import torch

    spec = parse_spec(tiny.spec_dict(tiny_bert, {"type": task}, {"train": "x.jsonl"}, method, optimizer="adamw_torch"))
    inputs = {"input_ids": torch.tensor([[101, 2204, 3185, 102]] * 2), "labels": torch.tensor([0.2, 0.9])}
    _check(spec, tiny_bert, inputs)


@pytest.mark.parametrize("task", ["orpo", "kto", "reward-modeling"])
def test_decoder_alignment_tasks_model_states_are_exact(tiny_llama: Path, task: str) -> None:
    import torch

    method = {"type": "lora", "lora": {"r": 4}}
    files = {"train": "x.jsonl"}
    spec = parse_spec(tiny_causal.causal_spec(tiny_llama, {"type": task}, files, method, optimizer="adamw_torch"))
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]] * 2)
    labels = torch.tensor([0.1, 0.7]) if task == "reward-modeling" else ids
    _check(spec, tiny_llama, {"input_ids": ids, "labels": labels})


@pytest.mark.parametrize("task", ["preference", "kto"])
def test_a_reference_policy_is_a_frozen_copy_only_without_an_adapter(tiny_llama: Path, task: str) -> None:
    """DPO and KTO full fine-tuning keep TRL's frozen copy of the model; with LoRA the reference is the base with
    the adapter off (no second model). ORPO has no reference at all."""
    from finetune_trainer.memory import parameter_bytes

    def estimate(task: str, method: dict[str, Any]) -> Any:
        spec = parse_spec(tiny_causal.causal_spec(tiny_llama, {"type": task}, {"train": "x.jsonl"}, method))
        return spec, estimate_memory(spec, _config_of(tiny_llama))

    spec, full = estimate(task, {"type": "full"})
    policy = parameter_bytes(_prepared(spec, tiny_llama))
    assert full.model_states.weights == 2 * policy and full.per_gpu.weights == 2 * policy
    spec, lora = estimate(task, {"type": "lora", "lora": {"r": 4}})
    assert lora.model_states.weights == parameter_bytes(_prepared(spec, tiny_llama))
    _, orpo = estimate("orpo", {"type": "full"})
    assert orpo.model_states.weights == policy


@pytest.mark.parametrize(
    ("distributed", "divisor"),
    [
        ({"strategy": "ddp"}, 1),
        ({"strategy": "deepspeed", "deepspeed": {"stage": 2}}, 1),
        ({"strategy": "deepspeed", "deepspeed": {"stage": 3}}, 4),
        ({"strategy": "fsdp", "fsdp": {"shardingStrategy": "full_shard"}}, 4),
        ({"strategy": "fsdp", "fsdp": {"shardingStrategy": "shard_grad_op"}}, 1),
    ],
    ids=["ddp", "zero2", "zero3", "fsdp-full", "fsdp-grad-op"],
)
def test_the_reference_copy_is_held_per_gpu_as_the_policys_weights_are(
    tiny_llama: Path, distributed: dict[str, Any], divisor: int
) -> None:
    from finetune_api.estimate import reference_bytes

    raw = tiny_causal.causal_spec(tiny_llama, {"type": "preference"}, {"train": "x.jsonl"}, {"type": "full"})
    spec = parse_spec({**raw, "distributed": distributed, "resources": {**raw["resources"], "gpusPerNode": 4}})
    copy, per_gpu = reference_bytes(spec, model_tensors(spec, model_shape(_config_of(tiny_llama), "preference")))
    assert copy > 0 and per_gpu == copy // divisor
