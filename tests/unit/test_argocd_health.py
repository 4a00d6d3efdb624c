"""The Argo CD health check (Lua), run in a real Lua interpreter against FineTuneJob statuses."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from lupa import LuaRuntime

SCRIPT = (Path(__file__).resolve().parents[2] / "gitops/argocd/finetunejob-health.lua").read_text()


def health(obj: dict[str, Any]) -> dict[str, str]:
    lua = LuaRuntime(unpack_returned_tuples=True)

    def table(value: Any) -> Any:
        if isinstance(value, dict):
            return lua.table_from({k: table(v) for k, v in value.items()})
        if isinstance(value, list):
            return lua.table_from([table(v) for v in value])
        return value

    lua.globals().obj = table(obj)
    result = lua.execute(SCRIPT)
    return {"status": result["status"], "message": result["message"]}


def _obj(status: dict[str, Any] | None, generation: int = 1) -> dict[str, Any]:
    obj: dict[str, Any] = {"metadata": {"generation": generation}}
    if status is not None:
        obj["status"] = status
    return obj


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (None, "Progressing"),
        ({"observedGeneration": 1, "phase": "Pending"}, "Progressing"),
        ({"observedGeneration": 1, "phase": "Running", "progress": {"percent": 42.5}}, "Progressing"),
        ({"observedGeneration": 1, "phase": "Succeeded"}, "Healthy"),
        ({"observedGeneration": 1, "phase": "Suspended"}, "Suspended"),
        ({"observedGeneration": 1, "phase": "Failed", "message": "BackoffLimitExceeded"}, "Degraded"),
    ],
)
def test_phase_maps_to_health(status: dict[str, Any] | None, expected: str) -> None:
    assert health(_obj(status))["status"] == expected


def test_running_shows_percent() -> None:
    result = health(
        _obj({"observedGeneration": 1, "phase": "Running", "message": "training", "progress": {"percent": 42.5}})
    )
    assert result["message"] == "training (42.5%)"


def test_stale_generation_is_progressing_even_if_succeeded() -> None:
    assert health(_obj({"observedGeneration": 1, "phase": "Succeeded"}, generation=2))["status"] == "Progressing"


def test_stalled_condition_is_degraded_with_its_message() -> None:
    status = {
        "observedGeneration": 1,
        "phase": "Failed",
        "conditions": [{"type": "Stalled", "status": "True", "reason": "InvalidSpec", "message": "spec.x: bad"}],
    }
    assert health(_obj(status)) == {"status": "Degraded", "message": "spec.x: bad"}
