"""GPU check: the GPU-only training paths of the trainer, each for a few steps on a ~1B-parameter Llama.

Not a test CI runs: run it by hand on a machine with one CUDA GPU (see tests/gpu/README.md)::

    python3 tests/gpu/gpu_check.py                 # all runs, ~1.1B random Llama, prints a table
    python3 tests/gpu/gpu_check.py --runs qlora-sft zero3
    python3 tests/gpu/gpu_check.py --dry-run       # CPU, tiny model, 2 steps: proves the script end to end

Runs (each through ``finetune_trainer.engine.train``, the trainer's own code path, on synthetic tokens):

* ``qlora-sft``  causal-lm SFT, method qlora (bitsandbytes NF4 + double quant, bf16 compute), LoRA r=16
* ``lora-sft``   causal-lm SFT, method lora, bf16
* ``full-bf16``  causal-lm SFT, method full, bf16
* ``zero2``      full fine-tuning under DeepSpeed ZeRO-2 (one process launched by torchrun)
* ``zero3``      full fine-tuning under DeepSpeed ZeRO-3 (one process launched by torchrun)
* ``lora-sdpa``, ``lora-fa2``, ``lora-padded``, ``lora-padfree``, ``lora-liger``, ``lora-compile``: LoRA SFT
  with one throughput option changed (see throughput_runs.py), printed beside published figures

Each run is its own process, so a crash, an out-of-memory or a missing package ends that run only; its
error is recorded and the others' figures are kept. For each run it reports tokens/s (after warm-up
steps), peak GPU memory (``torch.cuda.max_memory_allocated``) beside the memory estimate the operator
computes for the same spec (``finetune_api.estimate``, with the ratio), and model-FLOPs utilisation,
MFU = 6 * N * tokens/s / peak, with N the model's parameter count and the peak the GPU's dense bf16
tensor throughput from the table below (the value used is printed and stored). 6N counts forward and
backward of every weight; adapter runs skip weight gradients of the frozen base and checkpointing adds a
forward, so their MFU is a convention for comparison, not a hardware reading.

The summary is printed as a table and written as JSON to ``$OUT/gpu_check.json`` when ``OUT`` is set
(else to the work directory). The model is random-initialised from a config and the tokenizer is a
word-level one built here: nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

# The script's own folder is on sys.path when it runs as a script (python3 tests/gpu/gpu_check.py).
from throughput_runs import OPTION_RUNS, check_wiring, missing_packages, print_anchors

REPO = Path(__file__).resolve().parents[2]
# Adapters whose memory estimate has no GPU measurement yet (their model states are exact on CPU).
ADAPTER_RUNS: dict[str, dict[str, Any]] = {
    "ia3-sft": {"type": "ia3"},
    "prefix-sft": {"type": "prefix-tuning", "prefixTuning": {"numVirtualTokens": 32}},
    "ptuning-sft": {"type": "p-tuning", "pTuning": {"numVirtualTokens": 32}},
}
BASE_RUNS = ("qlora-sft", "lora-sft", "full-bf16", "zero2", "zero3", *ADAPTER_RUNS)
RUNS = (*BASE_RUNS, *OPTION_RUNS)  # the throughput options: see throughput_runs.py
DEEPSPEED_RUNS = {"zero2": 2, "zero3": 3}
RESULT_FILE = "gpu_check.json"

# Dense (no sparsity) bf16 tensor-core peaks in TFLOP/s, from NVIDIA's data sheets; matched on the device name.
PEAK_BF16_TFLOPS: list[tuple[str, float]] = [
    ("H200", 989.4),
    ("H100 NVL", 835.0),
    ("H100 PCIe", 756.0),
    ("H100", 989.4),  # SXM5 / HBM3
    ("H800", 989.4),
    ("GH200", 989.4),
    ("A100", 312.0),
    ("A800", 312.0),
    ("L40S", 362.1),
    ("L4", 121.0),
]


@dataclass(frozen=True)
class Size:
    """Model and batch shape of a check."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    seq_len: int
    batch: int
    steps: int
    warmup: int  # steps excluded from the throughput


# ~1.1B parameters: Llama-3.2-1B's body (2048 wide, 16 layers, GQA 32/8, MLP 8192) with a 32k vocabulary.
GPU_SIZE = Size(hidden=2048, layers=16, heads=32, kv_heads=8, intermediate=8192, vocab=32000,
                seq_len=1024, batch=4, steps=24, warmup=4)  # fmt: skip
