"""QLoRA really quantises the base to 4 bits and really trains on CPU (bitsandbytes' CPU backend).

The base of the tiny Llama loads through the qlora method exactly as a run loads it; the tests look
at the bitsandbytes layers themselves: their type, quantisation data type, nested (double)
quantisation, the dtype their matmuls compute in, and at the trainable parameters peft reports.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest

from finetune_api.validation import parse_spec
from finetune_trainer.errors import ConfigError
from tests.trainer import tiny, tiny_causal

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Directory of the tiny random Llama and its locally trained tokenizer."""
    return tiny_causal.cached_tiny_causal(tmp_path_factory)


def qlora_spec(model_dir: Path, quantization: dict[str, Any] | None = None, **extra: Any) -> Any:
    method: dict[str, Any] = {"type": "qlora", "lora": {"r": 8, "alpha": 16, "dropout": 0.0}}
    if quantization is not None:
        method["quantization"] = quantization
    task = {"type": "causal-lm", "format": "text"}
    return parse_spec(tiny_causal.causal_spec(model_dir, task, {"train": "/data/train.jsonl"}, method, **extra))


def load_base(spec: Any, model_dir: Path) -> Any:
    """The base as a qlora run loads it (before adapters)."""
    from finetune_trainer.methods.qlora import QloraMethod
    from finetune_trainer.tasks.causal_lm import CausalLmTask

    return CausalLmTask().load_model(spec, str(model_dir), QloraMethod().load_kwargs(spec))


def prepared(spec: Any, model_dir: Path) -> Any:
    """The base with LoRA attached, as the qlora method prepares it."""
    from finetune_trainer.methods.qlora import QloraMethod

    return QloraMethod().prepare(spec, load_base(spec, model_dir), "CAUSAL_LM")


def test_every_projection_is_a_4bit_layer_and_the_head_is_not(tiny_llama: Path) -> None:
    import bitsandbytes as bnb
    import torch

    model = load_base(qlora_spec(tiny_llama), tiny_llama)
    assert model.is_loaded_in_4bit
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] in PROJECTIONS:
            assert isinstance(module, bnb.nn.Linear4bit), name
            assert isinstance(module.weight, bnb.nn.Params4bit), name
            assert module.weight.dtype == torch.uint8  # two 4-bit values per byte
            assert module.weight.quant_state.quant_type == "nf4", name
    # The output head and the embeddings stay in full precision (bitsandbytes keeps lm_head unquantised).
    assert type(model.lm_head) is torch.nn.Linear
    assert model.get_input_embeddings().weight.dtype == torch.float32


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
def test_quant_type_is_honoured(tiny_llama: Path, quant_type: str) -> None:
    model = load_base(qlora_spec(tiny_llama, {"quantType": quant_type}), tiny_llama)
    states = {
        m.weight.quant_state.quant_type
        for m in model.modules()
        if getattr(getattr(m, "weight", None), "quant_state", None) is not None
    }
    assert states == {quant_type}


@pytest.mark.parametrize("double_quant", [True, False])
def test_double_quant_quantises_the_scales(tiny_llama: Path, double_quant: bool) -> None:
    model = load_base(qlora_spec(tiny_llama, {"doubleQuant": double_quant}), tiny_llama)
    layer = model.model.layers[0].self_attn.q_proj
    state = layer.weight.quant_state
    assert state.nested is double_quant
    if double_quant:
        # The per-block absmax scales are themselves 8-bit quantised, with their own (fp32) scales in state2.
        assert state.state2 is not None and state.absmax.dtype.itemsize == 1
    else:
        assert state.state2 is None


