"""Errors the trainer reports, and the exit codes the operator's podFailurePolicy reads.

Exit codes below 100 other than 1 are permanent: retrying the same spec on the same data
cannot succeed, so the Job fails at once instead of burning its backoff budget.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_CONFIG = 3  # the spec is invalid or unsupported (permanent)
EXIT_DATA = 4  # the dataset is missing, malformed or does not fit the task (permanent)
PERMANENT_EXIT_CODES = (EXIT_CONFIG, EXIT_DATA)


class TrainerError(Exception):
    """Base of the errors the trainer turns into a clear message and an exit code."""

    exit_code = 1


class ConfigError(TrainerError):
    """The spec cannot run (names the field and the fix)."""

    exit_code = EXIT_CONFIG


class DataError(TrainerError):
    """The dataset does not fit the task (names the file or column and the fix)."""

    exit_code = EXIT_DATA
