"""The spec's throughput options: attention, padding-free, Liger, compile, fused AdamW.

Refusals the API server makes (CEL) are in tests/invalid_specs.py; these pin what the trainer decides on
its device: the optimiser auto picks, the attention auto picks and its fallbacks, the GPU-only options on a
CPU process, and a padding-free run end to end with its choices in the status and the resolved spec.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from finetune_api.spec import TrainingSpec
from finetune_api.validation import parse_spec
from finetune_trainer import kernels
from finetune_trainer.arguments import DeviceCapability, resolve_optimizer, training_kwargs
from finetune_trainer.errors import ConfigError
from finetune_trainer.world import WorldInfo
from tests.trainer import tiny, tiny_causal

CPU = DeviceCapability(kind="cpu")
GPU = DeviceCapability(kind="gpu", bf16=True)


def _spec(training: dict[str, Any] | None = None, gpus: int = 1, task: str = "causal-lm") -> Any:
    return parse_spec(
        {
            "model": {"name": "m"},
            "task": {"type": task, **({"labels": ["O", "B-X"]} if task == "token-classification" else {})},
            "dataset": {"name": "d"},
            "training": training or {},
            "resources": {"gpusPerNode": gpus},
        }
    )


def _kwargs(training: dict[str, Any], device: DeviceCapability) -> dict[str, Any]:
    return training_kwargs(
        _spec(training),
        "/out",
        world=WorldInfo(),
        device=device,
        metric_for_best_model="eval_loss",
        greater_is_better=False,
    )


def test_the_default_optimizer_is_fused_adamw_on_gpus_and_adamw_on_cpu() -> None:
    assert TrainingSpec().optimizer == "auto"
    assert _kwargs({}, GPU)["optim"] == "adamw_torch_fused"
    assert _kwargs({}, CPU)["optim"] == "adamw_torch"


@pytest.mark.parametrize("explicit", ["adamw_torch", "paged_adamw_8bit", "adafactor"])
def test_an_explicit_optimizer_is_kept_on_every_device(explicit: str) -> None:
    assert resolve_optimizer(explicit, GPU) == resolve_optimizer(explicit, CPU) == explicit


def test_liger_and_compile_become_the_trainer_s_own_switches() -> None:
    kwargs = _kwargs({"ligerKernels": True, "compile": True}, GPU)
    assert kwargs["use_liger_kernel"] is True
    assert kwargs["torch_compile"] is True
    plain = _kwargs({}, GPU)
    assert "use_liger_kernel" not in plain and "torch_compile" not in plain


@pytest.mark.parametrize(
    ("device", "precision", "flash_attn", "expected"),
    [
        (GPU, "bf16", True, ["flash_attention_2", "sdpa", "eager"]),
        (GPU, "fp16", True, ["flash_attention_2", "sdpa", "eager"]),
        (GPU, "bf16", False, ["sdpa", "eager"]),  # no flash-attn package in the image
        (GPU, "fp32", True, ["sdpa", "eager"]),  # flash attention has no fp32 kernels
        (CPU, "fp32", True, ["sdpa", "eager"]),
    ],
)
def test_auto_attention_tries_the_fastest_the_device_and_dtype_allow_first(
    device: DeviceCapability, precision: str, flash_attn: bool, expected: list[str]
) -> None:
    assert kernels.attention_candidates("auto", device, precision, flash_attn) == expected


def test_an_explicit_attention_is_the_only_candidate() -> None:
    assert kernels.attention_candidates("eager", GPU, "bf16", True) == ["eager"]


@pytest.mark.parametrize(
    ("device", "precision", "flash_attn", "fragment"),
    [(CPU, "fp32", True, "runs on cpu in fp32"), (GPU, "bf16", False, "flash-attn package")],
)
def test_flash_attention_the_process_cannot_run_is_refused_before_loading(
    device: DeviceCapability, precision: str, flash_attn: bool, fragment: str
) -> None:
    with pytest.raises(ConfigError, match=fragment) as err:
        kernels.check_attention("flash_attention_2", device, precision, flash_attn)
    assert "training.attention" in str(err.value)


class _Model:
    """Stands in for a model class that refuses sdpa, the way transformers refuses it while building the model."""

    def __init__(self, attention: str) -> None:
        if attention == "sdpa":
            raise ValueError("_Model does not support an attention implementation through sdpa yet")
        self.attention = attention


def test_auto_falls_back_to_eager_when_the_model_refuses_sdpa() -> None:
    loaded = kernels.load_with_attention(lambda extra: _Model(extra["attn_implementation"]), _spec(gpus=0), CPU, "fp32")
    assert loaded.attention == "eager"


def test_an_explicit_attention_the_model_refuses_names_the_field() -> None:
    with pytest.raises(ConfigError, match=r"training.attention: the model does not support sdpa"):
        kernels.load_with_attention(
            lambda extra: _Model(extra["attn_implementation"]), _spec({"attention": "sdpa"}, gpus=0), CPU, "fp32"
        )


def test_other_load_errors_are_not_taken_for_attention_refusals() -> None:
    def broken(extra: dict[str, Any]) -> Any:
        raise ValueError("config.json is malformed")

    with pytest.raises(ValueError, match="malformed"):
        kernels.load_with_attention(broken, _spec(gpus=0), CPU, "fp32")


@pytest.mark.parametrize("field", ["ligerKernels", "compile"])
def test_gpu_only_options_on_a_cpu_process_are_refused(field: str) -> None:
    with pytest.raises(ConfigError, match=rf"training\.{field}: GPU only"):
        kernels.check_gpu_options(_spec({field: True}), CPU)
    kernels.check_gpu_options(_spec({field: True}), GPU)


def test_liger_without_the_package_or_for_an_unknown_architecture_is_refused() -> None:
    class Config:
        model_type = "bert"

    class Model:
        config = Config()

    with pytest.raises(ConfigError, match=r"training\.ligerKernels") as err:
        kernels.check_liger(_spec({"ligerKernels": True}), Model())
    assert ("liger-kernel package" in str(err.value)) != kernels.has_package("liger_kernel")
    kernels.check_liger(_spec({}), Model())  # off: nothing to check
    Config.model_type = "llama"
    if kernels.has_package("liger_kernel"):
        kernels.check_liger(_spec({"ligerKernels": True}), Model())  # Llama has Liger kernels


@pytest.mark.slow
def test_padding_free_causal_lm_trains_and_reports_its_choices(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from finetune_trainer import engine
    from finetune_trainer.status_reporter import StatusReporter

    sent: list[dict[str, Any]] = []
    monkeypatch.setattr(StatusReporter, "from_env", classmethod(lambda cls: cls(sent.append, interval=0.0)))
    model_dir = tiny_causal.cached_tiny_causal(tmp_path_factory)
    data = tiny.write_jsonl(tmp_path / "train.jsonl", tiny_causal.text_rows(128))
    spec = parse_spec(
        tiny_causal.causal_spec(
            model_dir, {"type": "causal-lm", "format": "text"}, {"train": str(data)}, paddingFree=True, maxSeqLength=8
        )
    )
    result = engine.train(spec, tmp_path / "run")

    losses = [e["loss"] for e in result.trainer.state.log_history if "loss" in e]
    assert losses[-1] < 0.7 * losses[0]
    # TRL's truncation still applies although its config has no max_length (padding-free refuses one).
    assert max(len(ids) for ids in result.trainer.train_dataset["input_ids"]) == 8
    expected = {
        "attention": "sdpa",
        "paddingFree": True,
        "ligerKernels": False,
        "compile": False,
        "optimizer": "adamw_torch",
        "precision": "fp32",
    }
    runtime = next(s["runtime"] for s in sent if "runtime" in s)
    assert runtime == expected
    resolved = yaml.safe_load((tmp_path / "run" / engine.RESOLVED_SPEC_FILE).read_text())
    assert (resolved["training"]["attention"], resolved["training"]["optimizer"]) == ("sdpa", "adamw_torch")