@pytest.mark.parametrize("compute_dtype", ["bfloat16", "float32"])
def test_matmuls_compute_in_the_configured_dtype(
    tiny_llama: Path, compute_dtype: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import bitsandbytes as bnb
    import torch

    model = load_base(qlora_spec(tiny_llama, {"computeDtype": compute_dtype}), tiny_llama)
    expected = getattr(torch, compute_dtype)
    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert {m.compute_dtype for m in layers} == {expected}

    seen: list[torch.dtype] = []
    original = bnb.matmul_4bit

    def recording(a: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        seen.append(a.dtype)
        return original(a, *args, **kwargs)

    monkeypatch.setattr(bnb, "matmul_4bit", recording)
    model.train()  # the training path (dequantise, then matmul), as a QLoRA run uses it
    model(input_ids=torch.tensor([[5, 6, 7, 8]]))
    assert len(seen) == len(layers) and set(seen) == {expected}


def test_trainable_parameters_are_the_lora_matrices_only(tiny_llama: Path) -> None:
    from finetune_trainer.methods.base import count_parameters
    from finetune_trainer.methods.lora import LoraMethod

    spec = qlora_spec(tiny_llama)
    model = prepared(spec, tiny_llama)
    trainable, total = count_parameters(model)
    peft_trainable, peft_total = model.get_nb_trainable_parameters()
    assert (trainable, total) == (peft_trainable, peft_total)
    # LoRA on the lora method's default targets (q_proj, v_proj): r * (in + out) per matrix.
    targets = model.peft_config["default"].target_modules
    assert set(targets) == set(LoraMethod().peft_config(spec, model, "CAUSAL_LM").target_modules or [])
    hidden, kv = 64, 32  # 2 key/value heads of 16
    per_layer = 8 * (hidden + hidden) + 8 * (hidden + kv)
    assert trainable == 2 * per_layer
    # The 4-bit weights count by the values they hold: the total is the unquantised model's size.
    from transformers import AutoModelForCausalLM

    assert total == sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(tiny_llama).parameters()) + trainable
    assert all("lora_" in n for n, p in model.named_parameters() if p.requires_grad)


def test_gradients_still_flow_after_an_evaluation(tiny_llama: Path) -> None:
    # bitsandbytes repacks 4-bit weights for its CPU inference kernel on the first no-grad eval forward;
    # that kernel has no backward, so training after an evaluation would get no gradients at all.
    import torch

    model = prepared(qlora_spec(tiny_llama), tiny_llama)
    ids = torch.tensor([[5, 6, 7, 8, 9, 10], [11, 12, 13, 14, 15, 16]])

    def gradients() -> dict[str, Any]:
        model.train()
        model.zero_grad()
        model(input_ids=ids, labels=ids).loss.backward()
        return {n: p.grad for n, p in model.named_parameters() if p.requires_grad}

    before = gradients()
    model.eval()
    with torch.no_grad():
        model(input_ids=ids)
    after = gradients()
    assert all(g is not None for g in after.values()), [n for n, g in after.items() if g is None]
    for name, grad in before.items():
        torch.testing.assert_close(after[name], grad, msg=name)


def test_load_options_per_strategy(tiny_llama: Path) -> None:
    import torch

    from finetune_trainer.methods.qlora import QloraMethod

    plain = QloraMethod().load_kwargs(qlora_spec(tiny_llama))
    config = plain["quantization_config"]
    assert config.load_in_4bit and config.bnb_4bit_quant_type == "nf4" and config.bnb_4bit_use_double_quant
    assert config.bnb_4bit_compute_dtype == torch.bfloat16
    assert config.bnb_4bit_quant_storage == torch.uint8
    assert "device_map" not in plain  # no GPU here: bitsandbytes quantises on the CPU
    # Sharding strategies need the packed weights stored in the dtype of the parameters they shard with.
    for distributed in ({"strategy": "deepspeed", "deepspeed": {"stage": 3}}, {"strategy": "fsdp"}):
        spec = parse_spec(
            {
                **tiny_causal.causal_spec(tiny_llama, {"type": "causal-lm"}, {"train": "x"}, {"type": "qlora"}),
                "distributed": distributed,
            }
        )
        assert QloraMethod().load_kwargs(spec)["quantization_config"].bnb_4bit_quant_storage == torch.bfloat16
    zero2 = parse_spec(
        {
            **tiny_causal.causal_spec(tiny_llama, {"type": "causal-lm"}, {"train": "x"}, {"type": "qlora"}),
            "distributed": {"strategy": "deepspeed", "deepspeed": {"stage": 2}},
        }
    )
    assert QloraMethod().load_kwargs(zero2)["quantization_config"].bnb_4bit_quant_storage == torch.uint8


@pytest.mark.slow
def test_qlora_trains_on_cpu_through_evaluations_and_checkpointing(tiny_llama: Path, tmp_path: Path) -> None:
    import bitsandbytes as bnb

    from finetune_trainer import engine

    rows = tiny_causal.text_rows(64)
    files = {
        "train": str(tiny.write_jsonl(tmp_path / "train.jsonl", rows)),
        "validation": str(tiny.write_jsonl(tmp_path / "val.jsonl", tiny_causal.text_rows(16, seed=1))),
    }
    spec = parse_spec(
        tiny_causal.causal_spec(
            tiny_llama,
            {"type": "causal-lm", "format": "text"},
            files,
            {"type": "qlora", "quantization": {"quantType": "nf4", "doubleQuant": True, "computeDtype": "bfloat16"}},
            maxSteps=24,
            learningRate=2e-2,
            gradientCheckpointing=True,
            evalStrategy="steps",
            evalSteps=6,
            saveStrategy="steps",
            saveSteps=6,
            loadBestModelAtEnd=True,
        )
    )
    result = engine.train(spec, tmp_path / "out")
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in result.model.modules())
    history = result.trainer.state.log_history
    # The evaluations every 6 steps (the last entry is the final evaluation of the best checkpoint).
    evals = [e["eval_loss"] for e in history if "eval_loss" in e][:-1]
    assert len(evals) == 4
    # Each is lower than the one before: training kept working after every evaluation.
    assert all(b < a for a, b in itertools.pairwise(evals)), evals
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["trainable_parameters"] < 0.05 * metrics["total_parameters"]


