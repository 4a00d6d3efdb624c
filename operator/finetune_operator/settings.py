"""Operator-wide settings, read once from the environment (the Helm chart sets them)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class OperatorSettings:
    """What every rendered job shares: the default image and the defaults behind the spec."""

    trainer_image: str = "ghcr.io/kube-finetune/trainer:0.1.0"
    image_pull_policy: str = "IfNotPresent"
    # Used when a spec's output.s3 leaves them empty (the cluster's S3 or MinIO).
    default_s3_endpoint: str | None = None
    default_s3_credentials_secret: str | None = None
    master_port: int = 29500
    # Uid the trainer runs as; the trainer image creates this user.
    run_as_user: int = 1000
    extra_labels: dict[str, str] = field(default_factory=dict)
    # Run the CPU preflight pod (model access, data, S3 output, GPU fit) before each Job is created.
    preflight_pod: bool = False
    # GPU memory for the fit check where no node the job can land on has the nvidia.com/gpu.memory label.
    default_gpu_memory: str | None = None
    # Where the preflight pod runs (Helm preflight.nodeSelector / preflight.tolerations); empty: anywhere.
    preflight_node_selector: dict[str, str] = field(default_factory=dict)
    preflight_tolerations: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> OperatorSettings:
        """Settings from FTJ_* environment variables; unset ones keep their defaults."""
        e = os.environ if env is None else env
        base = cls()
        return cls(
            trainer_image=e.get("FTJ_TRAINER_IMAGE", base.trainer_image),
            image_pull_policy=e.get("FTJ_IMAGE_PULL_POLICY", base.image_pull_policy),
            default_s3_endpoint=e.get("FTJ_DEFAULT_S3_ENDPOINT") or None,
            default_s3_credentials_secret=e.get("FTJ_DEFAULT_S3_CREDENTIALS_SECRET") or None,
            master_port=int(e.get("FTJ_MASTER_PORT", base.master_port)),
            run_as_user=int(e.get("FTJ_RUN_AS_USER", base.run_as_user)),
            preflight_pod=e.get("FTJ_PREFLIGHT_POD", "").lower() in ("1", "true", "yes"),
            default_gpu_memory=e.get("FTJ_DEFAULT_GPU_MEMORY") or None,
            preflight_node_selector=_json(e, "FTJ_PREFLIGHT_NODE_SELECTOR", "preflight.nodeSelector", dict),
            preflight_tolerations=_json(e, "FTJ_PREFLIGHT_TOLERATIONS", "preflight.tolerations", list),
        )


def _json(env: Any, name: str, value: str, kind: type) -> Any:
    """A JSON object or list from ``name`` (empty when unset); a malformed one names the variable and chart value."""
    text = env.get(name) or ""
    try:
        parsed = json.loads(text) if text.strip() else kind()
    except json.JSONDecodeError as err:
        raise ValueError(f"{name}={text!r} is not JSON ({err.msg}); set the Helm value {value}") from err
    parsed = kind() if parsed is None else parsed
    if not isinstance(parsed, kind):
        raise ValueError(f"{name}={text!r} must be a JSON {kind.__name__}; set the Helm value {value}")
    return parsed
