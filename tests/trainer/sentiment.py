"""A generated sentiment dataset whose held-out split uses word combinations never seen in training.

Sentences come from templates filled with a subject, an opinion word (positive or negative) and an
intensifier; a fifth of them are negated ("was not good"), which flips the label. Every (subject,
opinion word) pair and every template belongs either to the training side or to the held-out side:
the held-out sentences put known words into new pairs and new sentence frames, so a model passes
only if it learned which words carry the sentiment.
"""

from __future__ import annotations

import random
from typing import Any

SUBJECTS = [
    "movie", "film", "hotel", "restaurant", "phone", "laptop", "book", "concert", "service", "staff",
    "meal", "coffee", "game", "show", "album", "car", "room", "trip", "course", "app", "camera",
    "chair", "museum", "park",
]  # fmt: skip
POSITIVE = [
    "good", "great", "excellent", "wonderful", "amazing", "fantastic", "lovely", "brilliant", "superb",
    "delightful", "pleasant", "enjoyable", "outstanding", "perfect", "charming", "impressive",
    "beautiful", "fun", "nice", "remarkable",
]  # fmt: skip
NEGATIVE = [
    "bad", "terrible", "awful", "horrible", "poor", "disappointing", "boring", "dreadful", "annoying",
    "mediocre", "unpleasant", "painful", "useless", "ugly", "dull", "lousy", "frustrating", "weak",
    "broken", "miserable",
]  # fmt: skip
INTENSIFIERS = ["", "really ", "quite ", "truly ", "very ", "rather ", "so "]
TRAIN_TEMPLATES = [
    "the {s} was {i}{a} .",
    "i thought the {s} was {i}{a} .",
    "what a {i}{a} {s} !",
    "honestly , this {s} is {i}{a} .",
    "my friends found the {s} {i}{a} .",
    "overall the {s} felt {i}{a} to me .",
    "we agreed that the {s} is {i}{a} .",
    "in my opinion the {s} was {i}{a} .",
]
HELD_OUT_TEMPLATES = [
    "everyone says the {s} is {i}{a} and i agree .",
    "after a week , the {s} still seems {i}{a} .",
    "i would describe this {s} as {i}{a} .",
]
# Negated frames flip the label: the opinion word alone is not enough.
TRAIN_NEGATED = ["the {s} was not {i}{a} .", "i did not find the {s} {i}{a} ."]
HELD_OUT_NEGATED = ["nobody would call this {s} {i}{a} .", "the {s} was never {i}{a} ."]
NEGATED_SHARE = 0.2
LABELS = ["negative", "positive"]


def _held_out_pairs(seed: int) -> set[tuple[str, str]]:
    """A quarter of the (subject, opinion word) pairs, reserved for the held-out split."""
    rng = random.Random(seed)
    pairs = [(s, a) for s in SUBJECTS for a in POSITIVE + NEGATIVE]
    return set(rng.sample(pairs, len(pairs) // 4))


def _rows(
    n: int, templates: list[str], negated: list[str], pairs: list[tuple[str, str]], rng: random.Random
) -> list[dict[str, Any]]:
    positive = [p for p in pairs if p[1] in POSITIVE]
    negative = [p for p in pairs if p[1] in NEGATIVE]
    rows = []
    for k in range(n):
        label = k % 2  # balanced
        flip = rng.random() < NEGATED_SHARE
        subject, word = rng.choice(negative if label == flip else positive)
        frame = rng.choice(negated if flip else templates)
        rows.append({"text": frame.format(s=subject, a=word, i=rng.choice(INTENSIFIERS)), "label": LABELS[label]})
    rng.shuffle(rows)
    return rows


def sentiment_splits(n_train: int = 1600, n_held_out: int = 400, seed: int = 0) -> dict[str, list[dict[str, Any]]]:
    """``train`` and ``held_out`` rows ({text, label}); no held-out sentence shares a pair or template with train."""
    rng = random.Random(seed)
    held_out = _held_out_pairs(seed)
    all_pairs = [(s, a) for s in SUBJECTS for a in POSITIVE + NEGATIVE]
    train_pairs = [p for p in all_pairs if p not in held_out]
    return {
        "train": _rows(n_train, TRAIN_TEMPLATES, TRAIN_NEGATED, train_pairs, rng),
        "held_out": _rows(n_held_out, HELD_OUT_TEMPLATES, HELD_OUT_NEGATED, sorted(held_out), rng),
    }
