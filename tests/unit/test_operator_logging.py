"""The operator's log: one line per record, however often logging is set up; kopf's lines name their object."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import kopf
import pytest

from finetune_operator import main


@pytest.fixture
def root_logging() -> Iterator[None]:
    """Restore the root logger (pytest's capture handlers included) after the test replaces its handlers."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_each_record_is_printed_once_however_often_logging_is_set_up(
    root_logging: None, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    logging.getLogger().addHandler(logging.StreamHandler())  # as a library configuring logging would
    monkeypatch.setattr(kopf, "run", lambda **_: None)
    for _ in range(2):
        main.main(["--all-namespaces", "--standalone", "--metrics-port=0", "--health-port=0"])
    logging.getLogger("finetune_operator").info("recreating Job ns/j")
    lines = [line for line in capsys.readouterr().err.splitlines() if "recreating Job ns/j" in line]
    assert len(lines) == 1, lines
    assert lines[0].endswith("INFO finetune_operator: recreating Job ns/j")


def test_kopf_object_lines_name_the_object(root_logging: None, capsys: pytest.CaptureFixture[str]) -> None:
    main.configure_logging(verbose=False)
    body: Any = {"metadata": {"namespace": "team-a", "name": "bert"}, "kind": "FineTuneJob"}
    kopf.LocalObjectLogger(body=body, settings=kopf.OperatorSettings()).info("Handler 'job_changed' succeeded.")
    (line,) = capsys.readouterr().err.splitlines()
    assert line.endswith("INFO kopf.objects: [team-a/bert] Handler 'job_changed' succeeded.")
