"""One training run, top to bottom: resolve, load, check, prepare, train, evaluate, save.

``run(spec, output_dir)`` is what the CLI calls, once per process: under torchrun or accelerate
launch every rank runs it, the Trainer does the distributed work, and only rank 0 writes files.
Outputs in ``output_dir``:

- the model (``full``, ``feature-extraction``) or the adapter with the task head (peft methods),
  and the tokenizer, loadable with :func:`load_for_inference`;
- ``checkpoint-N/`` directories written during training (a rerun resumes from the newest);
- ``metrics.json``: final eval metrics, parameter counts, train runtime and throughput;
- ``samples.jsonl`` (generative tasks): the final model's answers to a few test (else eval) prompts;
- ``predictions.jsonl`` (classification, token classification, QA with a test split): one prediction per row;
- ``spec.resolved.yaml``: the spec with every default filled in;
- ``trainer_state.json``: the Trainer's log history.

With ``spec.output.s3`` every checkpoint is also uploaded as it is saved, a restarted run resumes
from the newest complete checkpoint in S3, and the outputs above go to S3 at the end
(:mod:`finetune_trainer.s3_output`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import yaml

from finetune_api.contract import METRICS_FILE, PREDICTIONS_FILE, RESOLVED_SPEC_FILE, SAMPLES_FILE
from finetune_api.spec import (
    FineTuneJobSpec,
    wire,
)
from finetune_api.status import FineTuneJobStatus, Parameters, Runtime
from finetune_api.validation import load_spec_file
from finetune_trainer import kernels
from finetune_trainer.arguments import DeviceCapability, resolve_precision, training_kwargs
from finetune_trainer.data import load_datasets, load_retry_seconds
from finetune_trainer.errors import ConfigError, RetryableError, retry_transient
from finetune_trainer.evaluation import evaluate_test_split, sample_generations
from finetune_trainer.job_location import step_of
from finetune_trainer.methods import get_method
from finetune_trainer.methods.base import HasRunHooks, count_parameters
from finetune_trainer.sizing_on_device import size_for_device
from finetune_trainer.tasks import get_task
from finetune_trainer.tasks.base import (
    AdjustsTokenizer,
    ChecksWithTokenizer,
    RunContext,
    best_model_metric,
    pretrained_kwargs,
)
from finetune_trainer.world import WorldInfo

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase, Trainer

    from finetune_api.spec import ModelSource, S3Location
    from finetune_trainer.status_reporter import StatusReporter

log = logging.getLogger(__name__)
T = TypeVar("T")

ADAPTER_CONFIG_FILE = "adapter_config.json"
# Files a saved tokenizer leaves in a model directory (one of them is enough).
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "vocab.json",
    "tokenizer.model",
    "spiece.model",
)
# Written last by Trainer._save_checkpoint: its presence marks a checkpoint as complete.
CHECKPOINT_COMPLETE_MARKER = "trainer_state.json"


@dataclass
class RunResult:
    """What a run leaves in memory: the metrics written to metrics.json and the trained objects."""

    metrics: dict[str, Any]
    model: Any  # the trained model as the Trainer holds it (a PeftModel for adapter methods)
    tokenizer: PreTrainedTokenizerBase
    trainer: Trainer
    output_dir: Path


@dataclass
class InferenceModel:
    """A saved run loaded back: the model in eval mode, its tokenizer and the resolved spec."""

    model: Any
    tokenizer: PreTrainedTokenizerBase
    spec: FineTuneJobSpec


def resolve_model_location(source: ModelSource, s3: S3Location | None = None) -> str:
    """The hub id or local directory the model and tokenizer load from.

    An s3:// model.uri is downloaded into the local cache by the storage module (connection settings
    of ``s3``, spec.output.s3, else the environment's).
    """
    if source.uri is not None:
        from finetune_trainer.s3_cache import fetch_directory

        return str(fetch_directory(source.uri, field="model.uri", location=s3))
    if source.path is not None:
        path = Path(source.path).expanduser()
        if not path.is_dir():
            raise ConfigError(f"model.path: {path} is not a directory; give the directory of a saved model")
        if not (path / "config.json").is_file():
            present = ", ".join(sorted(p.name for p in path.iterdir())[:10]) or "nothing"
            raise ConfigError(
                f"model.path: there is no model in {path} (no config.json; it holds {present}); give the directory "
                "a model was saved to with save_pretrained (config.json, the weights and the tokenizer files)"
            )
        return str(path)
    assert source.name is not None  # the spec rules guarantee exactly one source
    return source.name


def load_pretrained(
    spec: FineTuneJobSpec, what: str, load: Callable[[], T], *, permanent: tuple[type[Exception], ...] = (OSError,)
) -> T:
    """``load()`` of the spec's model (or its tokenizer), retrying transient hub failures in-process.

    A failure that outlasts FTJ_LOAD_RETRY_SECONDS ends as a RetryableError (exit 75); one of the
    ``permanent`` types that is not transient (missing repository, gated without a token, bad files) as a
    ConfigError naming model.name or model.path.
    """
    field = "model.path" if spec.model.path else "model.name"
    try:
        return retry_transient(f"loading {what}", load, budget_seconds=load_retry_seconds())
    except RetryableError as err:
        raise RetryableError(f"{field}: cannot load {what}: {err}") from err
    except permanent as err:
        raise unloadable(spec, what, err) from None


def unloadable(spec: FineTuneJobSpec, what: str, err: BaseException) -> ConfigError:
    """The ConfigError for model files that cannot load: the field, the first line of the reason, the fix."""
    field = "model.path" if spec.model.path else "model.name"
    reason = str(err).strip().split("\n")[0][:300].rstrip(".")
    return ConfigError(
        f"{field}: cannot load {what}: {reason}. Check that it holds a complete model saved with "
        f"save_pretrained (config.json, the weights and the tokenizer files), or fix {field}"
    )


def load_tokenizer(spec: FineTuneJobSpec, model_path: str) -> PreTrainedTokenizerBase:
    """The model's tokenizer, with a pad token (batches are padded) and word-split input support."""
    from transformers import AutoTokenizer

    field = "model.path" if spec.model.path else "model.name"
    local = Path(model_path)
    if local.is_dir() and not any((local / name).is_file() for name in TOKENIZER_FILES):
        # Without these, transformers builds an empty tokenizer from config.json alone and training goes on.
        raise ConfigError(
            f"{field}: {model_path} holds no tokenizer (none of {', '.join(TOKENIZER_FILES)}); save the "
            "tokenizer next to the model (tokenizer.save_pretrained) or give a directory that has it"
        )
    tokenizer = load_pretrained(
        spec,
        f"a tokenizer from {model_path}",
        lambda: AutoTokenizer.from_pretrained(model_path, **pretrained_kwargs(spec, model_path)),
        permanent=(OSError, ValueError),
    )
    task = get_task(spec.task.type)
    if isinstance(task, AdjustsTokenizer):
        task.adjust_tokenizer(tokenizer)
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ConfigError(f"{field}: the tokenizer of {model_path} has neither a pad nor an eos token")
        # Padding positions are masked out, so reusing eos as padding changes no result.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def latest_checkpoint(output_dir: Path) -> str | None:
    """The newest complete ``checkpoint-N`` in output_dir (one interrupted mid-save is skipped)."""
    if not output_dir.is_dir():
        return None
    found = []
    for child in output_dir.iterdir():
        step = step_of(child.name)
        if step is not None and child.is_dir() and (child / CHECKPOINT_COMPLETE_MARKER).is_file():
            found.append((step, child))
    return str(max(found)[1]) if found else None


