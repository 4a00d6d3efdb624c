"""Fit verdicts, computed alternatives and ``training.sizing: auto``, on realistic model shapes (no torch).

Every alternative and every auto-sized result is estimated again here from its own spec, so a change
that is offered is one that fits; the sharding arithmetic is checked against DeepSpeed's published
ZeRO model-state formulas.
"""

from __future__ import annotations

from typing import Any

import pytest

from finetune_api.estimate import GIB, estimate_memory, parse_memory
from finetune_api.sizing import alternatives, auto_size, estimate_status, fit_report, with_changes
from finetune_api.status import FineTuneJobStatus
from finetune_api.validation import parse_spec

LLAMA_7B = {
    "model_type": "llama",
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "vocab_size": 32000,
    "max_position_embeddings": 4096,
    "dtype": "bfloat16",
}
BERT_BASE = {
    "model_type": "bert",
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "vocab_size": 30522,
    "max_position_embeddings": 512,
    "type_vocab_size": 2,
}


def llama_spec(method: str = "full", gpus: int = 4, **training: Any) -> Any:
    return parse_spec(
        {
            "model": {"name": "meta-llama/Llama-2-7b-hf"},
            "task": {"type": "causal-lm", "format": "text"},
            "dataset": {"name": "tatsu-lab/alpaca"},
            "method": {"type": method},
            "training": {"batchSizePerDevice": 8, "maxSeqLength": 2048, **training},
            "resources": {"gpusPerNode": gpus},
        }
    )


def test_parse_memory_reads_kubernetes_quantities_and_label_mib() -> None:
    assert parse_memory("80Gi") == 80 * GIB
    assert parse_memory("81559Mi") == 81559 * 2**20
    assert parse_memory("40G") == 40 * 10**9
    with pytest.raises(ValueError):
        parse_memory("lots")


def test_a_job_that_fits_has_no_alternatives() -> None:
    report = fit_report(llama_spec("qlora", gradientCheckpointing=True, batchSizePerDevice=1), LLAMA_7B, 80 * GIB)
    assert report.fits and report.alternatives == ()
    assert report.message().startswith("needs ") and "GPUs have 80.0 GiB" in report.message()


def test_every_alternative_fits_when_estimated_again_and_the_original_does_not() -> None:
    # adamw_torch (foreach) needs a step buffer the fused AdamW that optimizer auto picks on GPUs does not.
    spec = llama_spec("full", optimizer="adamw_torch")
    memory = 64 * GIB  # on 80 GiB, gradient checkpointing alone fits (79.8 GiB): one alternative
    report = fit_report(spec, LLAMA_7B, memory)
    assert not report.fits and report.estimate.per_gpu.total > memory
    assert len(report.alternatives) >= 3
    for alt in report.alternatives:
        assert estimate_memory(alt.spec, LLAMA_7B).per_gpu.total == alt.estimate.per_gpu.total <= memory
        assert alt.change and alt.change in report.message()


def test_alternatives_keep_the_effective_batch() -> None:
    spec = llama_spec("lora", gpus=1, gradientAccumulationSteps=2)
    for alt in alternatives(spec, LLAMA_7B, 24 * GIB):
        t = alt.spec.training
        assert t.batch_size_per_device * t.gradient_accumulation_steps == 16


def test_more_gpus_is_offered_when_nothing_on_the_job_s_gpus_fits() -> None:
    # Full fine-tuning of a 7B model on one 24 GiB GPU: only sharding over more GPUs (or an adapter) helps.
    found = alternatives(llama_spec("full", gpus=1), LLAMA_7B, 24 * GIB)
    changes = [a.change for a in found]
    assert any(c.startswith("method qlora") for c in changes), changes
    assert any("over" in c and "GPUs" in c for c in changes) or any("offload" in c for c in changes), changes


def test_auto_sizing_picks_the_largest_micro_batch_that_fits() -> None:
    spec = llama_spec("lora", gpus=1, sizing="auto", batchSizePerDevice=32)
    memory = 40 * GIB
    sized = auto_size(spec, LLAMA_7B, memory)
    assert sized is not None
    t = sized.training
    assert estimate_memory(sized, LLAMA_7B).per_gpu.total <= memory
    assert t.batch_size_per_device * t.gradient_accumulation_steps == 32
    # Maximal: twice the micro-batch, with or without checkpointing, does not fit.
    bigger = with_changes(
        sized,
        training={"batch_size_per_device": t.batch_size_per_device * 2, "gradient_checkpointing": True},
    )
    assert estimate_memory(bigger, LLAMA_7B).per_gpu.total > memory


