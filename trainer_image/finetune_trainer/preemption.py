"""SIGTERM while training (eviction, preemption, a drained node, ``kubectl delete pod``): save, upload, stop.

Kubernetes stops a pod with SIGTERM and kills it after its grace period
(``runPolicy.terminationGracePeriodSeconds``, 300 s by default). The launcher (torchrun) passes the
signal to the trainer processes of its pod, and waits for them up to that grace period less a
margin (``--shutdown-timeout``, :func:`finetune_api.distributed.worker_shutdown_seconds`) before it
kills them. :class:`StopOnSigterm` turns the signal into a flag; at the end of the optimizer step
under way every process learns whether *any* process got it (one all-reduce of a flag per step:
only some pods of a job may be stopped, and a checkpoint is a collective act), and then all of
them save a checkpoint at that step, which the S3 callback uploads, and leave the training loop.
:meth:`StopOnSigterm.raise_if_stopped` then waits for the upload and ends the run with the
retryable exit code, so that the Job runs the pods again and they resume from that checkpoint.

A grace period too short for the save and upload ends like a SIGKILL: the restart resumes from the
checkpoint before.
"""

from __future__ import annotations

import logging
import signal
from types import FrameType
from typing import TYPE_CHECKING, Any

from transformers import TrainerCallback

from finetune_trainer.errors import RetryableError

if TYPE_CHECKING:
    from transformers import TrainerControl, TrainerState, TrainingArguments

    from finetune_trainer.s3_output import S3JobOutput

log = logging.getLogger(__name__)


class Preempted(RetryableError):
    """Training stopped on SIGTERM after saving a checkpoint (retryable: the Job runs the pod again)."""


def any_rank(flag: bool, device: Any) -> bool:
    """Whether ``flag`` is set in any process of the job (the flag itself without torch.distributed)."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return flag
    # NCCL reduces tensors on the GPU only; gloo (CPU) on the CPU.
    on = device if dist.get_backend() == "nccl" else "cpu"
    value = torch.tensor([1 if flag else 0], dtype=torch.int32, device=on)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


class StopOnSigterm(TrainerCallback):
    """Catches SIGTERM during ``trainer.train()`` and ends training with a checkpoint at the current step."""

    def __init__(self) -> None:
        self.received: str | None = None  # the signal this process got
        self.stopped_at: int | None = None  # the step training stopped at, in every process
        self._previous: Any = None

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self.received = signal.Signals(signum).name  # nothing else here: a handler runs between bytecodes

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **_: Any) -> None:
        self._previous = signal.signal(signal.SIGTERM, self._on_signal)

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **_: Any) -> None:
        if self.stopped_at is None and any_rank(self.received is not None, args.device):
            self.stopped_at = state.global_step
            who = f"this process got {self.received}" if self.received else "another trainer process got SIGTERM"
            log.warning("%s: saving checkpoint-%d, then stopping", who, state.global_step)
            control.should_save = True
            control.should_training_stop = True

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **_: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None

    def raise_if_stopped(self, s3_output: S3JobOutput | None) -> None:
        """After ``trainer.train()``: if it stopped on SIGTERM, wait for the checkpoint's upload and raise Preempted."""
        step = self.stopped_at
        if step is None:
            return
        where = "on this pod's disk"
        if s3_output is not None and s3_output.uploader is not None:
            s3_output.uploader.close()
            if s3_output.node.is_main:
                ok = step in s3_output.uploaded
                where = f"in {s3_output.location.checkpoint(step)}" if ok else "but its upload to S3 did not complete"
            else:
                where = "with this pod's part uploaded to S3"
        raise Preempted(
            f"training stopped on SIGTERM (the pod is being evicted, preempted or deleted) at step {step}: "
            f"checkpoint-{step} is saved {where}; the Job runs the pod again and it resumes from the last "
            "complete checkpoint"
        )
