"""How the processes of one job share the work: pure functions from the spec to launcher and library settings.

The operator and the trainer both read these values, so they are plain data (dicts, lists of strings) with
no torch import; the trainer's ``TrainingArguments`` settings for DeepSpeed and FSDP are built from them in
:mod:`finetune_trainer.distribution`:

* the operator writes :func:`deepspeed_config` into the job's ConfigMap and puts :func:`torchrun_command`
  in the pod's container command (an argv list, never a shell string: Kubernetes expands
  ``$(JOB_COMPLETION_INDEX)`` in container args itself);
* the tests compare them as tables.

DeepSpeed values that ``TrainingArguments`` already knows (batch sizes, accumulation, clipping, optimizer
hyper-parameters, and the precision when the spec leaves it to ``auto``) are written as ``"auto"`` so the
Hugging Face integration fills them in: the spec stays the one place they are set.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from finetune_api.contract import ENV_COMPLETION_INDEX
from finetune_api.spec import FineTuneJobSpec

ResolvedStrategy = Literal["single", "ddp", "deepspeed", "fsdp"]
ResolvedPrecision = Literal["bf16", "fp16", "fp32"]

DEFAULT_MASTER_PORT = 29500
# Kubernetes fills this from the Indexed Job's completion index when it expands the container args.
NODE_RANK_FROM_JOB_INDEX = f"$({ENV_COMPLETION_INDEX})"


def processes_per_node(spec: FineTuneJobSpec) -> int:
    """Trainer processes in one pod: one per GPU, or one on a CPU-only pod."""
    return max(spec.resources.gpus_per_node, 1)


def world_size(spec: FineTuneJobSpec) -> int:
    """Trainer processes in the whole job."""
    return spec.resources.nodes * processes_per_node(spec)


def resolve_strategy(spec: FineTuneJobSpec) -> ResolvedStrategy:
    """The strategy that actually runs: ``auto`` is DDP for several processes and a plain single process otherwise.

    An explicit ``ddp`` on one process is also a single process (there is nothing to synchronise).
    DeepSpeed and FSDP stay as asked even on one process: ZeRO offload and sharded checkpoints still apply.
    """
    strategy = spec.distributed.strategy
    if strategy in ("deepspeed", "fsdp"):
        return strategy
    return "ddp" if world_size(spec) > 1 else "single"


def _precision_flag(precision: str, which: ResolvedPrecision) -> bool | str:
    if precision == "auto":
        return "auto"
    return precision == which


def deepspeed_config(spec: FineTuneJobSpec, precision: str | None = None) -> dict[str, Any]:
    """The DeepSpeed config for ``TrainingArguments(deepspeed=...)`` and the operator's ConfigMap.

    ``precision`` is the resolved training precision (``bf16``, ``fp16`` or ``fp32``) when the caller knows
    the hardware (the trainer); without it the spec's ``training.precision`` is used, and ``auto`` is left
    for ``TrainingArguments`` to fill in (the operator cannot tell which GPU the pod lands on).
    """
    options = spec.distributed.deepspeed
    stage = options.stage if options else 2
    offload_optimizer = bool(options and options.offload_optimizer)
    offload_params = bool(options and options.offload_params and stage == 3)
    chosen = precision or spec.training.precision

    zero: dict[str, Any] = {
        "stage": stage,
        "overlap_comm": True,
        "contiguous_gradients": True,
        "reduce_bucket_size": "auto",
    }
    if stage >= 2:
        zero["allgather_partitions"] = True
        zero["reduce_scatter"] = True
    if stage == 3:
        zero.update(
            {
                "stage3_prefetch_bucket_size": "auto",
                "stage3_param_persistence_threshold": "auto",
                "stage3_max_live_parameters": 1_000_000_000,
                "stage3_max_reuse_distance": 1_000_000_000,
                # Gather the shards into one 16-bit state dict on save, so the saved model loads without DeepSpeed.
                "stage3_gather_16bit_weights_on_model_save": True,
            }
        )
    if offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": True}

    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": "auto",
        "train_batch_size": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "bf16": {"enabled": _precision_flag(chosen, "bf16")},
        "fp16": {
            "enabled": _precision_flag(chosen, "fp16"),
            "loss_scale": 0,  # dynamic loss scaling
            "loss_scale_window": 1000,
            "initial_scale_power": 16,
            "hysteresis": 2,
            "min_loss_scale": 1,
        },
        "zero_optimization": zero,
        "steps_per_print": 1_000_000,  # the trainer logs progress itself
        "wall_clock_breakdown": False,
    }
    if offload_optimizer:
        # With the optimizer state in CPU memory DeepSpeed must own the optimizer (its CPU Adam); a torch
        # optimizer from the Trainer is refused. Its hyper-parameters still come from TrainingArguments.
        config["optimizer"] = {
            "type": "AdamW",
            "params": {"lr": "auto", "betas": "auto", "eps": "auto", "weight_decay": "auto"},
        }
    return config


@dataclass(frozen=True)
class Rendezvous:
    """Where the processes of a multi-node job meet.

    ``static`` (the default) gives each pod its rank from the Indexed Job's completion index and makes pod 0
    (reached through the headless Service) the store; ``c10d`` lets torchrun assign ranks as pods join.
    """

    master_addr: str
    master_port: int = DEFAULT_MASTER_PORT
    node_rank: int | str = NODE_RANK_FROM_JOB_INDEX
    backend: Literal["static", "c10d"] = "static"
    run_id: str | None = None  # c10d only: the same for every pod of one run (e.g. the FineTuneJob's uid)


def worker_shutdown_seconds(grace_period_seconds: int) -> int:
    """Seconds torchrun lets its workers run after SIGTERM before it kills them (its own default is 30).

    The pod's grace period (``runPolicy.terminationGracePeriodSeconds``) less a margin in which the
    launcher reports the workers' exit code before the kubelet's SIGKILL: 10 s, or a quarter of a
    short grace period.
    """
    return max(1, grace_period_seconds - min(10, grace_period_seconds // 4))


def torchrun_command(
    spec: FineTuneJobSpec,
    program: list[str],
    rendezvous: Rendezvous | None = None,
    *,
    launcher: str = "torchrun",
) -> list[str]:
    """The argv that starts one pod's trainer processes: ``torchrun <options> <program...>``.

    ``program`` is what each process runs, e.g. ``["-m", "finetune_trainer", "run", "--config", "/etc/job/spec.yaml"]``
    (a leading ``-m`` becomes torchrun's ``--module``). One node needs no rendezvous (``--standalone``);
    several nodes need ``rendezvous``. Restarts are left to Kubernetes (the Job's backoff), so torchrun
    does not restart workers itself; on SIGTERM it waits for them as long as the pod's grace period allows.
    """
    nodes = spec.resources.nodes
    argv = [launcher, f"--nnodes={nodes}", f"--nproc-per-node={processes_per_node(spec)}", "--max-restarts=0"]
    if nodes == 1 and rendezvous is None:
        argv.append("--standalone")
    else:
        if rendezvous is None:
            raise ValueError(
                f"resources.nodes is {nodes}: a multi-node job needs a rendezvous (the address of pod 0 through "
                "the job's headless Service)"
            )
        if rendezvous.backend == "static":
            argv += [
                f"--node-rank={rendezvous.node_rank}",
                f"--master-addr={rendezvous.master_addr}",
                f"--master-port={rendezvous.master_port}",
            ]
        else:
            if not rendezvous.run_id:
                raise ValueError("c10d rendezvous needs a run_id shared by every pod of the run (the job's uid)")
            argv += [
                "--rdzv-backend=c10d",
                f"--rdzv-endpoint={rendezvous.master_addr}:{rendezvous.master_port}",
                f"--rdzv-id={rendezvous.run_id}",
            ]
    # The workers' SIGTERM checkpoint and upload get the pod's grace period, not torchrun's 30 s.
    argv.append(f"--shutdown-timeout={worker_shutdown_seconds(spec.run_policy.termination_grace_period_seconds)}")
    if program[:1] == ["-m"]:
        argv += ["--module", *program[1:]]
    else:
        argv += list(program)
    return argv
