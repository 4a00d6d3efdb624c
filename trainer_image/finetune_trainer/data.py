"""Load the spec's dataset as a ``train`` and an optional ``eval`` split.

Sources: a hub dataset (``datasets.load_dataset(name, config)``) or files (jsonl, json, csv,
parquet) on a local path or at an ``s3://`` URI, which :func:`resolve_location` downloads through the
storage module into a local cache. Every failure a person can fix becomes a :class:`DataError` or
:class:`ConfigError` that names the file (and line), the split or the column, and the setting
to change.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from finetune_api.contract import ENV_LOAD_RETRY_SECONDS
from finetune_trainer.data_checks import has_no_columns, not_object_line, not_utf8
from finetune_trainer.errors import ConfigError, DataError, RetryableError, classify, retry_transient

if TYPE_CHECKING:
    from datasets import Dataset, DatasetDict

    from finetune_api.spec import DatasetSpec, FineTuneJobSpec, S3Location

log = logging.getLogger(__name__)

# File suffix -> datasets packaged builder.
FILE_BUILDERS: dict[str, str] = {
    ".jsonl": "json",
    ".json": "json",
    ".csv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
}
TRAIN = "train"
EVAL = "eval"
TEST = "test"
DEFAULT_LOAD_RETRY_SECONDS = 300.0


def load_retry_seconds() -> float:
    """How long loading from the hub retries transient failures (FTJ_LOAD_RETRY_SECONDS, default 300)."""
    raw = os.environ.get(ENV_LOAD_RETRY_SECONDS)
    try:
        return float(raw) if raw else DEFAULT_LOAD_RETRY_SECONDS
    except ValueError:
        log.warning("%s=%r is not a number; using %s s", ENV_LOAD_RETRY_SECONDS, raw, DEFAULT_LOAD_RETRY_SECONDS)
        return DEFAULT_LOAD_RETRY_SECONDS


def resolve_location(uri: str, *, field: str = "dataset.files", s3: S3Location | None = None) -> Path:
    """A local path for a dataset location: the path itself, or an s3:// URI downloaded into the local cache.

    ``field`` names the setting in errors; ``s3`` (spec.output.s3) gives the connection settings, else
    the environment's (AWS_ENDPOINT_URL_S3, AWS_ACCESS_KEY_ID, ...).
    """
    if uri.startswith("s3://"):
        from finetune_trainer.s3_cache import fetch_file

        return fetch_file(uri, field=field, location=s3)
    return Path(uri).expanduser()


def eval_source_name(spec: DatasetSpec) -> str | None:
    """The split (hub) or files key (validation/test) evaluation reads, before looking at the data."""
    if spec.eval_fraction is not None:
        return None
    if spec.eval_split is not None:
        return spec.eval_split
    if spec.files is not None:
        if spec.files.validation is not None:
            return "validation"
        if spec.files.test is not None:
            return "test"
    return None


def test_source_name(spec: DatasetSpec) -> str | None:
    """The split (hub) or files key evaluated after training: dataset.testSplit, or files.test unless eval reads it."""
    if spec.test_split is not None:
        return spec.test_split
    if spec.files is not None and spec.files.test is not None and eval_source_name(spec) != "test":
        return "test"
    return None


def describe_split(spec: FineTuneJobSpec, split: str) -> str:
    """Where a split's rows come from, for error messages: the file, or the hub dataset and split."""
    ds = spec.dataset
    if split == EVAL and ds.eval_fraction is not None:
        return f"the evaluation rows held out of the train split (dataset.evalFraction {ds.eval_fraction})"
    if split == TEST:
        name = test_source_name(ds) or split
    else:
        name = ds.train_split if split == TRAIN else (eval_source_name(ds) or split)
    if ds.files is not None:
        key = TRAIN if split == TRAIN else name
        location = getattr(ds.files, key, None)
        return f"dataset.files.{key} ({location})"
    return f"hub dataset {ds.name!r} split {name!r}"


