"""The FineTuneJob status as typed models.

The operator owns phase, conditions, times, restarts and message; the trainer (rank 0)
owns progress, metrics, parameters and artifacts. Neither writes the other's fields.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import Field

from finetune_api.spec import ApiModel, LongText, Name, wire


def now() -> str:
    """The current time as the status holds times: RFC 3339, UTC, whole seconds."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


Phase = Literal["Pending", "Running", "Succeeded", "Failed", "Suspended"]
ConditionType = Literal[
    "Created", "Running", "Suspended", "Succeeded", "Failed", "Ready", "Reconciling", "Stalled", "FitsGPU"
]


class Condition(ApiModel):
    """A metav1.Condition."""

    type: Name = Field(description="Condition type, e.g. Succeeded or Ready.")
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: Name = Field(description="CamelCase reason, machine-readable.")
    message: LongText = Field(default="", description="What happened, for a person.")
    last_transition_time: str = Field(description="When status last changed (RFC 3339).")
    observed_generation: int | None = Field(default=None, ge=0, description="Spec generation this reflects.")


class Progress(ApiModel):
    """Live training progress, written by the trainer."""

    step: int = Field(default=0, ge=0, description="Optimiser steps done.")
    total_steps: int | None = Field(default=None, ge=0, description="Optimiser steps planned.")
    epoch: float | None = Field(default=None, ge=0, description="Epochs done (fractional).")
    percent: float | None = Field(default=None, ge=0, le=100, description="step / totalSteps, in percent.")
    loss: float | None = Field(default=None, description="Latest training loss.")
    learning_rate: float | None = Field(default=None, description="Current learning rate.")
    samples_per_second: float | None = Field(default=None, ge=0, description="Training throughput.")
    eta_seconds: int | None = Field(default=None, ge=0, description="Estimated seconds to the end.")
    updated_at: str | None = Field(default=None, description="When the trainer last reported (RFC 3339).")


class Parameters(ApiModel):
    """Parameter counts of the trained model."""

    trainable: int = Field(ge=0, description="Parameters that receive gradients.")
    total: int = Field(ge=0, description="All parameters (4-bit weights counted as peft counts them).")


class Runtime(ApiModel):
    """What the trainer chose for the spec's throughput options on its device (auto resolved)."""

    attention: Name | None = Field(default=None, description="Attention kernel in use, e.g. sdpa.")
    padding_free: bool | None = Field(default=None, description="Batches flattened without padding.")
    liger_kernels: bool | None = Field(default=None, description="Liger kernels applied to the model.")
    compile: bool | None = Field(default=None, description="Model compiled with torch.compile.")
    optimizer: Name | None = Field(default=None, description="Optimiser in use, e.g. adamw_torch_fused.")
    precision: Name | None = Field(default=None, description="Precision in use: bf16, fp16 or fp32.")


class Artifacts(ApiModel):
    """Where the results are."""

    latest_checkpoint: Name | None = Field(default=None, description="URI of the latest complete checkpoint.")
    model: Name | None = Field(default=None, description="URI of the final model or adapter.")
    merged_model: Name | None = Field(default=None, description="URI of the base with the adapter merged.")
    metrics: Name | None = Field(default=None, description="URI of metrics.json.")
    predictions: Name | None = Field(
        default=None,
        description="URI of the test split's predictions (jsonl, one object per row: row index and prediction); "
        "classification, token classification and question answering with a test split.",
    )


class MemoryBreakdown(ApiModel):
    """Bytes per GPU by what holds them."""

    weights: int = Field(ge=0, description="Model weights (4-bit ones with their quantisation state).")
    gradients: int = Field(ge=0, description="Gradients of the trainable parameters.")
    optimizer_states: int = Field(ge=0, description="Optimizer states (and DeepSpeed's float32 master weights).")
    activations: int = Field(ge=0, description="Activations kept for the backward pass at the peak.")
    overhead: int = Field(ge=0, description="Step temporaries, CUDA context and workspaces, fragmentation.")
    total: int = Field(
        ge=0,
        description="The peak per GPU: the parts above less what is never alive at the same time "
        "(gradients and step buffers are not held together with the backward's activations).",
    )


class FitAlternative(ApiModel):
    """A change that makes the job fit, with its own estimate."""

    change: LongText = Field(description="What to change, e.g. 'method qlora' or 'deepspeed ZeRO-3 over 8 GPUs'.")
    per_gpu_bytes: int = Field(ge=0, description="Bytes per GPU with the change.")


class ResolvedSizing(ApiModel):
    """The settings training.sizing auto chose (and the trainer runs with)."""

    batch_size_per_device: int = Field(ge=1, description="Micro-batch per GPU.")
    gradient_accumulation_steps: int = Field(ge=1, description="Micro-batches per optimiser step.")
    gradient_checkpointing: bool = Field(description="Whether activations are recomputed.")
    strategy: Name = Field(description="The distribution strategy, e.g. ddp or deepspeed ZeRO-3.")


