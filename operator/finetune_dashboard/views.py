"""What the dashboard shows, as pure functions from a FineTuneJob (a dict, as the API server sends it).

The browser only draws: every number it shows is picked here, so a test can check it against
the resource without a browser.
"""

from __future__ import annotations

from typing import Any

Series = list[tuple[int, float]]


def _get(obj: dict[str, Any] | None, *path: str) -> Any:
    for key in path:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj


def job_key(obj: dict[str, Any]) -> str:
    """``namespace/name``: how the pages and the stream name a job."""
    return f"{obj['metadata']['namespace']}/{obj['metadata']['name']}"


def topology(obj: dict[str, Any]) -> str:
    """Nodes x GPUs per node, as the operator reports it, else as the spec asks."""
    reported = _get(obj, "status", "topology")
    if reported:
        return str(reported)
    nodes = _get(obj, "spec", "resources", "nodes") or 1
    gpus = _get(obj, "spec", "resources", "gpusPerNode")
    return f"{nodes}x{0 if gpus is None else gpus}"


def model_name(obj: dict[str, Any]) -> str | None:
    """The hub id, S3 URI or volume path the job trains from."""
    model = _get(obj, "spec", "model") or {}
    return model.get("name") or model.get("uri") or model.get("path")


def job_summary(obj: dict[str, Any]) -> dict[str, Any]:
    """One row of the job list."""
    progress = _get(obj, "status", "progress") or {}
    return {
        "key": job_key(obj),
        "namespace": obj["metadata"]["namespace"],
        "name": obj["metadata"]["name"],
        "resourceVersion": obj["metadata"].get("resourceVersion", ""),
        "created": obj["metadata"].get("creationTimestamp"),
        "phase": _get(obj, "status", "phase") or "Pending",
        "task": _get(obj, "spec", "task", "type"),
        "method": _get(obj, "spec", "method", "type"),
        "model": model_name(obj),
        "topology": topology(obj),
        "step": progress.get("step"),
        "totalSteps": progress.get("totalSteps"),
        "percent": progress.get("percent"),
        "loss": progress.get("loss"),
        "etaSeconds": progress.get("etaSeconds"),
        "message": _get(obj, "status", "message") or "",
    }


def curves(obj: dict[str, Any]) -> dict[str, Series]:
    """The series of ``status.history``, by name: (step, value) pairs in step order.

    ``train_loss``, ``learning_rate``, ``tokens_per_second``, ``samples_per_second``,
    ``eval_loss`` and ``eval_<metric>`` for each eval metric; a series with no point is left out.
    """
    history = _get(obj, "status", "history") or {}
    out: dict[str, Series] = {}

    def add(name: str, step: Any, value: Any) -> None:
        if isinstance(step, int) and isinstance(value, int | float) and not isinstance(value, bool):
            out.setdefault(name, []).append((step, float(value)))

    for point in sorted(history.get("train") or [], key=lambda p: p.get("step", 0)):
        add("train_loss", point.get("step"), point.get("loss"))
        add("learning_rate", point.get("step"), point.get("learningRate"))
        add("tokens_per_second", point.get("step"), point.get("tokensPerSecond"))
        add("samples_per_second", point.get("step"), point.get("samplesPerSecond"))
    for point in sorted(history.get("eval") or [], key=lambda p: p.get("step", 0)):
        add("eval_loss", point.get("step"), point.get("loss"))
        for metric, value in sorted((point.get("metrics") or {}).items()):
            add(f"eval_{metric}", point.get("step"), value)
    return out


def artifacts(obj: dict[str, Any]) -> dict[str, str]:
    """Every result URI the status names: checkpoints, model, metrics, the full history."""
    found = {k: v for k, v in (_get(obj, "status", "artifacts") or {}).items() if isinstance(v, str) and v}
    history_uri = _get(obj, "status", "history", "uri")
    if history_uri:
        found["history"] = history_uri
    return found


def hyperparameters(obj: dict[str, Any]) -> dict[str, Any]:
    """The settings people compare runs by, flattened to ``section.field``."""
    spec = obj.get("spec") or {}
    flat: dict[str, Any] = {
        "model": model_name(obj),
        "task": _get(spec, "task", "type"),
        "method": _get(spec, "method", "type"),
    }
    for section in ("training", "method"):
        for field, value in sorted((spec.get(section) or {}).items()):
            if field != "type" and not isinstance(value, dict | list):
                flat[f"{section}.{field}"] = value
    return {k: v for k, v in flat.items() if v is not None}


def event_rows(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The job's Events, newest first, with the fields a person reads."""
    rows = [
        {
            "type": e.get("type", ""),
            "reason": e.get("reason", ""),
            "message": e.get("message", ""),
            "count": e.get("count") or 1,
            "last": e.get("lastTimestamp") or e.get("eventTime") or _get(e, "metadata", "creationTimestamp"),
        }
        for e in events
    ]
    return sorted(rows, key=lambda r: r["last"] or "", reverse=True)


def job_detail(obj: dict[str, Any], events: list[dict[str, Any]]) -> dict[str, Any]:
    """Everything the page of one job shows."""
    status = obj.get("status") or {}
    return {
        **job_summary(obj),
        "conditions": status.get("conditions") or [],
        "events": event_rows(events),
        "progress": status.get("progress") or {},
        "metrics": status.get("metrics") or {},
        "testMetrics": status.get("testMetrics") or {},
        "parameters": status.get("parameters"),
        "restarts": status.get("restarts", 0),
        "resources": _get(obj, "spec", "resources") or {},
        "strategy": _get(obj, "spec", "distributed", "strategy"),
        "memoryEstimate": status.get("memoryEstimate"),
        "artifacts": artifacts(obj),
        "hyperparameters": hyperparameters(obj),
        "curves": curves(obj),
        "historyMaxPoints": _get(obj, "status", "history", "maxPoints"),
    }
