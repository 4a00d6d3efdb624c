"""What the CPU preflight pod reports to the operator: the contract of its termination message.

The pod (``python -m finetune_trainer preflight``) checks model access, data and the S3 output with
the job's own identity and writes one JSON object to its termination message, which the kubelet
keeps in the pod's status (at most 4096 bytes). The operator reads it back: problems stall the job
with their field paths; a service that could not be reached is retried; the model's
``config.json`` (only the scalar fields the memory estimate reads) feeds the GPU fit check.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from finetune_api.contract import TERMINATION_MESSAGE_LIMIT

# config.json fields that cannot matter to the estimate and can be long.
_DROPPED_CONFIG_KEYS = ("id2label", "label2id", "architectures", "auto_map", "task_specific_params")
# The fields the shape table reads (finetune_api.model_shapes): all that is kept of a config too long to send.
SHAPE_KEYS = (
    "model_type",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "vocab_size",
    "max_position_embeddings",
    "type_vocab_size",
    "tie_word_embeddings",
    "attention_bias",
    "mlp_bias",
    "dtype",
    "torch_dtype",
)


@dataclass(frozen=True)
class PreflightResult:
    """The preflight's verdict: permanent problems, a transient one, and the model's shape fields."""

    problems: list[str] = field(default_factory=list)  # 'spec.field: what is wrong; the fix'
    unreachable: str | None = None  # a service could not be reached (network, 5xx): check again later
    model_config: dict[str, Any] = field(default_factory=dict)
    checked: list[str] = field(default_factory=list)  # what passed, in words

    @property
    def ok(self) -> bool:
        """Nothing to fix and nothing to retry."""
        return not self.problems and self.unreachable is None

    def encode(self) -> str:
        """The termination message: compact JSON under the kubelet's limit (config fields dropped first)."""
        body: dict[str, Any] = {
            "problems": [p[:1000] for p in self.problems[:3]],
            "unreachable": self.unreachable[:1000] if self.unreachable else None,
            "checked": self.checked,
            "modelConfig": shape_fields(self.model_config),
        }
        text = json.dumps(body, separators=(",", ":"), sort_keys=True)
        if len(text.encode()) > TERMINATION_MESSAGE_LIMIT:
            body["checked"] = []
            body["problems"] = [p[:400] for p in self.problems[:2]]
            body["modelConfig"] = {k: v for k, v in body["modelConfig"].items() if k in SHAPE_KEYS}
            text = json.dumps(body, separators=(",", ":"), sort_keys=True)
        return text

    @classmethod
    def decode(cls, text: str) -> PreflightResult:
        """The result from a termination message; ValueError when it is not one."""
        data = json.loads(text)
        if not isinstance(data, dict) or not isinstance(data.get("problems"), list):
            raise ValueError("not a preflight result")
        return cls(
            problems=[str(p) for p in data["problems"]],
            unreachable=data.get("unreachable") or None,
            model_config=dict(data.get("modelConfig") or {}),
            checked=[str(c) for c in data.get("checked") or []],
        )


def shape_fields(config: dict[str, Any]) -> dict[str, Any]:
    """The scalar fields of a config.json (what the shape table reads), without label maps and lists."""
    return {
        key: value
        for key, value in config.items()
        if key not in _DROPPED_CONFIG_KEYS
        and (value is None or isinstance(value, bool | int | float) or (isinstance(value, str) and len(value) <= 64))
    }
