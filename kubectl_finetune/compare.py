"""compare: the hyper-parameters that differ between runs and their final metrics, side by side."""

from __future__ import annotations

import json
from typing import Any

from kubectl_finetune.formatting import flatten, number, table

# Spec sections that say what was trained how; output and resources are where, not how.
COMPARED_SECTIONS = ("model", "task", "dataset", "method", "training", "distributed")


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def compare(jobs: list[dict[str, Any]]) -> dict[str, Any]:
    """{"jobs": [names], "parameters": {field: {job: value}}, "metrics": {metric: {job: value}}}.

    Only fields whose values differ (a field one run sets and another leaves out differs too).
    """
    names = [_label(j, jobs) for j in jobs]
    flat = [flatten({k: v for k, v in (j.get("spec") or {}).items() if k in COMPARED_SECTIONS}) for j in jobs]
    fields = sorted({f for spec in flat for f in spec})
    parameters = {
        f: {n: spec.get(f) for n, spec in zip(names, flat, strict=True)}
        for f in fields
        if len({_canonical(spec.get(f)) for spec in flat}) > 1
    }
    metrics: dict[str, dict[str, Any]] = {}
    for name, job in zip(names, jobs, strict=True):
        status = job.get("status") or {}
        finals = {
            "phase": status.get("phase"),
            "step": (status.get("progress") or {}).get("step"),
            "train loss": (status.get("progress") or {}).get("loss"),
            **(status.get("metrics") or {}),
            **{f"test {k}": v for k, v in (status.get("testMetrics") or {}).items()},
        }
        for key, value in finals.items():
            metrics.setdefault(key, {})[name] = value
    return {"jobs": names, "parameters": parameters, "metrics": metrics}


def _label(job: dict[str, Any], jobs: list[dict[str, Any]]) -> str:
    """The job's name, with its namespace when two compared jobs share a name."""
    meta = job["metadata"]
    same = [j for j in jobs if j["metadata"]["name"] == meta["name"]]
    return f"{meta['namespace']}/{meta['name']}" if len(same) > 1 else str(meta["name"])


def render_compare(result: dict[str, Any]) -> str:
    """Two tables: differing hyper-parameters, then final metrics."""
    names = result["jobs"]

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return number(value)
        return "-" if value is None else value if isinstance(value, str) else _canonical(value)

    params = [[f, *(cell(v.get(n)) for n in names)] for f, v in result["parameters"].items()]
    metrics = [[m, *(cell(v.get(n)) for n in names)] for m, v in result["metrics"].items()]
    out = []
    if params:
        out.append(table(["PARAMETER", *names], params))
    else:
        out.append("The runs have the same hyper-parameters.")
    out.append(table(["FINAL", *names], metrics))
    return "\n\n".join(out)
