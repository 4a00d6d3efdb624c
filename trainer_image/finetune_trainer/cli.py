"""Command line of the trainer image.

    python -m finetune_trainer run --config job.yaml --output-dir /outputs
    python -m finetune_trainer validate --config job.yaml [--gpu-memory 80Gi]
    python -m finetune_trainer preflight --config job.yaml

``--config`` takes a whole FineTuneJob manifest or a bare spec. ``run`` works unchanged under
``torchrun --nproc-per-node N`` and ``accelerate launch``: every process runs it and only
rank 0 writes outputs. Errors a person can fix end the process with a message (no traceback)
and the exit code the operator's podFailurePolicy reads: 3 for the spec, 4 for the data.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence

from finetune_api.spec import FineTuneJobSpec
from finetune_api.validation import InvalidSpec, load_spec_file
from finetune_trainer.errors import (
    EXIT_CONFIG,
    EXIT_DATA,
    EXIT_OK,
    EXIT_RETRYABLE,
    ConfigError,
    TrainerError,
    classify,
    write_termination_message,
)
from finetune_trainer.world import WorldInfo

log = logging.getLogger("finetune_trainer")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="finetune_trainer", description="Fine-tune a Hugging Face model from a FineTuneJob spec."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="train the model the spec describes into --output-dir")
    run.add_argument("--config", required=True, help="FineTuneJob YAML (manifest or bare spec)")
    run.add_argument("--output-dir", required=True, help="directory for checkpoints, the model and metrics.json")
    validate = commands.add_parser(
        "validate", help="check the spec and the dataset's splits, columns and labels without loading the model"
    )
    validate.add_argument("--config", required=True, help="FineTuneJob YAML (manifest or bare spec)")
    validate.add_argument(
        "--gpu-memory",
        help="memory of one GPU (e.g. 80Gi, 40G, 81559Mi): print the per-GPU memory estimate and whether the job fits "
        "(default: spec.resources.gpuMemory; without either no estimate is printed)",
    )
    preflight = commands.add_parser(
        "preflight",
        help="check model access, the data and the S3 output without the weights; print a JSON verdict "
        "(what the operator's CPU preflight pod runs)",
    )
    preflight.add_argument("--config", required=True, help="FineTuneJob YAML (manifest or bare spec)")
    return parser


def _configure_logging(world: WorldInfo) -> None:
    # Rank 0 tells the story; the other ranks only speak up when something is wrong.
    level = logging.INFO if world.is_main else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def validate_command(config: str, gpu_memory: str | None = None) -> int:
    """Check spec, splits, columns and labels (and tokenizer-level fits); print OK and a summary.

    With a GPU memory size (``--gpu-memory`` or spec.resources.gpuMemory) also print the memory estimate
    table; a job that does not fit ends with the config exit code.
    """
    from finetune_trainer.engine import resolve_model_location
    from finetune_trainer.preflight import check_data

    spec = load_spec_file(config)
    # Tokenizer only (small files): never the model weights.
    splits = check_data(spec, lambda: resolve_model_location(spec.model, spec.output.s3))
    rows = ", ".join(f"{name} {len(split)} rows" for name, split in splits.items())
    print(f"OK: {spec.task.type} with {spec.method.type}; {rows}")
    memory = gpu_memory or spec.resources.gpu_memory
    return (
        print_estimate(spec, memory, "--gpu-memory" if gpu_memory else "spec.resources.gpuMemory")
        if memory
        else EXIT_OK
    )


def print_estimate(spec: FineTuneJobSpec, gpu_memory: str, field: str) -> int:
    """Print the estimate table for GPUs of ``gpu_memory``; EXIT_CONFIG when the job does not fit."""
    from finetune_api.estimate import parse_memory
    from finetune_api.model_shapes import EstimateUnavailable
    from finetune_api.sizing import estimate_table, fit_report
    from finetune_trainer.model_config import read_model_config

    try:
        memory = parse_memory(gpu_memory)
    except ValueError:
        raise ConfigError(f"{field}: {gpu_memory!r} is not a memory size; write it like 80Gi, 40G or 81559Mi") from None
    try:
        report = fit_report(spec, read_model_config(spec), memory)
    except EstimateUnavailable as err:
        print(f"memory estimate: not available: {err}")
        return EXIT_OK
    print(estimate_table(report))
    return EXIT_OK if report.fits else EXIT_CONFIG


def run_command(config: str, output_dir: str) -> int:
    """Train into output_dir; rank 0 prints the final metrics as JSON."""
    from finetune_trainer import engine

    spec = load_spec_file(config)
    metrics = engine.run(spec, output_dir)
    if WorldInfo.from_env().is_main:
        print(json.dumps(metrics, sort_keys=True))
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    args = _parser().parse_args(argv)
    world = WorldInfo.from_env()
    _configure_logging(world)
    try:
        if args.command == "validate":
            return validate_command(args.config, args.gpu_memory)
        if args.command == "preflight":
            from finetune_trainer.preflight import preflight_command

            return preflight_command(args.config)
        return run_command(args.config, args.output_dir)
    except InvalidSpec as err:
        print(f"config error: {err}", file=sys.stderr)
        return EXIT_CONFIG
    except TrainerError as err:
        return report_failure(world, err.exit_code, str(err))
    except Exception as err:
        # Not one of ours: a library error that escaped every call site. Retryable and permanent ones get
        # their code and a one-line reason; anything else is a bug and keeps its traceback (exit 1).
        failure = classify(err)
        if failure.kind == "unexpected":
            raise
        return report_failure(world, failure.exit_code, failure.reason)


def report_failure(world: WorldInfo, code: int, reason: str) -> int:
    """Print the reason on stderr (and in the pod's termination message); the exit code."""
    kind = {EXIT_CONFIG: "config error", EXIT_DATA: "data error", EXIT_RETRYABLE: "retryable error"}.get(code, "error")
    prefix = f"[rank {world.rank}] " if world.world_size > 1 else ""
    print(f"{prefix}{kind}: {reason}", file=sys.stderr)
    write_termination_message(f"{kind}: {reason}")
    return code


if __name__ == "__main__":
    sys.exit(main())
