"""Fixtures of the trainer tests: the generated encoder-task datasets, built once per session.

The tiny BERT fixture (tiny_bert) is shared with the storage tests: tests/conftest.py.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.trainer import tiny

# Nothing in these tests may reach the network: models and data are local.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def encoder_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Train/validation files per encoder task, spread over jsonl, csv and parquet.

    Validation files use the other spellings the tasks accept (label ids instead of names).
    """
    root = tmp_path_factory.mktemp("encoder-data")
    return {
        "seq_train": tiny.write_csv(root / "sentiment-train.csv", tiny.sentiment_rows(192, seed=0)),
        "seq_val": tiny.write_jsonl(root / "sentiment-val.jsonl", tiny.sentiment_rows(32, seed=1, label_ids=True)),
        "scores_train": tiny.write_jsonl(root / "scores-train.jsonl", tiny.score_rows(192, seed=0)),
        "scores_val": tiny.write_csv(root / "scores-val.csv", tiny.score_rows(32, seed=1)),
        "scores_test": tiny.write_parquet(root / "scores-test.parquet", tiny.score_rows(24, seed=2)),
        "topics_train": tiny.write_jsonl(root / "topics-train.jsonl", tiny.topic_rows(192, seed=0)),
        "topics_val": tiny.write_parquet(root / "topics-val.parquet", tiny.topic_rows(32, seed=1)),
        "ner_train": tiny.write_parquet(root / "entities-train.parquet", tiny.entity_rows(192, seed=0)),
        "ner_val": tiny.write_jsonl(root / "entities-val.jsonl", tiny.entity_rows(32, seed=1)),
        # Test files of the cases that write the test split's predictions.
        "seq_test": tiny.write_jsonl(root / "sentiment-test.jsonl", tiny.sentiment_rows(16, seed=2)),
        "ner_test": tiny.write_jsonl(root / "entities-test.jsonl", tiny.entity_rows(16, seed=2)),
        "qa_test": tiny.write_jsonl(
            root / "questions-test.jsonl", tiny.question_rows(16, seed=2, prefix=tiny.QA_PREFIX)
        ),
        "qa_train": tiny.write_jsonl(
            root / "questions-train.jsonl", tiny.question_rows(192, seed=0, prefix=tiny.QA_PREFIX)
        ),
        "qa_val": tiny.write_parquet(
            root / "questions-val.parquet", tiny.question_rows(32, seed=1, prefix=tiny.QA_PREFIX)
        ),
    }