def test_auto_sizing_leaves_checkpointing_off_when_the_batch_fits_without_it() -> None:
    spec = parse_spec(
        {
            "model": {"name": "bert-base-uncased"},
            "task": {"type": "sequence-classification", "labels": ["neg", "pos"]},
            "dataset": {"name": "imdb"},
            "method": {"type": "full"},
            "training": {"batchSizePerDevice": 16, "maxSeqLength": 256, "sizing": "auto"},
        }
    )
    sized = auto_size(spec, BERT_BASE, 80 * GIB)
    assert sized is not None
    assert (sized.training.batch_size_per_device, sized.training.gradient_checkpointing) == (16, False)


def test_auto_sizing_reaches_for_zero_only_when_data_parallel_cannot_fit() -> None:
    # With adamw_torch's step buffer; the fused AdamW of optimizer auto fits 7B under plain DDP at batch 1.
    # 72 GiB: plain DDP's weights, optimizer states, gradient buckets and the step's gradients plus buffer are ~80.
    spec = llama_spec("full", gpus=8, sizing="auto", optimizer="adamw_torch")
    report = fit_report(spec, LLAMA_7B, 72 * GIB)
    assert report.fits and report.resolved
    assert report.spec.distributed.strategy == "deepspeed"
    # Nothing at any micro-batch fits with plain DDP (so ZeRO was needed).
    ddp_one = with_changes(spec, training={"batch_size_per_device": 1, "gradient_checkpointing": True})
    assert estimate_memory(ddp_one, LLAMA_7B).per_gpu.total > 72 * GIB


def test_auto_sizing_gives_up_with_none() -> None:
    # Even ZeRO-3 with everything offloaded keeps two gathered layers, the logits and the CUDA context.
    assert auto_size(llama_spec("full", gpus=1, sizing="auto"), LLAMA_7B, 2 * GIB) is None


@pytest.mark.parametrize("gpus", [4, 8, 16])
def test_zero_model_states_against_deepspeed_s_formulas(gpus: int) -> None:
    # DeepSpeed's estimators for full mixed-precision Adam training, P parameters, L the largest module's:
    # ZeRO-2 4P + 16P/N per GPU, which keeps every 16-bit gradient on every GPU: ours partitions them
    # (2P + 18P/N with the float32 copy of the partition at the step), so ours is lower by up to 2P.
    # ZeRO-3 4L + 18P/N: ours adds that float32 copy (2P/N) and gathers two decoder layers, so within 15%.
    nodes, per_node = max(gpus // 8, 1), min(gpus, 8)
    p = estimate_memory(llama_spec("full"), LLAMA_7B).total
    largest_module = 32000 * 4096  # the embedding matrix
    for stage in (2, 3):
        spec = parse_spec(
            {
                **llama_spec("full").model_dump(by_alias=True, exclude_none=True),
                "resources": {"nodes": nodes, "gpusPerNode": per_node},
                "distributed": {"strategy": "deepspeed", "deepspeed": {"stage": stage}},
            }
        )
        estimate = estimate_memory(spec, LLAMA_7B)
        e = estimate.per_gpu
        ours = e.weights + e.gradients + e.optimizer_states + e.overhead - estimate.runtime
        if stage == 2:
            theirs = 4 * p + 16 * p / gpus
            assert theirs - 2 * p <= ours <= theirs
            assert ours == pytest.approx(2 * p + 18 * p / gpus, rel=1e-3)
        else:
            theirs = 4 * largest_module + 18 * p / gpus
            assert ours == pytest.approx(theirs, rel=0.15), (ours / GIB, theirs / GIB)


def test_estimate_status_is_a_valid_status_field() -> None:
    report = fit_report(llama_spec("full"), LLAMA_7B, 40 * GIB)
    status = estimate_status(report, "node label nvidia.com/gpu.memory")
    parsed = FineTuneJobStatus.model_validate({"memoryEstimate": status.model_dump(by_alias=True, mode="json")})
    assert parsed.memory_estimate is not None
    assert parsed.memory_estimate.verdict == "DoesNotFit"
    assert parsed.memory_estimate.per_gpu is not None
    assert parsed.memory_estimate.per_gpu.total == report.estimate.per_gpu.total
    assert [a.per_gpu_bytes for a in parsed.memory_estimate.alternatives] == [
        a.estimate.per_gpu.total for a in report.alternatives
    ]


def test_other_kinds_are_offered_only_where_they_run_easier_than_the_batch_change() -> None:
    report = fit_report(llama_spec("full", batchSizePerDevice=32), LLAMA_7B, 80 * GIB)
    first, *others = report.alternatives
    assert first.change.startswith("gradient checkpointing + batch 8")  # the batch/checkpointing change alone
    assert others
    for alt in others:
        t, base = alt.spec.training, first.spec.training
        assert t.batch_size_per_device > base.batch_size_per_device or (
            t.batch_size_per_device == base.batch_size_per_device and not t.gradient_checkpointing
        ), alt.change
