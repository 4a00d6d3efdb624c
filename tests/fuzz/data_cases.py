"""Generated dataset files around valid ones, for the encoder tasks on the tiny BERT.

A case is a valid dataset for one task (rows from ``tests/trainer/tiny.py``) written in one of the
formats the trainer reads, with one corruption applied to the rows or to the file's bytes, and what
it must do: missing and extra columns, unknown labels, label ids out of range, multi-hot vectors of
the wrong length, empty labels, nested JSON where a string belongs, empty and whitespace-only files,
truncated files, invalid UTF-8, a byte-order mark, CRLF line ends, a huge row, a line that is not
an object, null values, tags that do not match their words, answers that are not in the context.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

from tests.fuzz.oracle import Expect
from tests.trainer import tiny

TASKS: dict[str, dict[str, Any]] = {
    "sentiment": {"type": "sequence-classification", "labels": ["neg", "pos"]},
    "topics": {
        "type": "sequence-classification",
        "labels": sorted(tiny.TOPICS),
        "multiLabel": True,
        "columns": {"label": "labels"},
    },
    "entities": {"type": "token-classification", "labels": tiny.NER_LABELS},
    "questions": {"type": "question-answering", "docStride": 16},
}
COLUMNS = {
    "sentiment": ["text", "label"],
    "topics": ["text", "labels"],
    "entities": ["tokens", "tags"],
    "questions": ["id", "question", "context", "answers"],
}
# The column that holds each task's labels (or answers), and the text column.
LABEL_COLUMN = {"sentiment": "label", "topics": "labels", "entities": "tags", "questions": "answers"}
TEXT_COLUMN = {"sentiment": "text", "topics": "text", "entities": "tokens", "questions": "question"}
# Formats that can hold each task's rows (CSV has no lists or structs).
FORMATS = {"sentiment": ["jsonl", "json", "csv", "parquet"]}
NESTED_FORMATS = ["jsonl", "json", "parquet"]

ROW_CORRUPTIONS = (
    "none",
    "drop-columns",
    "extra-columns",
    "unknown-labels",
    "label-id-out-of-range",
    "multi-hot-wrong-length",
    "empty-label",
    "null-label",
    "nested-text",
    "null-text",
    "huge-row",
    "tags-length",
    "answer-not-in-context",
    "answers-as-string",
)
BYTE_CORRUPTIONS = (
    "none",
    "empty-file",
    "blank-lines-only",
    "truncated",
    "invalid-utf8",
    "bom",
    "crlf",
    "not-an-object",
)


def rows_for(task: str, n: int) -> list[dict[str, Any]]:
    """Valid rows of a task."""
    return {
        "sentiment": tiny.sentiment_rows,
        "topics": tiny.topic_rows,
        "entities": tiny.entity_rows,
        "questions": tiny.question_rows,
    }[task](n)


@dataclass
class DataCase:
    """A task, the file's format and bytes, the corruptions applied, and what it must do."""

    task: str
    fmt: str
    content: bytes
    corruptions: list[str]
    expect: Expect

    def write(self, directory: Path) -> Path:
        path = directory / f"train.{self.fmt}"
        path.write_bytes(self.content)
        return path

    def spec(self, model_dir: Path, train: Path) -> dict[str, Any]:
        """A spec that runs one or two optimiser steps on the file, with no evaluation."""
        return tiny.spec_dict(
            model_dir,
            copy.deepcopy(TASKS[self.task]),
            {"train": str(train)},
            maxSteps=1,
            batchSizePerDevice=4,
            maxSeqLength=64,
            evalStrategy="no",
            saveStrategy="no",
            loadBestModelAtEnd=False,
        )


def encode(rows: list[dict[str, Any]], fmt: str) -> bytes:
    """Rows as the bytes of a file of this format."""
    if fmt == "jsonl":
        return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()
    if fmt == "json":
        return json.dumps(rows, ensure_ascii=False, indent=1).encode()
    import io

    if fmt == "csv":
        import csv

        text = io.StringIO()
        names = list(dict.fromkeys(k for r in rows for k in r))
        writer = csv.DictWriter(text, fieldnames=names, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        return text.getvalue().encode()
    import pyarrow as pa
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buffer)
    return buffer.getvalue()


