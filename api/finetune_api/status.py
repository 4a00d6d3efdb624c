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
ConditionType = Literal["Created", "Running", "Suspended", "Succeeded", "Failed", "Ready", "Reconciling", "Stalled"]


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


class Artifacts(ApiModel):
    """Where the results are."""

    latest_checkpoint: Name | None = Field(default=None, description="URI of the latest complete checkpoint.")
    model: Name | None = Field(default=None, description="URI of the final model or adapter.")
    merged_model: Name | None = Field(default=None, description="URI of the base with the adapter merged.")
    metrics: Name | None = Field(default=None, description="URI of metrics.json.")


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
    parameters: Parameters | None = Field(default=None, description="Trainable and total parameters.")
    artifacts: Artifacts | None = Field(default=None, description="Result URIs.")
    message: LongText | None = Field(default=None, description="The current state or error, in one line.")


# The fields each side writes; a status patch of one side never names the other's.
TRAINER_FIELDS = frozenset({"progress", "metrics", "parameters", "artifacts"})
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
