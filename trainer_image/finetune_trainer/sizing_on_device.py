"""The memory estimate where the job runs: ``training.sizing: auto`` resolved for the GPU this process has.

Every process computes the same thing from the same inputs (the spec, the model's ``config.json``, the
GPU's memory), so all ranks agree on the batch, checkpointing and strategy without talking. Rank 0 puts
the estimate, the verdict and the resolved settings on ``status.memoryEstimate``. A job the estimate
says does not fit still runs (the estimate of activations is not exact): the verdict and the
alternatives are logged and on the status, for the person who reads them after an out-of-memory.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from finetune_api.estimate import parse_memory
from finetune_api.model_shapes import EstimateUnavailable
from finetune_api.sizing import estimate_status, estimate_table, fit_report
from finetune_api.status import FineTuneJobStatus
from finetune_trainer.model_config import read_model_config

if TYPE_CHECKING:
    from finetune_api.spec import FineTuneJobSpec
    from finetune_trainer.arguments import DeviceCapability
    from finetune_trainer.status_reporter import StatusReporter

log = logging.getLogger("finetune_trainer")


def device_gpu_memory(spec: FineTuneJobSpec, device: DeviceCapability) -> tuple[int, str] | None:
    """(bytes of this process's GPU, where that came from): the device itself, else spec.resources.gpuMemory."""
    if device.kind == "gpu":
        import torch

        return int(torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory), "the GPU itself"
    if spec.resources.gpu_memory:
        return parse_memory(spec.resources.gpu_memory), "spec.resources.gpuMemory"
    return None


def size_for_device(
    spec: FineTuneJobSpec, device: DeviceCapability, reporter: StatusReporter | None = None
) -> FineTuneJobSpec:
    """The spec to run: auto-sized for this GPU when training.sizing is auto, else as written."""
    memory = device_gpu_memory(spec, device)
    if memory is None:
        return spec
    try:
        report = fit_report(spec, read_model_config(spec), memory[0])
    except EstimateUnavailable as err:
        log.info("memory estimate: not available: %s", err)
        return spec
    log.info("%s", estimate_table(report))
    if not report.fits:
        log.warning("memory estimate: this job may not fit: %s", report.message())
    if reporter is not None:
        reporter.update(FineTuneJobStatus(memory_estimate=estimate_status(report, memory[1])))
    return report.spec