def distributed_kwargs(spec: FineTuneJobSpec, device: DeviceCapability) -> dict[str, Any]:
    """DeepSpeed / FSDP TrainingArguments for the spec's strategy (empty for one process or DDP)."""
    from finetune_trainer.distribution import training_kwargs as strategy_kwargs

    return strategy_kwargs(spec, precision=resolve_precision(spec.training.precision, device))


def check_sequence_length(spec: FineTuneJobSpec, model: Any, tokenizer: PreTrainedTokenizerBase) -> None:
    """training.maxSeqLength must fit the model's position embeddings."""
    limits = [getattr(getattr(model, "config", None), "max_position_embeddings", None)]
    if tokenizer.model_max_length and tokenizer.model_max_length < 1_000_000:  # unset means a huge sentinel
        limits.append(tokenizer.model_max_length)
    limit = min((x for x in limits if isinstance(x, int)), default=None)
    if limit is not None and spec.training.max_seq_length > limit:
        raise ConfigError(
            f"training.maxSeqLength {spec.training.max_seq_length} is longer than the model's {limit} positions; "
            f"set it to {limit} or less"
        )


def train(spec: FineTuneJobSpec, output_dir: str | Path, *, callbacks: list[Any] | None = None) -> RunResult:
    """Train per the spec, save the artifacts in output_dir, and return them with the metrics.

    ``callbacks`` are extra TrainerCallbacks (progress reporting, checkpoint upload).
    """
    from finetune_trainer.status_reporter import StatusReporter

    out = Path(output_dir)
    world = WorldInfo.from_env()
    world.check_planned()
    # Rank 0 reports progress, metrics, parameters and artifacts on its FineTuneJob (in a cluster only).
    reporter = StatusReporter.from_env() if world.is_main else None
    try:
        return _train(spec, out, world, reporter, callbacks)
    finally:
        if reporter is not None:
            reporter.close()  # sends what is pending before the process ends