def corrupt_rows(draw: Any, task: str, rows: list[dict[str, Any]], kind: str) -> tuple[bool, Expect] | None:
    """Apply a row corruption in place; (applies, what it must do), or None when it does not fit the task."""
    label = LABEL_COLUMN[task]
    text = TEXT_COLUMN[task]
    picked = draw(st.lists(st.integers(0, len(rows) - 1), min_size=1, max_size=3, unique=True))
    if kind == "none":
        return True, Expect(True, why="valid rows")
    if kind == "drop-columns":
        dropped = draw(st.lists(st.sampled_from(COLUMNS[task]), min_size=1, unique=True))
        for row in rows:
            for column in dropped:
                row.pop(column, None)
        if dropped == ["id"]:
            return True, Expect(True, why="question-answering ids are optional")
        if len(dropped) == len(COLUMNS[task]):
            # JSON and Parquet rows without fields, or a CSV of blank lines: "no columns" or "no rows".
            return True, Expect(False, ("dataset.files.train",), (4,), "every column dropped")
        named = tuple(f"'{c}'" for c in dropped if c != "id")
        return True, Expect(False, named, (4,), f"no column {dropped}")
    if kind == "extra-columns":
        for i, row in enumerate(rows):
            row["source"] = f"row {i}"
            row["score"] = i * 0.5
        return True, Expect(True, why="extra columns are ignored")
    if kind == "unknown-labels" and task in ("sentiment", "topics", "entities"):
        unknown = draw(
            st.lists(st.sampled_from(["neutral", "mixed", "POS", "B-ORG", "other"]), min_size=1, unique=True)
        )
        allowed = TASKS[task]["labels"]
        unknown = [u for u in unknown if u not in allowed]
        if not unknown:
            return None
        for n, i in enumerate(picked):
            value = unknown[n % len(unknown)]
            if task == "sentiment":
                rows[i][label] = value
            else:
                rows[i][label] = [*rows[i][label][:-1], value]
        used = {unknown[n % len(unknown)] for n in range(len(picked))}
        return True, Expect(False, tuple(f"'{u}'" for u in sorted(used)), (4,), f"unknown labels {sorted(used)}")
    if kind == "label-id-out-of-range" and task == "sentiment":
        value = draw(st.sampled_from([2, 7, -1, 100]))
        for i in picked:
            rows[i][label] = value
        # Mixed with names, a JSON column becomes strings ('7'); alone it stays a number.
        return True, Expect(False, (str(value),), (4,), f"label id {value}")
    if kind == "multi-hot-wrong-length" and task == "topics":
        length = draw(st.sampled_from([1, 2, 4, 5]))
        for row in rows:
            row[label] = [1] * length
        return True, Expect(False, ("labels",), (4,), f"multi-hot of length {length}")
    if kind == "empty-label" and task in ("sentiment", "topics", "entities"):
        for i in picked:
            rows[i][label] = "" if task == "sentiment" else []
        # An example with no topic is a valid multi-label example; an empty class or tag list is not.
        return True, Expect(task == "topics", (), (4,), "empty label")
    if kind == "null-label" and task in ("sentiment", "topics"):
        for i in picked:
            rows[i][label] = None
        return True, Expect(None, (), (4,), "null label")
    if kind == "nested-text" and task in ("sentiment", "topics", "questions"):
        value = draw(st.sampled_from([{"body": "a text"}, ["a", "text"], {"nested": {"deeper": 1}}]))
        for row in rows:
            row[text] = value
        return True, Expect(False, (f"'{text}'",), (4,), "nested JSON where a string belongs")
    if kind == "null-text" and task in ("sentiment", "topics"):
        for i in picked:
            rows[i][text] = None
        return True, Expect(None, (), (4,), "null text")
    if kind == "huge-row":
        i = picked[0]
        if task in ("sentiment", "topics"):
            rows[i][text] = " ".join(["word"] * 60_000)
        elif task == "entities":
            rows[i]["tokens"] = ["word"] * 20_000
            rows[i]["tags"] = ["O"] * 20_000
        else:
            return None
        return True, Expect(True, why="a huge row is truncated")
    if kind == "tags-length" and task == "entities":
        for i in picked:
            rows[i]["tags"] = rows[i]["tags"][:-1]
        return True, Expect(False, ("tags",), (4,), "tags shorter than tokens")
    if kind == "answer-not-in-context" and task == "questions":
        for i in picked:
            rows[i]["answers"] = {"text": ["atlantis"], "answer_start": [3]}
        return True, Expect(False, ("answers",), (4,), "answer not at its start")
    if kind == "answers-as-string" and task == "questions":
        for row in rows:
            row["answers"] = "paris"
        return True, Expect(False, ("answers",), (4,), "answers as a string")
    return None


