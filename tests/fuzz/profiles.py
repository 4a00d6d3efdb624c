"""Hypothesis profiles of the fuzz suite, registered before pytest reads ``--hypothesis-profile``.

- ``ci`` (the default): derandomized, so every run of ``scripts/test.sh`` generates the same few
  hundred cases; no example database, no deadline (a case trains a model).
- ``long``: ten times the cases, random: ``scripts/test.sh tests/fuzz --hypothesis-profile=long``.

Each test scales its own number of cases from the profile's ``max_examples`` (:func:`cases`).
"""

from __future__ import annotations

from hypothesis import HealthCheck, settings

_BASE = settings(
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
settings.register_profile("ci", _BASE, max_examples=100, derandomize=True)
settings.register_profile("long", _BASE, max_examples=1000)
settings.load_profile("ci")


def cases(per_hundred: int) -> settings:
    """Settings for a test that runs ``per_hundred`` cases for every 100 of the profile's max_examples."""
    current = settings.default
    assert current is not None  # a profile is always loaded (above)
    return settings(max_examples=max(1, current.max_examples * per_hundred // 100))