def _train(
    spec: FineTuneJobSpec,
    out: Path,
    world: WorldInfo,
    reporter: StatusReporter | None,
    callbacks: list[Any] | None,
) -> RunResult:
    from transformers import EarlyStoppingCallback, set_seed

    from finetune_trainer.artifacts import save_merged_model, write_model_card
    from finetune_trainer.fingerprint import check_local_resume, record_local_fingerprint
    from finetune_trainer.preemption import StopOnSigterm
    from finetune_trainer.s3_output import open_output
    from finetune_trainer.status_reporter import ProgressCallback

    # S3 first: refused credentials, a missing bucket or a checkpoint of another spec fail before anything loads.
    s3_output = open_output(spec, out, reporter=reporter)
    check_local_resume(spec, out, latest_checkpoint(out))
    task = get_task(spec.task.type)
    method = get_method(spec.method.type)
    device = DeviceCapability.detect()
    kernels.check_gpu_options(spec, device)
    spec = size_for_device(spec, device, reporter)  # training.sizing auto: batch, checkpointing, strategy

    model_path = resolve_model_location(spec.model, spec.output.s3)
    tokenizer = load_tokenizer(spec, model_path)
    datasets = load_datasets(spec)
    task.check_dataset(spec, datasets)
    if isinstance(task, ChecksWithTokenizer):
        task.check_with_tokenizer(spec, datasets, tokenizer)

    metric, greater_is_better = best_model_metric(task, spec)
    kwargs = training_kwargs(
        spec,
        out,
        world=world,
        device=device,
        metric_for_best_model=metric,
        greater_is_better=greater_is_better,
        distributed_kwargs=distributed_kwargs(spec, device),
    )

    # The head is initialised randomly: seed it so reruns (and resumes) start from the same weights.
    set_seed(spec.training.seed)
    from safetensors import SafetensorError

    load_kwargs = method.load_kwargs(spec)
    try:
        model = kernels.load_with_attention(
            lambda attention: load_pretrained(
                spec,
                f"a model from {model_path}",
                lambda: task.load_model(spec, model_path, {**load_kwargs, **attention}),
                permanent=(OSError, SafetensorError),  # missing or truncated model files
            ),
            spec,
            device,
            resolve_precision(spec.training.precision, device),
        )
    except ValueError as err:  # not about attention: an unknown model type, a config.json transformers cannot read
        raise unloadable(spec, f"a model from {model_path}", err) from None
    check_sequence_length(spec, model, tokenizer)
    kernels.check_liger(spec, model)
    model = method.prepare(spec, model, task.peft_task_type)
    if isinstance(method, HasRunHooks):
        method.start(spec, model, out, world.is_main)
    trainable, total = count_parameters(model)
    log.info("parameters: %s trainable of %s (%.3f%%)", f"{trainable:,}", f"{total:,}", 100 * trainable / total)

    sigterm = StopOnSigterm()  # eviction, preemption: a checkpoint at the current step, then exit 75
    all_callbacks = [sigterm, *(callbacks or [])]
    if reporter is not None:
        reporter.update(FineTuneJobStatus(parameters=Parameters(trainable=trainable, total=total)))
        per_step = spec.training.batch_size_per_device * spec.training.gradient_accumulation_steps * world.world_size
        history_uri = str(s3_output.location.history) if s3_output is not None else None
        all_callbacks.append(ProgressCallback(reporter, global_batch_size=per_step, history_uri=history_uri))
    if spec.training.early_stopping_patience is not None:
        all_callbacks.append(EarlyStoppingCallback(early_stopping_patience=spec.training.early_stopping_patience))
    if s3_output is not None:
        all_callbacks.append(s3_output.callback)  # uploads every checkpoint as it is saved
    ctx = RunContext(
        spec=spec,
        output_dir=out,
        model_path=model_path,
        tokenizer=tokenizer,
        method=method,
        datasets=datasets,
        training_kwargs=kwargs,
        callbacks=all_callbacks,
    )
    trainer = task.build_trainer(ctx, model)
    runtime = kernels.runtime(trainer)
    log.info("runtime: %s", ", ".join(f"{k} {v}" for k, v in wire(runtime).items()))
    if reporter is not None:
        reporter.update(FineTuneJobStatus(runtime=runtime))

    if world.is_main:
        record_local_fingerprint(spec, out)
    checkpoint = latest_checkpoint(out)
    if s3_output is not None:
        checkpoint = s3_output.restore(trainer, checkpoint)  # the newest complete checkpoint in S3, downloaded
    if checkpoint:
        log.info("resuming from %s", checkpoint)
    train_output = trainer.train(resume_from_checkpoint=checkpoint)
    sigterm.raise_if_stopped(s3_output)
    eval_metrics = trainer.evaluate() if trainer.eval_dataset is not None else {}
    test_metrics, predictions = evaluate_test_split(task, ctx, trainer.model)
    if reporter is not None and test_metrics:
        reporter.update(FineTuneJobStatus(test_metrics=test_metrics))
    # model.generate bypasses the FSDP/DeepSpeed wrappers that gather sharded weights: no samples there.
    sharded = trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled
    samples = [] if sharded else sample_generations(task, ctx, trainer.model)

    # Every rank calls save_model (DeepSpeed/FSDP gather weights collectively); only rank 0 writes.
    trainer.save_model(str(out))
    if isinstance(method, HasRunHooks):
        method.finish(spec, trainer.model, out, trainer.is_world_process_zero())
    trainer.save_state()
    metrics: dict[str, Any] = {
        **eval_metrics,
        **test_metrics,
        **{k: v for k, v in train_output.metrics.items() if k.startswith("train_") or k == "epoch"},
        "global_step": trainer.state.global_step,
        "trainable_parameters": trainable,
        "total_parameters": total,
    }
    if trainer.is_world_process_zero():
        out.mkdir(parents=True, exist_ok=True)
        (out / METRICS_FILE).write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
        for name, rows in ((SAMPLES_FILE, samples), (PREDICTIONS_FILE, predictions)):
            if rows:
                (out / name).write_text("".join(json.dumps(row) + "\n" for row in rows))
        resolved = resolved_spec(spec, metric, trainer.model, runtime)
        (out / RESOLVED_SPEC_FILE).write_text(yaml.safe_dump(wire(resolved), sort_keys=False))
    if s3_output is not None:
        merged = None
        if trainer.is_world_process_zero():
            write_model_card(spec, out, metrics, s3_output.location, samples)
            merged = save_merged_model(spec, out, model_path) if spec.output.save_merged_model else None
        s3_output.finish(trainer, metrics, merged=merged)  # final artifacts and manifest to S3
    return RunResult(metrics=metrics, model=trainer.model, tokenizer=tokenizer, trainer=trainer, output_dir=out)