def load_datasets(spec: FineTuneJobSpec) -> DatasetDict:
    """The ``train`` split and, when the spec has them, the ``eval`` and ``test`` splits.

    Applies evalFraction (a split seeded by training.seed), maxTrainSamples and maxEvalSamples,
    and refuses empty splits. Columns are the task's business (``TaskUnit.check_dataset``).
    """
    from datasets import DatasetDict

    ds = spec.dataset
    if ds.files is not None:
        train, evaluation = _load_file_splits(spec)
    else:
        train, evaluation = _load_hub_splits(spec)
    test = _load_test_split(spec)

    _require_rows(train, spec, TRAIN)
    if ds.eval_fraction is not None:
        train, evaluation = _hold_out(train, ds.eval_fraction, spec.training.seed)
    if ds.max_train_samples is not None and len(train) > ds.max_train_samples:
        train = train.select(range(ds.max_train_samples))
    splits = {TRAIN: train}
    if evaluation is not None:
        _require_rows(evaluation, spec, EVAL)
        if ds.max_eval_samples is not None and len(evaluation) > ds.max_eval_samples:
            evaluation = evaluation.select(range(ds.max_eval_samples))
        splits[EVAL] = evaluation
    elif spec.training.eval_strategy != "no" or spec.training.load_best_model_at_end:
        raise ConfigError(
            f"training.evalStrategy is {spec.training.eval_strategy!r} but the dataset has no evaluation split: "
            "set dataset.evalFraction (e.g. 0.1), dataset.evalSplit, or dataset.files.validation; "
            "or set training.evalStrategy: no and training.loadBestModelAtEnd: false"
        )
    if test is not None:
        _require_rows(test, spec, TEST)
        splits[TEST] = test
    return DatasetDict(splits)


def _load_test_split(spec: FineTuneJobSpec) -> Dataset | None:
    """The test split, or None; a task unit with a ``test_split_refusal`` refuses one (preference: DPO)."""
    ds = spec.dataset
    name = test_source_name(ds)
    if name is None:
        return None
    from finetune_trainer.tasks import get_task

    refusal = getattr(get_task(spec.task.type), "test_split_refusal", None)  # a task that cannot score one says why
    if refusal:
        raise ConfigError(f"dataset.files.test: {refusal}")
    if ds.files is not None:
        assert ds.files.test is not None
        return _load_file(ds.files.test, "dataset.files.test", spec.output.s3)
    from datasets import load_dataset

    assert ds.name is not None
    try:
        return load_dataset(ds.name, ds.config, split=name)
    except ValueError as err:  # datasets: "Unknown split ..."
        raise DataError(f"dataset.testSplit: hub dataset {ds.name!r} has no split {name!r}: {err}") from None


def require_columns(
    dataset: Dataset,
    spec: FineTuneJobSpec,
    split: str,
    roles: Mapping[str, str],
) -> None:
    """Raise DataError naming every column a role reads that is missing, the columns present and the fields to set."""
    present = list(dataset.column_names)
    missing = {role: column for role, column in roles.items() if column not in present}
    if missing:
        listed = ", ".join(f"{column!r} for the {role} role" for role, column in missing.items())
        fields = ", ".join(f"spec.task.columns.{role}" for role in missing)
        raise DataError(
            f"{describe_split(spec, split)} has no column {listed} of task {spec.task.type}. "
            f"Columns present: {', '.join(present) or '(none)'}. Set {fields} to the column that holds it, "
            "or rename the column in the data."
        )


def _load_file_splits(spec: FineTuneJobSpec) -> tuple[Dataset, Dataset | None]:
    files = spec.dataset.files
    assert files is not None
    if spec.dataset.train_split != TRAIN:
        raise ConfigError(
            "dataset.trainSplit: with dataset.files the training data is dataset.files.train; "
            "remove trainSplit or set it to train"
        )
    train = _load_file(files.train, "dataset.files.train", spec.output.s3)
    eval_key = eval_source_name(spec.dataset)
    if eval_key is None:
        return train, None
    if eval_key not in ("validation", "test"):
        raise ConfigError(
            f"dataset.evalSplit: {eval_key!r} is not a files key; with dataset.files use validation or test "
            "(and set dataset.files.<that key>), or use dataset.evalFraction"
        )
    location = getattr(files, eval_key)
    if location is None:
        raise ConfigError(
            f"dataset.evalSplit is {eval_key!r} but dataset.files.{eval_key} is not set: "
            f"add dataset.files.{eval_key}, or use dataset.evalFraction"
        )
    return train, _load_file(location, f"dataset.files.{eval_key}", spec.output.s3)


