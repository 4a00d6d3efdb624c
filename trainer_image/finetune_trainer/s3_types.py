"""The values S3 code passes around: URIs, file entries, listings, and how to reach the store.

Connection settings (:class:`S3Settings`): the endpoint is ``spec.output.s3.endpoint`` when set,
else ``AWS_ENDPOINT_URL_S3`` (the operator sets it) or ``AWS_ENDPOINT_URL``, else AWS itself; the
credentials are boto3's usual chain (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` from the
Secret in ``spec.output.s3.credentialsSecretRef``, or the pod's IRSA identity).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from finetune_api.contract import (
    ENV_S3_ENDPOINT,
    ENV_S3_ENDPOINT_ANY_SERVICE,
    ENV_S3_REGION,
    ENV_S3_REGION_ALT,
    ENV_S3_RETRY_SECONDS,
)
from finetune_trainer.s3_errors import S3LocationError

if TYPE_CHECKING:
    from finetune_api.spec import S3Location

log = logging.getLogger(__name__)


RETRY_SECONDS_ENV = ENV_S3_RETRY_SECONDS
DEFAULT_RETRY_SECONDS = 300.0


# ---- values ----


@dataclass(frozen=True)
class S3Uri:
    """``s3://bucket/key``; a key ending in ``/`` (or empty) names a prefix."""

    bucket: str
    key: str

    @classmethod
    def parse(cls, uri: str, field: str = "uri") -> S3Uri:
        """Split an s3:// URI; ``field`` names the setting in the error."""
        if not uri.startswith("s3://"):
            raise S3LocationError(f"{field}: {uri!r} is not an s3:// URI; write s3://bucket/key")
        bucket, _, key = uri[len("s3://") :].partition("/")
        if not bucket:
            raise S3LocationError(f"{field}: {uri!r} names no bucket; write s3://bucket/key")
        return cls(bucket, key)

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    def join(self, *parts: str) -> S3Uri:
        """This prefix with path parts appended (``/`` between them)."""
        key = self.key
        for part in parts:
            part = part.lstrip("/")
            key = f"{key}{part}" if not key or key.endswith("/") else f"{key}/{part}"
        return S3Uri(self.bucket, key)

    def as_prefix(self) -> S3Uri:
        """The same location as a prefix (trailing ``/``), so ``a/b`` does not match ``a/bc``."""
        return self if not self.key or self.key.endswith("/") else S3Uri(self.bucket, self.key + "/")


@dataclass(frozen=True)
class FileEntry:
    """Size and sha256 of one stored file, as manifests record them."""

    size: int
    sha256: str

    def to_json(self) -> dict[str, Any]:
        """The manifest form: {"size": ..., "sha256": ...}."""
        return {"size": self.size, "sha256": self.sha256}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> FileEntry:
        """Read the manifest form back."""
        return cls(size=int(data["size"]), sha256=str(data["sha256"]))


@dataclass(frozen=True)
class ObjectInfo:
    """One listed object."""

    key: str
    size: int
    etag: str


@dataclass(frozen=True)
class S3Settings:
    """How to reach the store: endpoint, region, addressing style (credentials come from the environment)."""

    endpoint: str | None = None
    region: str = "us-east-1"
    path_style: bool = False
    endpoint_source: str = "the default AWS endpoint"

    @classmethod
    def resolve(cls, location: S3Location | None = None, environ: Mapping[str, str] | None = None) -> S3Settings:
        """spec.output.s3 where given; the endpoint falls back to AWS_ENDPOINT_URL_S3, then AWS_ENDPOINT_URL."""
        env = os.environ if environ is None else environ
        endpoint, source = None, "the default AWS endpoint"
        if location is not None and location.endpoint:
            endpoint, source = location.endpoint, "spec.output.s3.endpoint"
        else:
            for name in (ENV_S3_ENDPOINT, ENV_S3_ENDPOINT_ANY_SERVICE):
                if env.get(name):
                    endpoint, source = env[name], f"{name} (from spec.output.s3.endpoint in a cluster)"
                    break
        if location is not None:
            region, path_style = location.region, location.path_style
        else:
            region = env.get(ENV_S3_REGION_ALT) or env.get(ENV_S3_REGION) or "us-east-1"
            # Without a spec to say so, a custom endpoint is most likely MinIO-like: path-style.
            path_style = endpoint is not None
        return cls(endpoint=endpoint, region=region, path_style=path_style, endpoint_source=source)

    @property
    def display_endpoint(self) -> str:
        """The endpoint as errors name it."""
        return self.endpoint or f"AWS S3 ({self.region})"


def env_number(name: str, default: float) -> float:
    """A number from the environment variable ``name``; ``default`` when unset or not a number (logged)."""
    raw = os.environ.get(name)
    try:
        return float(raw) if raw else default
    except ValueError:
        log.warning("%s=%r is not a number; using %s", name, raw, default)
        return default


def retry_seconds_from_env() -> float:
    """How long transfers keep retrying (FTJ_S3_RETRY_SECONDS, default 300)."""
    return env_number(RETRY_SECONDS_ENV, DEFAULT_RETRY_SECONDS)


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's content."""
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def file_entry(path: Path) -> FileEntry:
    """Size and sha256 of a local file."""
    return FileEntry(size=path.stat().st_size, sha256=sha256_file(path))


def relative_files(directory: Path) -> list[str]:
    """Every regular file under directory, as sorted POSIX paths relative to it."""
    return sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file())
