"""The model's ``config.json``, read without the weights: for the memory estimate of ``validate`` and preflight.

From a volume (``model.path``), S3 (``model.uri``: one object, not the directory) or the hub
(``model.name`` at ``model.revision``, with the token in ``HF_TOKEN`` for gated models).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from finetune_trainer.errors import ConfigError

if TYPE_CHECKING:
    from finetune_api.spec import FineTuneJobSpec


def read_model_config(spec: FineTuneJobSpec) -> dict[str, Any]:
    """The config.json mapping of spec.model; ConfigError naming the field when it cannot be read."""
    source = spec.model
    if source.path is not None:
        path = Path(source.path).expanduser() / "config.json"
        if not path.is_file():
            raise ConfigError(f"model.path: {path} does not exist; give the directory of a saved model")
        return _parse(path.read_text(), "model.path", str(path))
    if source.uri is not None:
        from finetune_trainer.s3_errors import input_context
        from finetune_trainer.s3_types import S3Uri
        from finetune_trainer.storage import S3Storage

        uri = S3Uri.parse(source.uri, "model.uri").as_prefix().join("config.json")
        data = S3Storage.for_location(spec.output.s3, input_context("model.uri")).read_json(uri)
        if data is None:
            raise ConfigError(f"model.uri: no config.json under {source.uri}; give the prefix of a saved model")
        return _checked(data, "model.uri", str(uri))
    assert source.name is not None  # the spec rules guarantee exactly one source
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        path = Path(hf_hub_download(source.name, "config.json", revision=source.revision))
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError, ValueError) as err:
        raise ConfigError(
            f"model.name: cannot read config.json of {source.name!r} at revision {source.revision!r}: {err}; "
            "check the id and revision, and model.tokenSecretRef for a gated model"
        ) from None
    return _parse(path.read_text(), "model.name", source.name)


def _parse(text: str, field: str, where: str) -> dict[str, Any]:
    try:
        return _checked(json.loads(text), field, where)
    except json.JSONDecodeError as err:
        raise ConfigError(f"{field}: {where} is not valid JSON: {err}") from None


def _checked(data: Any, field: str, where: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise ConfigError(f"{field}: {where} must hold a JSON object, got {type(data).__name__}")
    return data
