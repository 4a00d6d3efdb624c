"""Fixtures of the fuzz suite, and a summary of the outcomes by class at the end of the run."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from tests.fuzz.oracle import TALLY

# Nothing in these tests may reach the network: models and data are local (as in tests/trainer).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Cases run and their outcomes by class, per stage (what docs/reliability.md reports)."""
    if not TALLY:
        return
    terminalreporter.section("fuzz outcomes")
    for stage, tally in sorted(TALLY.items()):
        counts = ", ".join(f"{kind} {n}" for kind, n in sorted(tally.counts.items()))
        terminalreporter.write_line(f"{stage}: {sum(tally.counts.values())} cases: {counts}")
        for violation in tally.violations[:20]:
            terminalreporter.write_line(f"  violation: {violation}")


@pytest.fixture(scope="session")
def valid_specs(tiny_bert: Path, tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """Valid one-step specs of each encoder task on the tiny BERT, with their data files: the fuzz seeds."""
    from tests.fuzz.data_cases import TASKS, DataCase, encode, rows_for
    from tests.fuzz.oracle import Expect

    root = tmp_path_factory.mktemp("fuzz-seeds")
    specs = []
    for task in TASKS:
        case = DataCase(task, "jsonl", encode(rows_for(task, 8), "jsonl"), [], Expect(True))
        (root / task).mkdir()
        specs.append(case.spec(tiny_bert, case.write(root / task)))
    return specs