def corrupt_bytes(draw: Any, content: bytes, fmt: str, kind: str) -> tuple[bytes, Expect] | None:
    """Apply a byte corruption; (new bytes, what it must do), or None when it does not fit the format."""
    text_format = fmt in ("jsonl", "json", "csv")
    if kind == "none":
        return content, Expect(True)
    if kind == "empty-file":
        return b"", Expect(False, ("dataset.files.train",), (4,), "empty file")
    if kind == "blank-lines-only" and text_format:
        return b"\n \n\r\n", Expect(False, ("dataset.files.train",), (4,), "blank lines only")
    if kind == "truncated":
        cut = draw(st.integers(1, max(1, len(content) - 2)))
        if fmt == "jsonl" and content[:cut].endswith(b"\n"):
            cut -= 1  # a cut at a line end leaves a valid, shorter file
        if fmt == "csv":
            return None  # a truncated CSV is a shorter CSV with a short last row
        return content[:cut], Expect(False, ("dataset.files.train",), (4,), "truncated file")
    if kind == "invalid-utf8" and text_format:
        at = draw(st.integers(0, len(content) - 1))
        at = content.rfind(b"\n", 0, at) + 1 if fmt != "json" else content.find(b'"', at) + 1 or at
        return content[:at] + b"\xff\xfe\xc3(" + content[at:], Expect(False, ("UTF-8",), (4,), "invalid UTF-8")
    if kind == "bom" and text_format:
        return b"\xef\xbb\xbf" + content, Expect(True, why="a UTF-8 byte-order mark is allowed")
    if kind == "crlf" and text_format:
        return content.replace(b"\n", b"\r\n"), Expect(True, why="CRLF line ends are allowed")
    if kind == "not-an-object" and fmt == "jsonl":
        lines = content.splitlines(keepends=True)
        at = draw(st.integers(0, len(lines) - 1))
        lines.insert(at, draw(st.sampled_from([b"[1, 2]\n", b'"text"\n', b"42\n", b"null\n"])))
        return b"".join(lines), Expect(False, (f"line {at + 1}",), (4,), "a line that is not an object")
    return None


def merge(first: Expect, second: Expect) -> Expect:
    """Two corruptions: refused when either must be; a refusal need name only what one of them names."""
    if first.accept is True:
        return second
    if second.accept is True:
        return first
    accept = False if False in (first.accept, second.accept) else None
    # Which check runs first decides which problem is reported: require only the byte corruption's mentions.
    mentions = second.mentions if second.accept is False else first.mentions if first.accept is False else ()
    return Expect(accept, mentions, (3, 4), f"{first.why}; {second.why}")


@st.composite
def data_cases(draw: Any, tasks: tuple[str, ...] = tuple(TASKS), n_rows: tuple[int, int] = (4, 12)) -> DataCase:
    """A valid dataset for a task, in a format that fits it, with up to one row and one byte corruption."""
    task = draw(st.sampled_from(tasks))
    fmt = draw(st.sampled_from(FORMATS.get(task, NESTED_FORMATS)))
    rows = rows_for(task, draw(st.integers(*n_rows)))
    row_kind = draw(st.sampled_from(ROW_CORRUPTIONS))
    applied = corrupt_rows(draw, task, rows, row_kind)
    if applied is None:
        row_kind, applied = "none", (True, Expect(True))
    row_expect = applied[1]
    if fmt == "csv" and row_kind in ("nested-text",):
        fmt = "jsonl"
    try:
        content = encode(rows, fmt)
    except (TypeError, ValueError):  # pyarrow cannot write a column of mixed types to Parquet: a user's JSON can
        fmt = "jsonl"
        content = encode(rows, fmt)
    byte_kind = draw(st.sampled_from(BYTE_CORRUPTIONS))
    changed = corrupt_bytes(draw, content, fmt, byte_kind)
    if changed is None:
        byte_kind, changed = "none", (content, Expect(True))
    content, byte_expect = changed
    # A file that cannot be read at all: only the byte corruption decides.
    expect = byte_expect if byte_expect.accept is False else merge(row_expect, byte_expect)
    kinds = [k for k in (row_kind, byte_kind) if k != "none"]
    return DataCase(task, fmt, content, kinds, expect)
