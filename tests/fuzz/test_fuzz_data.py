"""Generated dataset files around valid ones, through ``validate`` and (a sample) through ``run`` on the tiny BERT:
each is accepted and trains, or is refused with exit 4 naming the file or column, the value and the fix, leaving
the output directory as it was."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz import harness
from tests.fuzz.data_cases import DataCase, data_cases
from tests.fuzz.oracle import ACCEPTED, check, classify
from tests.fuzz.profiles import cases


def try_case(case: DataCase, model_dir: Path, *, train: bool, subprocess_: bool = False) -> list[str]:
    """validate (and run, when train) one case; the violations of the contract."""
    name = f"{case.task}/{case.fmt} {'+'.join(case.corruptions) or 'valid'}"
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        config = harness.write_config(root / "job.yaml", case.spec(model_dir, case.write(root)))
        problems = check("data: validate", harness.validate(config), case.expect, name)
        if not train:
            return problems
        out = root / "out"
        outcome = harness.run(config, out, subprocess_=subprocess_)
        problems += check("data: run" + (" (subprocess)" if subprocess_ else ""), outcome, case.expect, name)
        if classify(outcome) == ACCEPTED:
            metrics = json.loads((out / "metrics.json").read_text())
            if metrics.get("global_step") != 1:
                problems.append(f"{name}: trained {metrics.get('global_step')} steps, expected 1")
    return problems


@cases(120)
@given(case=data_cases())
def test_generated_datasets_validate_or_are_refused_naming_the_column(tiny_bert: Path, case: DataCase) -> None:
    assert not try_case(case, tiny_bert, train=False)


@pytest.mark.slow
@cases(12)
@given(case=data_cases(n_rows=(4, 6)))
def test_generated_datasets_train_or_are_refused_before_writing(tiny_bert: Path, case: DataCase) -> None:
    assert not try_case(case, tiny_bert, train=True)


@pytest.mark.slow
@cases(3)
@given(data=st.data())
def test_in_a_process_a_refusal_is_one_message_never_a_traceback(tiny_bert: Path, data: Any) -> None:
    """Through a real process: a traceback from an import, a thread or interpreter exit shows up here."""
    case = data.draw(data_cases(n_rows=(4, 6)).filter(lambda c: c.expect.accept is not True))
    assert not try_case(case, tiny_bert, train=True, subprocess_=True)
