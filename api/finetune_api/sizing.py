"""Does a job fit its GPUs, what would make it fit, and ``training.sizing: auto``: pure functions over the estimate.

Every alternative is a changed spec estimated again, never a rule of thumb: micro-batch and
gradient accumulation (the effective batch stays the same), gradient checkpointing, an 8-bit
optimizer, LoRA or QLoRA, DeepSpeed ZeRO on the same GPUs, and ZeRO-3 over more GPUs.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from finetune_api.distributed import world_size
from finetune_api.estimate import Estimate, estimate_memory, gib
from finetune_api.spec import DeepSpeedOptions, DistributedSpec, FineTuneJobSpec, MethodSpec
from finetune_api.status import FitAlternative, MemoryBreakdown, MemoryEstimate, ResolvedSizing

MAX_ALTERNATIVES = 5
MAX_GPUS_PER_NODE = 8
MAX_GPUS = 64


@dataclass(frozen=True)
class Alternative:
    """One change to the spec and what it needs per GPU."""

    change: str
    spec: FineTuneJobSpec
    estimate: Estimate


@dataclass(frozen=True)
class FitReport:
    """The estimate of the spec as run (after ``auto`` sizing), the verdict, and the alternatives."""

    spec: FineTuneJobSpec  # the spec that runs: the user's, or the auto-sized one
    estimate: Estimate
    gpu_memory: int
    fits: bool
    alternatives: tuple[Alternative, ...]
    resolved: bool  # training.sizing auto chose the batch, checkpointing and strategy

    def message(self) -> str:
        """One line for the status and the CLI, e.g. 'needs 71.2 GiB per GPU, nodes have 40.0 GiB: qlora -> 9.8 GiB'."""
        need, have = gib(self.estimate.per_gpu.total), gib(self.gpu_memory)
        if self.fits:
            how = f" with {sizing_summary(self.spec)}" if self.resolved else ""
            return f"needs {need} per GPU{how}; GPUs have {have}"
        if not self.alternatives:
            return f"needs {need} per GPU, GPUs have {have}; no single change found that fits"
        options = "; or ".join(f"{a.change} -> {gib(a.estimate.per_gpu.total)}" for a in self.alternatives)
        return f"needs {need} per GPU, GPUs have {have}: {options}"


def with_changes(spec: FineTuneJobSpec, **sections: dict[str, Any]) -> FineTuneJobSpec:
    """A copy of ``spec`` with fields of its sections replaced, e.g. ``training={"batch_size_per_device": 4}``."""
    update = {name: getattr(spec, name).model_copy(update=fields) for name, fields in sections.items()}
    return spec.model_copy(update=update)


def sizing_summary(spec: FineTuneJobSpec) -> str:
    """The sized settings in words: batch, accumulation, checkpointing and strategy."""
    from finetune_api.estimate import strategy_label

    t = spec.training
    ckpt = ", gradient checkpointing" if t.gradient_checkpointing else ""
    batch = f"batch {t.batch_size_per_device} x accumulation {t.gradient_accumulation_steps}"
    return f"{batch}{ckpt}, {strategy_label(spec)}"


def _micro_batches(spec: FineTuneJobSpec) -> Iterator[FineTuneJobSpec]:
    """The spec at each micro-batch from batchSizePerDevice down to 1 that keeps the effective batch."""
    t = spec.training
    effective = t.batch_size_per_device * t.gradient_accumulation_steps
    batch = t.batch_size_per_device
    while batch >= 1:
        if effective % batch == 0:
            yield with_changes(
                spec, training={"batch_size_per_device": batch, "gradient_accumulation_steps": effective // batch}
            )
        batch = batch // 2 if batch > 1 else 0


def _settings_ladder(spec: FineTuneJobSpec) -> Iterator[FineTuneJobSpec]:
    """Largest micro-batch first; at each, without and then with gradient checkpointing."""
    for sized in _micro_batches(spec):
        yield sized
        if not sized.training.gradient_checkpointing:
            yield with_changes(sized, training={"gradient_checkpointing": True})


def _zero(
    spec: FineTuneJobSpec, stage: int, offload_optimizer: bool = False, offload_params: bool = False
) -> FineTuneJobSpec:
    ds = DeepSpeedOptions(stage=stage, offload_optimizer=offload_optimizer, offload_params=offload_params)
    return spec.model_copy(update={"distributed": DistributedSpec(strategy="deepspeed", deepspeed=ds)})


def _strategy_tiers(spec: FineTuneJobSpec) -> list[tuple[str, FineTuneJobSpec]]:
    """ZeRO stages on the job's own GPUs, cheapest first (offload last: it is the slowest)."""
    tiers = []
    if world_size(spec) > 1:
        tiers += [("deepspeed ZeRO-2", _zero(spec, 2)), ("deepspeed ZeRO-3", _zero(spec, 3))]
    tiers += [
        ("deepspeed ZeRO-3 with optimizer offload", _zero(spec, 3, True)),
        ("deepspeed ZeRO-3 with optimizer and parameter offload", _zero(spec, 3, True, True)),
    ]
    return tiers