def run(spec: FineTuneJobSpec, output_dir: str | Path) -> dict[str, Any]:
    """Train per the spec into output_dir; the metrics written to metrics.json."""
    return train(spec, output_dir).metrics


def resolved_spec(spec: FineTuneJobSpec, metric: str, model: Any, runtime: Runtime | None = None) -> FineTuneJobSpec:
    """The spec with the defaults the run chose written in: best-model metric, method options, LoRA targets,
    and (from ``runtime``) the attention kernel and optimiser that auto resolved to."""
    update: dict[str, Any] = {"metric_for_best_model": metric}
    if runtime is not None:
        update.update(attention=runtime.attention, optimizer=runtime.optimizer)
    training = spec.training.model_copy(update=update)
    method = get_method(spec.method.type).resolved(spec, model)
    return spec.model_copy(update={"training": training, "method": method})


def load_for_inference(output_dir: str | Path, *, base_model_path: str | None = None) -> InferenceModel:
    """Load a finished run's model (or base + adapter) and tokenizer from output_dir, in eval mode.

    Adapters are applied to the base model named in spec.resolved.yaml; ``base_model_path``
    overrides where that base loads from.
    """
    from transformers import AutoTokenizer

    out = Path(output_dir)
    spec = load_spec_file(out / RESOLVED_SPEC_FILE)
    task = get_task(spec.task.type)
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    model: Any
    if (out / ADAPTER_CONFIG_FILE).is_file():
        from peft import PeftModel

        base_path = base_model_path or resolve_model_location(spec.model, spec.output.s3)
        base = task.load_model(spec, base_path, get_method(spec.method.type).load_kwargs(spec))
        model = PeftModel.from_pretrained(base, str(out))
    else:
        model = task.load_model(spec, str(out), {})
    model.eval()
    return InferenceModel(model=model, tokenizer=tokenizer, spec=spec)