def _load_file(location: str, field: str, s3: S3Location | None = None) -> Dataset:
    """One data file as a Dataset, with the file (and line) named in every error."""
    from datasets import load_dataset

    path = resolve_location(location, field=field, s3=s3)
    suffix = path.suffix.lower()
    builder = FILE_BUILDERS.get(suffix)
    if builder is None:
        raise ConfigError(
            f"{field}: {location} has an unknown format {suffix or '(no suffix)'!r}; "
            f"use one of {', '.join(sorted(FILE_BUILDERS))}"
        )
    if not path.is_file():
        raise DataError(f"{field}: no such file {path}; check the path (and that the volume is mounted)")
    if path.stat().st_size == 0:
        raise DataError(f"{field}: {path} is empty; the split needs at least one row")
    if builder in ("json", "csv"):
        # Checked here: pyarrow's JSON reader crashes the process (SIGSEGV) on a JSON lines file with a
        # line that is not an object, and reports bytes that are not UTF-8 without saying where they are.
        problem = not_utf8(path) or (not_object_line(path) if builder == "json" else None)
        if problem:
            raise DataError(f"{field}: cannot read {path}: {problem}")
    try:
        loaded = load_dataset(builder, data_files={TRAIN: str(path)}, split=TRAIN)
    except Exception as err:  # datasets/pyarrow/pandas raise many types; most mean "cannot read this file"
        failure = classify(err)
        if failure.retryable:  # a network volume that timed out, not the file's content
            raise RetryableError(f"{field}: cannot read {path}: {failure.reason}") from err
        if builder in ("json", "csv") and _has_no_rows(path, header=builder == "csv"):
            raise DataError(f"{field}: {path} has no rows; the split needs at least one example") from None
        if has_no_columns(path, builder):
            raise DataError(f"{field}: {path} has rows but no columns; give each example its fields by name") from None
        where = _locate_json_error(path) if builder == "json" else None
        detail = where or _root_message(err)
        raise DataError(
            f"{field}: cannot read {path}: {detail}. Check that it is a complete {suffix.lstrip('.')} file "
            "(write it again if it was cut short) with one example per row and named columns"
        ) from None
    if not loaded.column_names:
        raise DataError(f"{field}: {path} has rows but no columns; give each example its fields by name")
    return loaded


def _has_no_rows(path: Path, *, header: bool) -> bool:
    """True when a text data file holds nothing but blank lines (and, for CSV, a header)."""
    with path.open(encoding="utf-8", errors="replace") as f:
        lines = 0
        for line in f:
            if line.strip():
                lines += 1
                if lines > int(header):
                    return False
    return True


def _root_message(err: BaseException) -> str:
    """The innermost message of a chained exception (datasets wraps the parser's error)."""
    seen = err
    while seen.__cause__ is not None or seen.__context__ is not None:
        seen = seen.__cause__ or seen.__context__  # type: ignore[assignment]
    text = str(seen) or type(seen).__name__
    if seen is not err and str(err):
        text = f"{err} ({text})"
    return text


