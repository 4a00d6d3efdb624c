"""``s3://`` models and datasets, downloaded into a local cache and reused while their objects are unchanged."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from finetune_api.contract import (
    ENV_HF_HOME,
    ENV_S3_CACHE_DIR,
)
from finetune_trainer.s3_errors import S3LocationError, S3NotFoundError, StorageError, input_context
from finetune_trainer.s3_types import ObjectInfo, S3Uri
from finetune_trainer.storage import S3Storage

if TYPE_CHECKING:
    from finetune_api.spec import S3Location

log = logging.getLogger(__name__)


CACHE_DIR_ENV = ENV_S3_CACHE_DIR


# ---- s3:// models and datasets: a local cache ----


def cache_dir() -> Path:
    """Where s3:// inputs are cached: FTJ_S3_CACHE_DIR, else beside HF_HOME (<HF_HOME>/../s3), else ~/.cache."""
    if os.environ.get(CACHE_DIR_ENV):
        return Path(os.environ[CACHE_DIR_ENV]).expanduser()
    if os.environ.get(ENV_HF_HOME):
        return Path(os.environ[ENV_HF_HOME]).expanduser().parent / "s3"
    return Path("~/.cache/finetune-trainer/s3").expanduser()


@contextlib.contextmanager
def _cache_lock(path: Path) -> Iterator[None]:
    """One process downloads an input; the other ranks on the node wait, then reuse it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def _naming_field(field: str) -> Iterator[None]:
    """Start every storage error of an input with the spec field it came from."""
    try:
        yield
    except StorageError as err:
        if str(err).startswith(f"{field}: "):
            raise
        renamed = type(err)(f"{field}: {err}")
        raise renamed.with_traceback(err.__traceback__) from err.__cause__


def _cache_slot(uri: S3Uri, endpoint: str | None) -> Path:
    digest = hashlib.sha256(f"{endpoint or ''}|{uri}".encode()).hexdigest()[:16]
    return cache_dir() / digest


def _sync_into_cache(
    storage: S3Storage, objects: list[ObjectInfo], base_key: str, target: Path, record: Path, uri: S3Uri
) -> None:
    """Download the objects whose ETag differs from the record of the last download into target."""
    try:
        known = json.loads(record.read_text()) if record.is_file() else {}
    except (OSError, ValueError):
        known = {}
    wanted = {o.key[len(base_key) :]: o for o in objects}
    stale = [
        (rel, o)
        for rel, o in wanted.items()
        if known.get(rel) != o.etag or not (target / rel).is_file() or (target / rel).stat().st_size != o.size
    ]
    if stale:
        log.info("downloading %d of %d files of %s into %s", len(stale), len(wanted), uri, target)
        storage.download_files([(S3Uri(uri.bucket, o.key), target / rel) for rel, o in stale])
    record.write_text(json.dumps({rel: o.etag for rel, o in wanted.items()}, sort_keys=True))


def fetch_file(uri: str, *, field: str, location: S3Location | None = None) -> Path:
    """A local copy of the object at an s3:// URI (a dataset file), downloaded once per ETag.

    ``field`` names the spec setting in errors (``dataset.files.train``); ``location`` gives the
    connection settings of spec.output.s3 (the environment's when None).
    """
    parsed = S3Uri.parse(uri, field)
    if not parsed.key or parsed.key.endswith("/"):
        raise S3LocationError(f"{field}: {uri} names a prefix, not a file; give the URI of one data file")
    storage = S3Storage.for_location(location, input_context(field))
    slot = _cache_slot(parsed, storage.settings.endpoint)
    with _naming_field(field), _cache_lock(slot.with_suffix(".lock")):
        objects = [o for o in storage.list_objects(parsed) if o.key == parsed.key]
        if not objects:
            raise S3NotFoundError(
                f"{field}: {uri} does not exist at {storage.settings.display_endpoint}; check the bucket and key"
            )
        name = parsed.key.rsplit("/", 1)[-1]
        _sync_into_cache(storage, objects, parsed.key[: -len(name)], slot / "files", slot / "etags.json", parsed)
        return slot / "files" / name


def fetch_directory(uri: str, *, field: str, location: S3Location | None = None) -> Path:
    """A local copy of every object under an s3:// prefix (a saved model), refreshed when ETags change."""
    parsed = S3Uri.parse(uri, field).as_prefix()
    storage = S3Storage.for_location(location, input_context(field))
    slot = _cache_slot(parsed, storage.settings.endpoint)
    with _naming_field(field), _cache_lock(slot.with_suffix(".lock")):
        objects = [o for o in storage.list_objects(parsed) if not o.key.endswith("/")]
        if not objects:
            raise S3NotFoundError(
                f"{field}: no objects under {parsed} at {storage.settings.display_endpoint}; give the prefix of a "
                "saved model directory (config.json, weights, tokenizer files)"
            )
        _sync_into_cache(storage, objects, parsed.key, slot / "files", slot / "etags.json", parsed)
        return slot / "files"
