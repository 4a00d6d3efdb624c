"""Every invalid spec is refused by our validation with the field path in the message."""

from __future__ import annotations

from typing import Any

import pytest

from finetune_api.validation import InvalidSpec, parse_spec
from tests.invalid_specs import BASE, INVALID_SPECS


def test_the_base_spec_is_valid() -> None:
    parse_spec(BASE)


def test_there_are_at_least_twenty_cases() -> None:
    assert len(INVALID_SPECS) >= 20


@pytest.mark.parametrize(
    ("spec", "path", "fragment"), [c[1:] for c in INVALID_SPECS], ids=[c[0] for c in INVALID_SPECS]
)
def test_invalid_spec_is_refused_naming_the_field(spec: dict[str, Any], path: str, fragment: str) -> None:
    with pytest.raises(InvalidSpec) as err:
        parse_spec(spec)
    matching = [p for p in err.value.problems if p.startswith(path + ":")]
    assert matching, f"no problem names {path}: {err.value.problems}"
    assert any(fragment.lower() in p.lower() for p in matching), matching
