"""Checks of dataset files and rows that datasets/pyarrow do not make, or make badly.

pyarrow's JSON reader crashes the process (SIGSEGV) on a JSON lines file with a line that is not an
object, reports bytes that are not UTF-8 without saying where they are, and reads rows without
fields as an unreadable file; and a task's row checks report every problem at once (:class:`RowProblems`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from finetune_trainer.errors import DataError

if TYPE_CHECKING:
    from datasets import Dataset

    from finetune_api.spec import FineTuneJobSpec


class RowProblems:
    """Problems found row by row, reported together in one DataError: each distinct problem once, with its rows."""

    def __init__(self, max_problems: int = 20, max_rows: int = 5):
        self.rows: dict[str, list[int]] = {}
        self.max_problems = max_problems
        self.max_rows = max_rows

    def add(self, where: str, column: str, row: int, problem: str) -> None:
        """Record a problem of one row's column (the same problem in other rows joins its row list)."""
        self.rows.setdefault(f"{where}, column {column!r}: {problem}", []).append(row)

    def raise_if_any(self) -> None:
        """Raise one DataError listing every problem found (the first max_problems of them)."""
        if not self.rows:
            return
        lines = []
        for problem, rows in list(self.rows.items())[: self.max_problems]:
            shown = ", ".join(map(str, rows[: self.max_rows])) + (
                f" and {len(rows) - self.max_rows} more" if len(rows) > self.max_rows else ""
            )
            head, _, rest = problem.partition(", column ")
            lines.append(f"{head} row{'s' if len(rows) > 1 else ''} {shown}, column {rest}")
        more = len(self.rows) - self.max_problems
        if more > 0:
            lines.append(f"... and {more} more problems")
        if len(lines) == 1:
            raise DataError(lines[0])
        raise DataError(f"{len(self.rows)} problems in the data:\n  - " + "\n  - ".join(lines))


class CheckProblems:
    """Independent checks that each raise DataError, run to the end and reported together in one DataError.

    ``with problems.check(): ...`` around each check records its message instead of stopping; after the
    last one, :meth:`raise_if_any` raises them all (one message alone unchanged).
    """

    def __init__(self) -> None:
        self.messages: list[str] = []

    @contextmanager
    def check(self) -> Iterator[None]:
        """Record the DataError the block raises, if any, and go on."""
        try:
            yield
        except DataError as err:
            self.messages.append(str(err))

    def raise_if_any(self) -> None:
        """Raise one DataError listing every recorded problem."""
        if len(self.messages) == 1:
            raise DataError(self.messages[0])
        if self.messages:
            raise DataError(f"{len(self.messages)} problems in the data:\n  - " + "\n  - ".join(self.messages))


def has_no_columns(path: Path, builder: str) -> bool:
    """True when a file holds rows without fields: JSON objects that are all empty, or a column-less Parquet."""
    try:
        if builder == "parquet":
            import pyarrow.parquet as pq

            return len(pq.read_schema(path)) == 0
        if builder == "json":
            text = path.read_text(encoding="utf-8")
            try:
                rows = json.loads(text)
            except json.JSONDecodeError:
                rows = [json.loads(line) for line in text.splitlines() if line.strip()]
            return isinstance(rows, list) and bool(rows) and all(row == {} for row in rows)
    except (OSError, ValueError, TypeError):
        return False
    return False


def not_object_line(path: Path) -> str | None:
    """The first line of a JSON lines file that is not a JSON object (a .json array document is skipped)."""
    first = True
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            line = raw.strip().lstrip(b"\xef\xbb\xbf")
            if not line:
                continue
            multi_line = line[:1] in (b"[", b"{") and not is_json_object(line)
            if first and path.suffix.lower() == ".json" and multi_line:
                return None  # one JSON document (an array of objects, or an object over several lines)
            first = False
            if not line.startswith(b"{"):
                return (
                    f"line {lineno}: expected a JSON object, got {line[:40].decode(errors='replace')!r}; "
                    "give each line as one JSON object of column values"
                )
    return None


def is_json_object(line: bytes) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


def not_utf8(path: Path) -> str | None:
    """Where a text data file is not UTF-8 (the line and byte), or None."""
    with path.open("rb") as f:
        for lineno, line in enumerate(f, start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as err:
                return f"line {lineno} is not UTF-8 text (byte {err.start} of the line); save the file as UTF-8"
    return None


def check_chat_column(
    spec: FineTuneJobSpec, split: str, dataset: Dataset, column: str, role: str, *, need_assistant: bool = True
) -> None:
    """Raise DataError naming every malformed row of a chat-turns column (each problem once, with its rows)."""
    from finetune_trainer.data import describe_split
    from finetune_trainer.tasks.causal_lm import CHAT_ROLES, message_problem

    rows = RowProblems()
    fix = (
        f"each row must hold a list of turns like [{{'role': 'user', 'content': '...'}}, {{'role': 'assistant', "
        f"'content': '...'}}] with roles {', '.join(CHAT_ROLES)}; or set spec.task.columns.{role} to the column "
        "that holds them"
    )
    for index, value in enumerate(dataset[column]):
        problem = message_problem(value, need_assistant=need_assistant)
        if problem:
            rows.add(describe_split(spec, split), column, index, f"({role} role) {problem}; {fix}")
    rows.raise_if_any()


def require_string_column(spec: FineTuneJobSpec, split: str, dataset: Dataset, column: str, role: str) -> None:
    """Raise DataError when a text column does not hold strings."""
    from finetune_trainer.data import describe_split

    feature = dataset.features[column]
    if getattr(feature, "dtype", None) not in ("string", "large_string"):
        raise DataError(
            f"{describe_split(spec, split)}, column {column!r} ({role} role) holds {feature}, not text; "
            f"set spec.task.columns.{role} to a column of strings."
        )


# ---- the task ----