def _more_gpus(spec: FineTuneJobSpec) -> Iterator[tuple[str, FineTuneJobSpec]]:
    gpus = world_size(spec) * 2
    while gpus <= MAX_GPUS:
        per_node = min(gpus, MAX_GPUS_PER_NODE)
        resized = with_changes(spec, resources={"nodes": gpus // per_node, "gpus_per_node": per_node})
        yield f"deepspeed ZeRO-3 over {gpus} GPUs ({gpus // per_node}x{per_node})", _zero(resized, 3)
        gpus *= 2


def _first_fit(
    label: str, candidates: Iterator[FineTuneJobSpec], config: Mapping[str, Any], gpu_memory: int, base: FineTuneJobSpec
) -> Alternative | None:
    for candidate in candidates:
        estimate = estimate_memory(candidate, config)
        if estimate.per_gpu.total <= gpu_memory:
            return Alternative(_describe(label, candidate, base), candidate, estimate)
    return None


def _describe(label: str, candidate: FineTuneJobSpec, base: FineTuneJobSpec) -> str:
    t = candidate.training
    parts = [label] if label else []
    if t.gradient_checkpointing and not base.training.gradient_checkpointing:
        parts.append("gradient checkpointing")
    if t.batch_size_per_device != base.training.batch_size_per_device:
        parts.append(f"batch {t.batch_size_per_device} x accumulation {t.gradient_accumulation_steps}")
    return " + ".join(parts)


def _runs_easier(spec: FineTuneJobSpec, than: FineTuneJobSpec) -> bool:
    """A larger micro-batch, or the same one without recomputing activations."""
    a, b = spec.training, than.training
    if a.batch_size_per_device != b.batch_size_per_device:
        return a.batch_size_per_device > b.batch_size_per_device
    return b.gradient_checkpointing and not a.gradient_checkpointing


def alternatives(spec: FineTuneJobSpec, config: Mapping[str, Any], gpu_memory: int) -> tuple[Alternative, ...]:
    """The cheapest change of each kind that makes ``spec`` fit, each with its own estimate.

    Kinds, cheapest first: smaller micro-batch x more accumulation and/or gradient checkpointing; an
    8-bit optimizer; ZeRO on the same GPUs; LoRA; QLoRA; ZeRO-3 over more GPUs. Each kind is tried
    with the batch/checkpointing ladder, and kept when it runs with a larger micro-batch (or without
    checkpointing) than the batch/checkpointing change alone.
    """
    kinds: list[tuple[str, FineTuneJobSpec]] = [("", spec)]
    if spec.training.optimizer == "auto" or spec.training.optimizer.startswith("adamw_torch"):
        kinds.append(("optimizer paged_adamw_8bit", with_changes(spec, training={"optimizer": "paged_adamw_8bit"})))
    if spec.distributed.strategy != "deepspeed":
        kinds += _strategy_tiers(spec)
    if spec.method.type == "full":
        kinds.append(("method lora", spec.model_copy(update={"method": MethodSpec(type="lora")})))
    if spec.method.type in ("full", "lora"):
        qlora = MethodSpec(type="qlora", lora=spec.method.lora)
        kinds.append(("method qlora", spec.model_copy(update={"method": qlora})))
    found: list[Alternative] = []
    settings_only: Alternative | None = None
    for label, changed in kinds:
        alt = _first_fit(label, _settings_ladder(changed), config, gpu_memory, spec)
        if alt is None or not alt.change:
            continue
        if not label:
            settings_only = alt
        elif settings_only is not None and not _runs_easier(alt.spec, settings_only.spec):
            continue  # the batch/checkpointing change alone already does as well
        found.append(alt)
    for label, changed in _more_gpus(spec):
        alt = _first_fit(label, iter([changed]), config, gpu_memory, spec)
        if alt is not None:
            found.append(alt)
            break
    return tuple(found[:MAX_ALTERNATIVES])


def auto_size(spec: FineTuneJobSpec, config: Mapping[str, Any], gpu_memory: int) -> FineTuneJobSpec | None:
    """The settings ``training.sizing: auto`` runs with, or None when nothing on these GPUs fits.

    The largest micro-batch that fits (the effective batch is kept), without gradient checkpointing when
    that fits, with the job's own strategy; when ``distributed.strategy`` is ``auto`` and that is not
    enough, ZeRO-2, ZeRO-3 and then ZeRO-3 with offload are tried the same way.
    """
    tiers = [("", spec)]
    if spec.distributed.strategy == "auto":
        tiers += _strategy_tiers(spec)
    for _, tier in tiers:
        alt = _first_fit("", _settings_ladder(tier), config, gpu_memory, spec)
        if alt is not None:
            return alt.spec
    return None


def fit_report(spec: FineTuneJobSpec, config: Mapping[str, Any], gpu_memory: int) -> FitReport:
    """Estimate, verdict and alternatives for ``spec`` on GPUs of ``gpu_memory`` bytes (auto sizing applied)."""
    sized = auto_size(spec, config, gpu_memory) if spec.training.sizing == "auto" else None
    runs = sized or spec
    estimate = estimate_memory(runs, config)
    fits = estimate.per_gpu.total <= gpu_memory
    found = () if fits else alternatives(runs, config, gpu_memory)
    return FitReport(runs, estimate, gpu_memory, fits, found, resolved=sized is not None)


def estimate_status(report: FitReport, gpu_memory_source: str) -> MemoryEstimate:
    """The report as ``status.memoryEstimate``."""
    per_gpu = report.estimate.per_gpu
    t = report.spec.training
    return MemoryEstimate(
        verdict="FitsGPU" if report.fits else "DoesNotFit",
        gpu_memory_bytes=report.gpu_memory,
        gpu_memory_source=gpu_memory_source,
        per_gpu=MemoryBreakdown(
            weights=per_gpu.weights,
            gradients=per_gpu.gradients,
            optimizer_states=per_gpu.optimizer_states,
            activations=per_gpu.activations,
            overhead=per_gpu.overhead,
            total=per_gpu.total,
        ),
        trainable_parameters=report.estimate.trainable,
        total_parameters=report.estimate.total,
        strategy=report.estimate.strategy,
        precision=report.estimate.precision,
        alternatives=[
            FitAlternative(change=a.change, per_gpu_bytes=a.estimate.per_gpu.total) for a in report.alternatives
        ],
        resolved=ResolvedSizing(
            batch_size_per_device=t.batch_size_per_device,
            gradient_accumulation_steps=t.gradient_accumulation_steps,
            gradient_checkpointing=t.gradient_checkpointing,
            strategy=report.estimate.strategy,
        )
        if report.resolved
        else None,
        message=report.message(),
    )


def estimate_table(report: FitReport) -> str:
    """The estimate as a small text table with the verdict and the alternatives (for ``validate``)."""
    e = report.estimate
    rows = [
        ("weights", e.per_gpu.weights),
        ("gradients", e.per_gpu.gradients),
        ("optimizer states", e.per_gpu.optimizer_states),
        ("activations", e.per_gpu.activations),
        ("overhead", e.per_gpu.overhead),
        ("never together", -e.per_gpu.apart),  # gradients + step buffers vs the backward's activations
        ("total per GPU", e.per_gpu.total),
        ("GPU memory", report.gpu_memory),
    ]
    lines = [
        f"memory estimate: {e.trainable:,} trainable of {e.total:,} parameters; {e.world_size} GPU(s), "
        f"{e.precision}; {sizing_summary(report.spec)}",
    ]
    lines += [f"  {name:<17}{gib(value):>12}" for name, value in rows]
    lines.append(("FitsGPU: " if report.fits else "DoesNotFit: ") + report.message())
    return "\n".join(lines)
