"""Fixtures shared by the trainer and storage tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Directory of the tiny random BERT with MiniLM's tokenizer (see tests/trainer/tiny.py)."""
    from tests.trainer import tiny  # torch and transformers: loaded only by the tests that use the model

    return tiny.build_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))