def loftq_spec(tiny_llama: Path) -> Any:
    return parse_spec(
        tiny_causal.causal_spec(
            tiny_llama,
            {"type": "causal-lm", "format": "text"},
            {"train": "/data/train.jsonl"},
            {"type": "qlora", "lora": {"r": 8, "alpha": 8, "initLoraWeights": "loftq"}},
        )
    )


def test_loftq_without_a_gpu_is_refused_naming_the_field(tiny_llama: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ConfigError, match="initLoraWeights: peft computes the LoftQ initialisation on a CUDA GPU"):
        prepared(loftq_spec(tiny_llama), tiny_llama)


def test_loftq_starts_the_adapter_at_the_quantisation_error(tiny_llama: Path) -> None:
    import bitsandbytes as bnb
    import torch
    from safetensors.torch import load_file

    if not torch.cuda.is_available():
        pytest.skip("peft computes LoftQ on CUDA only")
    model = prepared(loftq_spec(tiny_llama), tiny_llama)
    original = load_file(str(tiny_llama / "model.safetensors"))
    layer = model.get_base_model().model.layers[0].self_attn.q_proj
    full = original["model.layers.0.self_attn.q_proj.weight"].float()
    quantised = bnb.functional.dequantize_4bit(layer.weight.data, layer.weight.quant_state).float()
    adapter = layer.scaling["default"] * layer.lora_B["default"].weight @ layer.lora_A["default"].weight
    # Plain LoRA starts at B = 0 (base alone); LoftQ's start makes base + adapter closer to the 16-bit weights.
    assert torch.count_nonzero(layer.lora_B["default"].weight) > 0
    assert torch.linalg.norm(full - quantised - adapter) < 0.9 * torch.linalg.norm(full - quantised)