def _locate_json_error(path: Path) -> str | None:
    """'line N: what is wrong' for the first malformed line of a JSON lines file, or the JSON document error."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        return f"not UTF-8 text (byte {err.start}); save the file as UTF-8"
    if path.suffix.lower() == ".json":
        # A .json file is either one JSON document (an array of objects) or JSON lines.
        try:
            json.loads(text)
            return None
        except json.JSONDecodeError as err:
            if text.lstrip().startswith("["):
                return f"line {err.lineno}: {err.msg} (column {err.colno})"
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as err:
            return f"line {lineno}: {err.msg} (column {err.colno}); each line must be one JSON object"
        if not isinstance(value, dict):
            return f"line {lineno}: expected a JSON object, got {type(value).__name__}"
    return None


def _load_hub_splits(spec: FineTuneJobSpec) -> tuple[Dataset, Dataset | None]:
    from datasets import load_dataset

    ds = spec.dataset
    assert ds.name is not None
    what = f"hub dataset {ds.name!r}" + (f" (config {ds.config!r})" if ds.config else "")
    try:
        if _offline():  # nothing to wait for: datasets reports the missing cache entry as a ConnectionError
            loaded = load_dataset(ds.name, ds.config)
        else:
            loaded = retry_transient(
                f"loading {what}", lambda: load_dataset(ds.name, ds.config), budget_seconds=load_retry_seconds()
            )
    except RetryableError as err:  # the hub stayed unreachable, slow or overloaded for the whole budget
        raise RetryableError(f"dataset.name: cannot load {what}: {err}") from err
    except Exception as err:  # a missing dataset or config, a gated one without a token: the message says which
        if _offline():
            raise DataError(_offline_message(what)) from None
        raise DataError(f"dataset.name: cannot load {what}: {_root_message(err)}") from None
    available = list(loaded.keys())
    if ds.train_split not in loaded:
        raise DataError(
            f"dataset.trainSplit: hub dataset {ds.name!r} has no split {ds.train_split!r}; "
            f"its splits are {', '.join(available)}"
        )
    train = loaded[ds.train_split]
    eval_name = eval_source_name(ds)
    if eval_name is None and ds.eval_fraction is None:
        # No evalSplit given: use the dataset's own held-out split when it has one.
        eval_name = next((s for s in ("validation", "test") if s in loaded and s != ds.train_split), None)
    if eval_name is None:
        return train, None
    if eval_name not in loaded:
        raise DataError(
            f"dataset.evalSplit: hub dataset {ds.name!r} has no split {eval_name!r}; "
            f"its splits are {', '.join(available)}; or use dataset.evalFraction"
        )
    return train, loaded[eval_name]


def _offline_message(what: str) -> str:
    return (
        f"dataset.name: {what} is not in the local cache and downloads are off (HF_HUB_OFFLINE or "
        "HF_DATASETS_OFFLINE is set): put it in the cache (HF_HOME) before the run, unset offline mode, "
        "or give the data as dataset.files"
    )


def _offline() -> bool:
    """True when the hub client may not download (HF_HUB_OFFLINE or HF_DATASETS_OFFLINE)."""
    import datasets
    import huggingface_hub.constants

    return bool(datasets.config.HF_HUB_OFFLINE or huggingface_hub.constants.HF_HUB_OFFLINE)


def _hold_out(train: Dataset, fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    n_eval = round(len(train) * fraction)
    if n_eval < 1 or n_eval >= len(train):
        raise DataError(
            f"dataset.evalFraction {fraction} of {len(train)} training rows leaves "
            f"{n_eval} evaluation rows and {len(train) - n_eval} training rows; both need at least one: "
            "change evalFraction or give a separate evaluation split"
        )
    parts = train.train_test_split(test_size=n_eval, seed=seed, shuffle=True)
    return parts["train"], parts["test"]


def _require_rows(dataset: Dataset, spec: FineTuneJobSpec, split: str) -> None:
    if len(dataset) == 0:
        raise DataError(f"{describe_split(spec, split)} has no rows; the {split} split needs at least one example")


def unique_values(dataset: Dataset, column: str) -> set[object]:
    """Distinct values of a scalar column, or of the items of a list column."""
    from datasets import LargeList, List, Sequence

    if isinstance(dataset.features[column], List | LargeList | Sequence):
        seen: set[object] = set()
        for row in dataset[column]:
            seen.update(row or [])
        return seen
    return set(dataset.unique(column))