class MemoryEstimate(ApiModel):
    """The per-GPU memory estimate and whether the job fits the GPUs it can land on."""

    verdict: Literal["FitsGPU", "DoesNotFit", "Unknown"] = Field(description="FitsGPU, DoesNotFit or Unknown.")
    gpu_memory_bytes: int | None = Field(default=None, ge=0, description="Memory of one GPU the job was sized for.")
    gpu_memory_source: LongText | None = Field(
        default=None, description="Where the GPU memory came from: a node label, the spec or the operator's default."
    )
    per_gpu: MemoryBreakdown | None = Field(default=None, description="Estimated bytes per GPU.")
    trainable_parameters: int | None = Field(default=None, ge=0, description="Parameters that train (as peft counts).")
    total_parameters: int | None = Field(default=None, ge=0, description="All parameters (as peft counts).")
    strategy: Name | None = Field(default=None, description="The strategy the estimate is for.")
    precision: Name | None = Field(default=None, description="The precision the estimate is for.")
    alternatives: list[FitAlternative] = Field(
        default_factory=list, max_length=8, description="Computed changes that would make the job fit."
    )
    resolved: ResolvedSizing | None = Field(default=None, description="training.sizing auto: the chosen settings.")
    message: LongText = Field(default="", description="The estimate in one line.")


# The budget per series of status.history: a few dozen kilobytes of status, enough for a readable curve.
HISTORY_MAX_POINTS = 256


class TrainPoint(ApiModel):
    """One point of the training curve: one logged step, or adjacent ones merged (see finetune_api.history)."""

    step: int = Field(ge=0, description="Last optimizer step this point covers.")
    first_step: int = Field(ge=0, description="First step merged into it (equal to step when not merged).")
    loss: float | None = Field(default=None, description="Mean training loss over the merged steps.")
    learning_rate: float | None = Field(default=None, description="Learning rate at step.")
    tokens_per_second: float | None = Field(default=None, ge=0, description="Training throughput in tokens.")
    samples_per_second: float | None = Field(default=None, ge=0, description="Training throughput in samples.")
    epoch: float | None = Field(default=None, ge=0, description="Epochs done at step (fractional).")


class EvalPoint(ApiModel):
    """One evaluation (or adjacent ones merged, once the series is full)."""

    step: int = Field(ge=0, description="Optimizer step of the evaluation.")
    epoch: float | None = Field(default=None, ge=0, description="Epochs done at step (fractional).")
    loss: float | None = Field(default=None, description="Evaluation loss.")
    metrics: dict[str, float] = Field(
        default_factory=dict, max_length=64, description="Evaluation metrics without the eval_ prefix, e.g. accuracy."
    )


class History(ApiModel):
    """The training and evaluation curves, downsampled to a fixed budget (the full history is in S3)."""

    max_points: int = Field(default=HISTORY_MAX_POINTS, ge=2, le=1024, description="The budget per series.")
    train: list[TrainPoint] = Field(
        default_factory=list, max_length=1024, description="Training points, ascending by step."
    )
    eval: list[EvalPoint] = Field(
        default_factory=list, max_length=1024, description="Evaluation points, ascending by step."
    )
    uri: Name | None = Field(default=None, description="The full history as JSON lines in S3 (when output.s3 is set).")


class FineTuneJobStatus(ApiModel):
    """Observed state of a FineTuneJob."""

    observed_generation: int | None = Field(default=None, ge=0, description="Spec generation the status describes.")
    phase: Phase | None = Field(default=None, description="Pending | Running | Succeeded | Failed | Suspended.")
    conditions: list[Condition] = Field(default_factory=list, max_length=16, description="Conditions.")
    start_time: str | None = Field(default=None, description="When the job's pods first started.")
    completion_time: str | None = Field(default=None, description="When the job finished.")
    restarts: int = Field(default=0, ge=0, description="Times the pods were restarted after a failure.")
    topology: Name | None = Field(default=None, description="Nodes x GPUs per node, e.g. 2x8 (for kubectl get).")
    progress: Progress | None = Field(default=None, description="Training progress (from the trainer).")
    metrics: dict[str, float] = Field(default_factory=dict, max_length=64, description="Latest eval metrics.")
    test_metrics: dict[str, float] = Field(
        default_factory=dict, max_length=64, description="Metrics of the final model on the test split."
    )
    parameters: Parameters | None = Field(default=None, description="Trainable and total parameters.")
    artifacts: Artifacts | None = Field(default=None, description="Result URIs.")
    memory_estimate: MemoryEstimate | None = Field(
        default=None, description="GPU-memory estimate per GPU, fit verdict and alternatives (before the job starts)."
    )
    runtime: Runtime | None = Field(
        default=None, description="Attention, padding-free, Liger, compile, optimiser and precision in use."
    )
    history: History | None = Field(
        default=None, description="Loss, learning-rate, throughput and evaluation curves (from the trainer)."
    )
    message: LongText | None = Field(default=None, description="The current state or error, in one line.")


# The fields each side writes; a status patch of one side never names the other's.
# memoryEstimate: the operator's fit check writes it before the Job exists (a whole-field patch of its own);
# the trainer writes it again for the GPU it got.
TRAINER_FIELDS = frozenset(
    {"progress", "metrics", "test_metrics", "parameters", "artifacts", "runtime", "memory_estimate", "history"}
)
OPERATOR_FIELDS = frozenset(FineTuneJobStatus.model_fields) - TRAINER_FIELDS


def status_patch(status: FineTuneJobStatus, owner: Literal["operator", "trainer"]) -> dict[str, Any]:
    """The merge-patch body for the fields ``owner`` set on ``status`` (camelCase, nothing else).

    Building the status through the typed models makes a misspelt field an error here instead of
    a field the API server's pruning drops silently; a field of the other side is refused.
    """
    allowed = TRAINER_FIELDS if owner == "trainer" else OPERATOR_FIELDS
    foreign = sorted(status.model_fields_set - allowed)
    if foreign:
        raise ValueError(f"the {owner} does not write status fields {', '.join(foreign)}")
    return wire(status, only_set=True)
