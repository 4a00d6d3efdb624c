"""The oracle of the fuzz suite: which outcomes a generated case may have, as pure functions.

A user's input ends in exactly one of:

- accepted (and, for ``run``, trained: exit 0);
- refused by the API server, naming the field path;
- refused by the trainer with a permanent exit code (3 config, 4 data) and one message that names
  the field or column, the rejected value and the fix, leaving the output directory as it was.

Anything else is a violation: a traceback, exit 1 or the retryable code for a user's mistake, a
refusal of a valid case, an acceptance of an invalid one, a message without the field or the fix, or
files left behind by a refused run.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from finetune_trainer.errors import EXIT_CONFIG, EXIT_DATA, EXIT_OK

TRACEBACK = "Traceback (most recent call last)"
# The lines the CLI prints for an error it understood (see finetune_trainer.cli.main).
ERROR_LINE = re.compile(r"^(?:\[rank \d+\] )?(config error|data error): ", re.MULTILINE)
# A refusal tells the person what to do: an instruction, or the values that are allowed.
FIX = re.compile(
    r"\b(set|use|add|remove|fix|give|check|change|save|restore|rename|delete|choose|name|put|drop|convert|make|"
    r"start over|allowed|expected|must|one of|at least|at most|less than|greater than|should|valid)\b",
    re.IGNORECASE,
)
# Where a problem is: a spec field path (model.path, spec.training.epochs, method.lora.targetModules[1]) or a column.
FIELD = re.compile(
    r"\b(?:spec(?:\.\w+|\[\d+\])+|"
    r"(?:model|task|dataset|method|training|resources|distributed|output|runPolicy)(?:\.[A-Za-z]+|\[\d+\])+)"
    r"|\bcolumns?\b|\bkind\b|\bapiVersion\b"
)

ACCEPTED = "accepted"
REFUSED_CONFIG = "refused-config"
REFUSED_DATA = "refused-data"
REFUSED_API = "refused-api"


@dataclass(frozen=True)
class Outcome:
    """What one trainer command did: exit code, its output, and the output directory before and after."""

    exit_code: int
    stderr: str
    stdout: str = ""
    files_before: frozenset[str] = frozenset()
    files_after: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Expect:
    """What a generated case must do. ``accept``: True must pass, False must be refused, None either.

    ``mentions``: fragments the refusal must contain (the field path or column, the rejected value).
    ``exit_codes``: the permanent codes allowed for the refusal.
    """

    accept: bool | None
    mentions: tuple[str, ...] = ()
    exit_codes: tuple[int, ...] = (EXIT_CONFIG, EXIT_DATA)
    why: str = ""


@dataclass
class Tally:
    """Outcomes by class over a run of cases, and the violations found."""

    counts: dict[str, int] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)

    def add(self, kind: str, problems: list[str], case: str) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + 1
        self.violations += [f"{case}: {p}" for p in problems]


# Outcomes of this session's cases by stage (specs, data, run, api, ...), printed at the end of the run.
TALLY: dict[str, Tally] = {}


def check(stage: str, outcome: Outcome, expect: Expect, case: str) -> list[str]:
    """Judge an outcome, count it under its stage and class, and return the violations."""
    problems = judge(outcome, expect)
    TALLY.setdefault(stage, Tally()).add(classify(outcome), problems, case)
    return problems


def classify(outcome: Outcome) -> str:
    """The outcome's class: accepted, refused-config, refused-data, traceback, or exit-N."""
    if TRACEBACK in outcome.stderr:
        return "traceback"
    if outcome.exit_code == EXIT_OK:
        return ACCEPTED
    if outcome.exit_code == EXIT_CONFIG and ERROR_LINE.search(outcome.stderr):
        return REFUSED_CONFIG
    if outcome.exit_code == EXIT_DATA and ERROR_LINE.search(outcome.stderr):
        return REFUSED_DATA
    return f"exit-{outcome.exit_code}"


def error_message(stderr: str) -> str:
    """The refusal the CLI printed: from its 'config error:'/'data error:' line to the end."""
    match = ERROR_LINE.search(stderr)
    return stderr[match.start() :] if match else ""


def judge(outcome: Outcome, expect: Expect) -> list[str]:
    """Every way the outcome breaks the contract for a user's input; empty when it is a valid outcome."""
    kind = classify(outcome)
    tail = outcome.stderr.strip().splitlines()[-1:] or [""]
    if kind == "traceback":
        return [f"traceback instead of a message: {tail[0][:300]}"]
    if kind.startswith("exit-"):
        return [
            f"exit code {outcome.exit_code} for a user's input (not a permanent 3/4 with a message): {tail[0][:300]}"
        ]
    if kind == ACCEPTED:
        return ["accepted, but the case must be refused: " + expect.why] if expect.accept is False else []
    problems = []
    message = error_message(outcome.stderr)
    if expect.accept is True:
        problems.append(f"refused a valid case ({expect.why}): {message[:300]}")
    if outcome.exit_code not in expect.exit_codes:
        problems.append(f"exit code {outcome.exit_code}, expected one of {expect.exit_codes}: {message[:200]}")
    problems += message_problems(message, expect.mentions)
    written = sorted(outcome.files_after - outcome.files_before)
    if written:
        problems.append(f"refused, but left files in the output directory: {', '.join(written[:5])}")
    return problems


def message_problems(message: str, mentions: tuple[str, ...]) -> list[str]:
    """What a refusal's message lacks: the field or column, each expected fragment, and the fix."""
    problems = []
    short = message[:400].replace("\n", " | ")
    if not FIELD.search(message):
        problems.append(f"message names no field or column: {short}")
    problems += [f"message does not mention {m!r}: {short}" for m in mentions if m not in message]
    if not FIX.search(message):
        problems.append(f"message says nothing about the fix: {short}")
    return problems


def judge_api(api_refused: bool, api_message: str, our_problems: list[str] | None) -> list[str]:
    """The API server and our validation agree: both accept, or both refuse and the server names one of our paths.

    ``our_problems`` are InvalidSpec's 'path: message' lines (None when our validation accepts).
    """
    if our_problems is None:
        return [f"the API server refused a spec our validation accepts: {api_message[:300]}"] if api_refused else []
    if not api_refused:
        return [f"the API server accepted a spec our validation refuses: {our_problems}"]
    paths = {p.split(":", 1)[0] for p in our_problems}
    if not any(path in api_message for path in paths):
        return [f"the API server's refusal names none of {sorted(paths)}: {api_message[:300]}"]
    return []
