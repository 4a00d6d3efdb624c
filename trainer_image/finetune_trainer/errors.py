"""Errors the trainer reports, and the exit codes the operator's podFailurePolicy reads.

The codes and their meaning are part of the operator/trainer contract
(:mod:`finetune_api.contract`): 3 (spec) and 4 (data) are permanent, retrying the same spec on
the same data cannot succeed, so the Job fails at once instead of burning its backoff budget.
"""

from __future__ import annotations

from finetune_api.contract import EXIT_CONFIG, EXIT_DATA, EXIT_FAILED, EXIT_OK, EXIT_RETRYABLE, PERMANENT_EXIT_CODES

__all__ = [
    "EXIT_CONFIG",
    "EXIT_DATA",
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_RETRYABLE",
    "PERMANENT_EXIT_CODES",
    "ConfigError",
    "DataError",
    "TrainerError",
]


class TrainerError(Exception):
    """Base of the errors the trainer turns into a clear message and an exit code."""

    exit_code = EXIT_FAILED


class ConfigError(TrainerError):
    """The spec cannot run (names the field and the fix)."""

    exit_code = EXIT_CONFIG


class DataError(TrainerError):
    """The dataset does not fit the task (names the file or column and the fix)."""

    exit_code = EXIT_DATA
