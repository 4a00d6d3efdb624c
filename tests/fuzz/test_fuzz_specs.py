"""Generated specs around valid ones: our validation and ``finetune_trainer validate`` refuse each bad one
with its field path, the rejected value and the fix (exit 3), and accept the valid ones."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from finetune_api.validation import InvalidSpec, parse_spec
from tests.fuzz import harness
from tests.fuzz.oracle import Expect, Outcome, check
from tests.fuzz.profiles import cases
from tests.fuzz.spec_cases import SpecCase, mutated_specs, refused_pairs


def parse_outcome(spec: dict[str, Any]) -> Outcome:
    """parse_spec's verdict as the CLI would print it (exit 3 with the problems, or 0)."""
    try:
        parse_spec(spec)
    except InvalidSpec as err:
        return Outcome(3, f"config error: {err}\n")
    return Outcome(0, "")


def check_spec_case(case: SpecCase) -> None:
    problems = check("specs: parse_spec", parse_outcome(case.spec), case.expect, "; ".join(case.mutations))
    with tempfile.TemporaryDirectory() as tmp:
        config = harness.write_config(Path(tmp) / "job.yaml", case.spec)
        # validate also reads the data and the tokenizer: a spec that parses may still be refused (exit 3/4).
        expect = Expect(False if case.expect.accept is False else None, case.expect.mentions, why=case.expect.why)
        problems += check("specs: validate", harness.validate(config), expect, "; ".join(case.mutations))
    assert not problems, problems


def test_the_seed_specs_validate(valid_specs: list[dict[str, Any]]) -> None:
    for spec in valid_specs:
        check_spec_case(SpecCase(spec, [], Expect(True, why="seed")))


@cases(150)
@given(data=st.data())
def test_mutated_specs_are_refused_with_the_field_value_and_fix(valid_specs: list[dict[str, Any]], data: Any) -> None:
    check_spec_case(data.draw(mutated_specs(valid_specs)))


@cases(20)
@given(data=st.data())
def test_every_refused_task_method_pair_names_method_type(valid_specs: list[dict[str, Any]], data: Any) -> None:
    check_spec_case(data.draw(refused_pairs(valid_specs[0])))