DRY_SIZE = Size(hidden=64, layers=2, heads=4, kv_heads=2, intermediate=128, vocab=512,
                seq_len=64, batch=2, steps=2, warmup=0)  # fmt: skip


def peak_tflops(device_name: str) -> float | None:
    """The dense bf16 peak of a GPU by name, or None when the name is not in the table."""
    for key, value in PEAK_BF16_TFLOPS:
        if key.lower() in device_name.lower():
            return value
    return None


def child_env() -> dict[str, str]:
    """Environment of the run processes: the repo's packages importable, nothing fetched from the hub."""
    paths = [str(REPO / "api"), str(REPO / "trainer_image"), str(REPO)]
    extra = os.environ.get("PYTHONPATH")
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(paths + ([extra] if extra else [])),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "TRANSFORMERS_VERBOSITY": "warning",
        "PYTHONUNBUFFERED": "1",
    }


# ---- assets: model, tokenizer, data (built once, in their own process) ----


def build_assets(work: Path, size: Size, device: str) -> dict[str, Any]:
    """Save a random Llama of ``size``, a word-level tokenizer and a JSONL of synthetic text in ``work``."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    model_dir = work / "model"
    model_dir.mkdir(parents=True, exist_ok=True)
    specials = ["<unk>", "<pad>", "</s>"]
    words = [f"w{i}" for i in range(size.vocab - len(specials))]
    vocab = {tok: i for i, tok in enumerate(specials + words)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", pad_token="<pad>", eos_token="</s>", model_max_length=4096
    )
    tokenizer.save_pretrained(str(model_dir))

    config = LlamaConfig(
        vocab_size=size.vocab,
        hidden_size=size.hidden,
        intermediate_size=size.intermediate,
        num_hidden_layers=size.layers,
        num_attention_heads=size.heads,
        num_key_value_heads=size.kv_heads,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
        pad_token_id=1,
        eos_token_id=2,
        bos_token_id=None,
    )
    torch.manual_seed(0)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    with torch.device(device):  # initialising 1B parameters on the GPU takes a second, on CPU much longer
        model = LlamaForCausalLM(config).to(dtype)
    n_params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(str(model_dir))
    del model

    # Each row is seq_len - 1 words plus the EOS the SFT trainer appends: exactly seq_len tokens, no padding.
    rng = random.Random(0)
    rows = size.batch * (size.steps + 2)
    data = work / "train.jsonl"
    with data.open("w") as f:
        for _ in range(rows):
            f.write(json.dumps({"text": " ".join(rng.choice(words) for _ in range(size.seq_len - 1))}) + "\n")
    # Rows of 1/8 to all of seq_len tokens, for padded vs padding-free batches.
    varlen = work / "train-varlen.jsonl"
    with varlen.open("w") as f:
        for _ in range(rows):
            n = rng.randint(max(size.seq_len // 8, 2), size.seq_len) - 1
            f.write(json.dumps({"text": " ".join(rng.choice(words) for _ in range(n))}) + "\n")
    return {"model_dir": str(model_dir), "data": str(data), "data_varlen": str(varlen), "n_params": n_params}


# ---- one run ----


def run_spec(name: str, assets: dict[str, Any], size: Size, dry_run: bool) -> dict[str, Any]:
    """The FineTuneJob spec of a run."""
    lora = {
        "r": 16,
        "alpha": 32,
        "dropout": 0.0,
        "targetModules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    }
    method: dict[str, Any]
    if name == "qlora-sft":
        method = {
            "type": "qlora",
            "lora": lora,
            "quantization": {"quantType": "nf4", "doubleQuant": True, "computeDtype": "bfloat16"},
        }
    elif name in ADAPTER_RUNS:
        method = ADAPTER_RUNS[name]
    elif name == "lora-sft" or name in OPTION_RUNS:
        method = {"type": "lora", "lora": lora}
    else:
        method = {"type": "full"}
    spec: dict[str, Any] = {
        "model": {"path": assets["model_dir"]},
        "task": {"type": "causal-lm", "format": "text"},
        "dataset": {"files": {"train": assets["data"]}},
        "method": method,
        "training": {
            "maxSteps": size.steps,
            "batchSizePerDevice": size.batch,
            "maxSeqLength": size.seq_len,
            "learningRate": 1e-4,
            "precision": "auto" if dry_run else "bf16",
            "gradientCheckpointing": name == "qlora-sft",  # as QLoRA is usually run
            "loggingSteps": 1,
            "evalStrategy": "no",
            "saveStrategy": "no",
            "loadBestModelAtEnd": False,
        },
        "resources": {"gpusPerNode": 1},
    }
    if name in DEEPSPEED_RUNS:
        spec["distributed"] = {"strategy": "deepspeed", "deepspeed": {"stage": DEEPSPEED_RUNS[name]}}
    if name in OPTION_RUNS:
        option = OPTION_RUNS[name]
        spec["training"].update(option.training)
        if option.data == "varlen":
            spec["dataset"]["files"]["train"] = assets["data_varlen"]
    return spec


def worker(name: str, work: Path, size: Size, dry_run: bool, result_path: Path) -> int:
    """Train one run through the engine and write its figures to result_path."""
    import torch
    from transformers import TrainerCallback

    from finetune_api.spec import wire
    from finetune_api.validation import parse_spec
    from finetune_trainer import engine, kernels

    cuda = torch.cuda.is_available()
    assets = json.loads((work / "assets.json").read_text())

    class StepClock(TrainerCallback):
        """Wall-clock time at the end of every optimiser step (after the GPU finished it)."""

        def __init__(self) -> None:
            self.start = 0.0
            self.ends: list[float] = []

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if cuda:
                torch.cuda.synchronize()
            self.start = time.perf_counter()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if cuda:
                torch.cuda.synchronize()
            self.ends.append(time.perf_counter())

    spec = parse_spec(run_spec(name, assets, size, dry_run))
    clock = StepClock()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    began = time.perf_counter()
    result = engine.train(spec, work / "runs" / name, callbacks=[clock])
    wall = time.perf_counter() - began

    history = result.trainer.state.log_history
    losses = [e["loss"] for e in history if "loss" in e]
    tokens_logged = [e["num_tokens"] for e in history if "num_tokens" in e and "loss" in e]
    steps = len(clock.ends)
    tokens_per_step = (tokens_logged[-1] / steps) if tokens_logged and steps else size.batch * size.seq_len
    timed = clock.ends[size.warmup :] if steps > size.warmup + 1 else [clock.start, *clock.ends]
    seconds = timed[-1] - timed[0]
    tokens_per_s = tokens_per_step * (len(timed) - 1) / seconds if seconds > 0 else None
    device_name = torch.cuda.get_device_name(0) if cuda else "cpu"
    peak = peak_tflops(device_name) if cuda else None
    n_params = int(assets["n_params"])
    figures = {
        "name": name,
        "ok": True,
        "device": device_name,
        "steps": steps,
        "timed_steps": len(timed) - 1,
        "tokens_per_step": tokens_per_step,
        "step_time_s": seconds / (len(timed) - 1) if len(timed) > 1 else None,
        "tokens_per_s": tokens_per_s,
        "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
        "peak_reserved_gib": torch.cuda.max_memory_reserved() / 2**30 if cuda else None,
        "n_params": n_params,
        "trainable_params": result.metrics.get("trainable_parameters"),
        "peak_bf16_tflops": peak,
        "mfu": (6 * n_params * tokens_per_s / (peak * 1e12)) if (peak and tokens_per_s) else None,
        "loss_first": losses[0] if losses else None,
        "loss_last": losses[-1] if losses else None,
        "wall_s": wall,
        "quantized_4bit_layers": sum(type(m).__name__ == "Linear4bit" for m in result.model.modules()),
        "runtime": wire(kernels.runtime(result.trainer)),  # attention, padding-free, Liger, compile, optimiser
    }
    figures.update(estimate_figures(spec, assets, result, figures))
    if int(os.environ.get("RANK", "0")) == 0:
        result_path.write_text(json.dumps(figures, indent=2))
    return 0


def estimate_figures(spec: Any, assets: dict[str, Any], result: Any, measured: dict[str, Any]) -> dict[str, Any]:
    """The memory estimate for this run (from the model's config.json, as the operator computes it) beside
    what was measured: the peak allocated and reserved on the GPU, and the model states (parameters and
    optimizer state, after training) wherever the run holds them unpartitioned (not under DeepSpeed).

    Ratios are estimate / measured; the goal is 0.9 to 1.15 for the peaks.
    """
    from finetune_api.activations import RUNTIME_BYTES
    from finetune_api.estimate import estimate_memory
    from finetune_trainer.memory import optimizer_state_bytes, parameter_bytes

    config = json.loads((Path(assets["model_dir"]) / "config.json").read_text())
    estimate = estimate_memory(spec, config)
    out: dict[str, Any] = {
        "est_allocated_gib": estimate.allocated / 2**30,
        "est_reserved_gib": (estimate.per_gpu.total - RUNTIME_BYTES) / 2**30,
        "est_breakdown_gib": {k: v / 2**30 for k, v in asdict(estimate.per_gpu).items()},
        "est_trainable_params": estimate.trainable,
    }
    if measured.get("peak_mem_gib"):
        out["est_ratio_allocated"] = out["est_allocated_gib"] / measured["peak_mem_gib"]
    if measured.get("peak_reserved_gib"):
        out["est_ratio_reserved"] = out["est_reserved_gib"] / measured["peak_reserved_gib"]
    if spec.distributed.strategy != "deepspeed":
        states = parameter_bytes(result.model) + optimizer_state_bytes(result.trainer.optimizer)
        expected = estimate.model_states.weights + estimate.model_states.optimizer_states
        out.update(states_gib=states / 2**30, est_states_gib=expected / 2**30, est_ratio_states=expected / states)
    return out


def within_goal(ratio: float | None) -> str:
    """'yes' when an estimate/measured ratio meets the goal (within 15 %, never more than 10 % below)."""
    if ratio is None:
        return "-"
    return "yes" if 0.9 <= ratio <= 1.15 else "NO"


# ---- the driver ----


@dataclass
class Outcome:
    """What the driver knows about one run."""

    name: str
    ok: bool
    figures: dict[str, Any]
    error: str | None = None
    seconds: float = 0.0


def launch(argv: list[str], log: Path, timeout: float) -> tuple[int, str]:
    """Run a child process, logging to a file; (exit code, last lines of its output). 124: timed out."""
    with log.open("w") as out:
        # Its own process group, so a timeout also ends the workers torchrun started.
        child = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=child_env(), start_new_session=True)
        try:
            code = child.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
            code = 124
    tail = log.read_text(errors="replace").splitlines()[-25:]
    return code, "\n".join(tail)


def positive(text: str) -> int:
    """argparse type: an integer of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def chosen_size(args: argparse.Namespace) -> Size:
    """The model and batch shape of this invocation: the default size with --seq-len / --batch applied."""
    base = DRY_SIZE if args.dry_run else GPU_SIZE
    return replace(base, seq_len=args.seq_len or base.seq_len, batch=args.batch or base.batch)


def shape_args(args: argparse.Namespace) -> list[str]:
    """The --seq-len / --batch flags to hand on to worker processes."""
    flags = []
    if args.seq_len:
        flags += ["--seq-len", str(args.seq_len)]
    if args.batch:
        flags += ["--batch", str(args.batch)]
    return flags


def run_one(name: str, args: argparse.Namespace, work: Path) -> Outcome:
    """Launch one run in its own process (under torchrun for DeepSpeed) and collect its figures."""
    result_path = work / f"result-{name}.json"
    result_path.unlink(missing_ok=True)
    script = [str(Path(__file__).resolve()), "--worker", name, "--workdir", str(work), *shape_args(args)]
    if args.dry_run:
        script.append("--dry-run")
    if name in OPTION_RUNS:
        missing = missing_packages(name)
        if missing and not (args.dry_run and OPTION_RUNS[name].gpu_only):
            return Outcome(name, False, {}, f"skipped: {', '.join(missing)} not installed (see tests/gpu/README.md)")
        if args.dry_run and OPTION_RUNS[name].gpu_only:
            assets = json.loads((work / "assets.json").read_text())
            return Outcome(name, False, {}, check_wiring(name, run_spec(name, assets, chosen_size(args), True)))
    if name in DEEPSPEED_RUNS:
        if args.dry_run:
            return Outcome(name, False, {}, "skipped in --dry-run: DeepSpeed needs CUDA (its CPU backend needs oneCCL)")
        try:
            import importlib.util

            if importlib.util.find_spec("deepspeed") is None:
                return Outcome(name, False, {}, "skipped: deepspeed is not installed (see tests/gpu/README.md)")
        except ImportError:
            pass
        from finetune_api.distributed import torchrun_command
        from finetune_api.validation import parse_spec

        # The same launcher argv the operator gives a one-GPU pod, through this interpreter.
        assets = json.loads((work / "assets.json").read_text())
        spec = parse_spec(run_spec(name, assets, chosen_size(args), False))
        argv = torchrun_command(spec, script)
        argv = [sys.executable, "-m", "torch.distributed.run", *argv[1:]]
    else:
        argv = [sys.executable, *script]
    began = time.perf_counter()
    code, tail = launch(argv, work / "logs" / f"{name}.log", args.timeout)
    seconds = time.perf_counter() - began
    if code == 0 and result_path.is_file():
        return Outcome(name, True, json.loads(result_path.read_text()), seconds=seconds)
    why = "timed out" if code == 124 else f"exit code {code}"
    return Outcome(name, False, {}, f"{why}; last output:\n{tail}", seconds)


def environment() -> dict[str, Any]:
    """Library versions and the GPU, for the summary."""
    import importlib.metadata as md

    versions = {}
    for package in ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "bitsandbytes", "deepspeed"):
        try:
            versions[package] = md.version(package)
        except md.PackageNotFoundError:
            versions[package] = None
    info: dict[str, Any] = {"python": sys.version.split()[0], "versions": versions}
    try:
        import torch

        if torch.cuda.is_available():
            name = torch.cuda.get_device_name(0)
            props = torch.cuda.get_device_properties(0)
            info.update(gpu=name, gpu_memory_gib=props.total_memory / 2**30, peak_bf16_tflops=peak_tflops(name))
        else:
            info.update(gpu=None)
    except Exception as err:  # the summary must still be written
        info.update(gpu_error=repr(err))
    return info


