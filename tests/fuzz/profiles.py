"""Hypothesis profiles of the fuzz suite, registered before pytest reads ``--hypothesis-profile``.

- ``ci`` (the default): derandomized, so every run of ``scripts/test.sh`` generates the same few
  hundred cases; no example database, no deadline (a case trains a model).
- ``long``: ten times the cases, random: ``scripts/test.sh tests/fuzz --hypothesis-profile=long``.

Each test scales its own number of cases from the profile's ``max_examples`` (:func:`cases`).
"""

from __future__ import annotations

from hypothesis import HealthCheck, settings

_COMMON = {
    "deadline": None,
    "database": None,
    "print_blob": True,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
}
settings.register_profile("ci", max_examples=100, derandomize=True, **_COMMON)
settings.register_profile("long", max_examples=1000, **_COMMON)
settings.load_profile("ci")


def cases(per_hundred: int) -> settings:
    """Settings for a test that runs ``per_hundred`` cases for every 100 of the profile's max_examples."""
    return settings(max_examples=max(1, settings.default.max_examples * per_hundred // 100))
