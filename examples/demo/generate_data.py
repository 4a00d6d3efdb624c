"""Write the demo's small sentiment dataset (deterministic; the output is checked in).

Reviews are built from templates, subjects and opinion phrases. The validation set
uses subjects and templates never seen in training, so accuracy on it measures
whether the model learned the sentiment words rather than memorised sentences.

    python examples/demo/generate_data.py
"""

from __future__ import annotations

import json
import random
from pathlib import Path

POSITIVE = [
    "wonderful",
    "brilliant",
    "delightful",
    "excellent",
    "superb",
    "moving",
    "charming",
    "gripping",
    "beautiful",
    "hilarious",
    "outstanding",
    "touching",
    "fantastic",
    "clever",
    "stunning",
    "terrific",
]
NEGATIVE = [
    "dreadful",
    "boring",
    "awful",
    "terrible",
    "tedious",
    "clumsy",
    "painful",
    "dull",
    "horrible",
    "pointless",
    "disappointing",
    "lifeless",
    "messy",
    "forgettable",
    "annoying",
    "weak",
]
TRAIN_SUBJECTS = ["film", "movie", "story", "cast", "script", "ending", "soundtrack", "director"]
EVAL_SUBJECTS = ["plot", "acting", "dialogue", "pacing"]
TRAIN_TEMPLATES = [
    "The {s} was {a}.",
    "I thought the {s} was {a} from start to finish.",
    "Honestly, a {a} {s}.",
    "What a {a} {s} this turned out to be.",
    "My friends agreed the {s} felt {a}.",
    "Overall the {s} is {a} and I would say so again.",
]
EVAL_TEMPLATES = [
    "In my view the {s} was simply {a}.",
    "Everyone left saying the {s} had been {a}.",
]


def _rows(rng: random.Random, subjects: list[str], templates: list[str], n: int) -> list[dict[str, str]]:
    rows = []
    for _ in range(n):
        label = rng.choice(["neg", "pos"])
        words = POSITIVE if label == "pos" else NEGATIVE
        text = rng.choice(templates).format(s=rng.choice(subjects), a=rng.choice(words))
        rows.append({"text": text, "label": label})
    return rows


def main() -> None:
    rng = random.Random(1234)
    out = Path(__file__).resolve().parent / "data"
    out.mkdir(exist_ok=True)
    for name, subjects, templates, n in (
        ("train", TRAIN_SUBJECTS, TRAIN_TEMPLATES, 1200),
        ("validation", EVAL_SUBJECTS, EVAL_TEMPLATES, 300),
    ):
        with open(out / f"{name}.jsonl", "w") as f:
            for row in _rows(rng, subjects, templates, n):
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