def _cell(figures: dict[str, Any], key: str, fmt: str) -> str:
    value = figures.get(key)
    return format(value, fmt) if isinstance(value, int | float) else "-"


def status_of(outcome: Outcome) -> str:
    """ok, skipped (not attempted here) or FAILED."""
    if outcome.ok:
        return "ok"
    return "skipped" if (outcome.error or "").startswith("skipped") else "FAILED"


def print_table(outcomes: list[Outcome], peak: float | None) -> None:
    """The figures of every run, one line each, then the errors."""
    header = (
        f"{'run':<10} {'status':<8} {'tokens/s':>10} {'step s':>8} {'peak GiB':>9} {'MFU':>7} {'loss':>15} {'4bit':>5}"
    )
    print(header)
    print("-" * len(header))
    for o in outcomes:
        f = o.figures
        loss = f"{_cell(f, 'loss_first', '.3f')}->{_cell(f, 'loss_last', '.3f')}" if o.ok else "-"
        mfu = f"{100 * f['mfu']:.1f}%" if o.ok and f.get("mfu") else "-"
        print(
            f"{o.name:<10} {status_of(o):<8} {_cell(f, 'tokens_per_s', ',.0f'):>10} "
            f"{_cell(f, 'step_time_s', '.3f'):>8} {_cell(f, 'peak_mem_gib', '.1f'):>9} {mfu:>7} {loss:>15} "
            f"{_cell(f, 'quantized_4bit_layers', 'd'):>5}"
        )
    print(f"MFU = 6 * N * tokens/s / peak bf16 ({peak if peak else 'unknown'} TFLOP/s dense)")
    print()
    head = f"{'run':<10} {'est GiB':>8} {'peak GiB':>9} {'est/peak':>9} {'est/resv':>9} "
    head += f"{'states est/meas':>16} {'goal':>5}"
    print(head)
    print("-" * len(head))
    for o in outcomes:
        if not o.ok:
            continue
        f = o.figures
        print(
            f"{o.name:<10} {_cell(f, 'est_allocated_gib', '.2f'):>8} {_cell(f, 'peak_mem_gib', '.2f'):>9} "
            f"{_cell(f, 'est_ratio_allocated', '.3f'):>9} {_cell(f, 'est_ratio_reserved', '.3f'):>9} "
            f"{_cell(f, 'est_ratio_states', '.4f'):>16} {within_goal(f.get('est_ratio_allocated')):>5}"
        )
    print("estimate / measured; goal 0.90-1.15 for the peak (never more than 10 % below)")
    for o in outcomes:
        if not o.ok:
            print(f"\n[{o.name}] {o.error}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", nargs="+", choices=RUNS, default=list(RUNS), help="which runs (default: all)")
    parser.add_argument("--dry-run", action="store_true", help="tiny model, 2 steps, on CPU; DeepSpeed runs skipped")
    parser.add_argument("--workdir", default=None, help="scratch directory (default: a fresh one under /tmp)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds allowed per run (default 300)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="override the GPU's dense bf16 peak")
    parser.add_argument("--seq-len", type=positive, default=None, help="tokens per row (default 1024; dry run 64)")
    parser.add_argument("--batch", type=positive, default=None, help="rows per step (default 4; dry run 2)")
    parser.add_argument("--worker", choices=[*RUNS, "assets"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    size = chosen_size(args)
    sys.path[:0] = [str(REPO / "api"), str(REPO / "trainer_image")]  # the trainer need not be installed

    if args.worker:
        work = Path(args.workdir)
        if args.worker == "assets":
            assets = build_assets(work, size, "cpu" if args.dry_run else "cuda")
            (work / "assets.json").write_text(json.dumps({**assets, "size": asdict(size)}))
            return 0
        return worker(args.worker, work, size, args.dry_run, work / f"result-{args.worker}.json")

    if not args.dry_run:
        import torch

        if not torch.cuda.is_available():
            print("no CUDA GPU here: run with --dry-run for the CPU check", file=sys.stderr)
            return 2
    work = Path(args.workdir) if args.workdir else Path(f"/tmp/gpu-check-{int(time.time())}")
    (work / "logs").mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    summary: dict[str, Any] = {"dry_run": args.dry_run, "size": asdict(size), **environment()}
    peak = args.peak_tflops or summary.get("peak_bf16_tflops")
    summary["peak_bf16_tflops_used"] = peak
    destination = Path(os.environ["OUT"]) / RESULT_FILE if os.environ.get("OUT") else work / RESULT_FILE
    print(json.dumps({k: summary[k] for k in ("python", "versions", "gpu", "peak_bf16_tflops_used") if k in summary}))

    outcomes: list[Outcome] = []

    def save() -> None:
        summary["runs"] = [{**asdict(o), "figures": o.figures} for o in outcomes]
        summary["total_s"] = time.perf_counter() - began
        destination.parent.mkdir(parents=True, exist_ok=True)
        destination.write_text(json.dumps(summary, indent=2))

    script = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        "assets",
        "--workdir",
        str(work),
        *shape_args(args),
    ]
    assets_file = work / "assets.json"
    if assets_file.is_file() and json.loads(assets_file.read_text()).get("size") == asdict(size):
        code = 0  # a model of this size is already in --workdir
    else:
        code, tail = launch(
            [*script, *(["--dry-run"] if args.dry_run else [])], work / "logs" / "assets.log", max(args.timeout, 300)
        )
    if code != 0:
        outcomes.append(Outcome("assets", False, {}, f"building the model failed (exit {code}):\n{tail}"))
        save()
        print_table(outcomes, peak)
        return 1
    summary["n_params"] = json.loads((work / "assets.json").read_text())["n_params"]
    print(f"model: {summary['n_params'] / 1e6:,.1f}M parameters, ready after {time.perf_counter() - began:.0f}s")

    for name in args.runs:
        try:
            outcome = run_one(name, args, work)
        except Exception:  # a broken driver step must not lose the figures gathered so far
            outcome = Outcome(name, False, {}, traceback.format_exc())
        if outcome.ok and args.peak_tflops and outcome.figures.get("tokens_per_s"):
            outcome.figures["peak_bf16_tflops"] = args.peak_tflops
            outcome.figures["mfu"] = (
                6 * outcome.figures["n_params"] * outcome.figures["tokens_per_s"] / (args.peak_tflops * 1e12)
            )
        outcomes.append(outcome)
        print(f"{name}: {status_of(outcome)} in {outcome.seconds:.0f}s", flush=True)
        save()
    print()
    print_table(outcomes, peak)
    print_anchors(outcomes)
    print(f"\nsummary: {destination}")
    return 0 if all(status_of(o) != "FAILED" for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
