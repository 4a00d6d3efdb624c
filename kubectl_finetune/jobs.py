"""list, status, suspend, resume, delete: FineTuneJobs as tables and summaries."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from kubectl_finetune.formatting import (
    PHASE_COLOURS,
    age,
    colour,
    duration,
    number,
    progress_bar,
    table,
    visible_len,
)
from kubectl_finetune.kube import Cluster


def list_row(job: dict[str, Any], now: datetime | None = None) -> dict[str, Any]:
    """The fields `list` shows for one job (also its -o json entry)."""
    status = job.get("status") or {}
    progress = status.get("progress") or {}
    meta = job["metadata"]
    return {
        "namespace": meta.get("namespace"),
        "name": meta["name"],
        "phase": status.get("phase") or "Pending",
        "percent": progress.get("percent"),
        "step": progress.get("step"),
        "totalSteps": progress.get("totalSteps"),
        "loss": progress.get("loss"),
        "etaSeconds": progress.get("etaSeconds") if status.get("phase") == "Running" else None,
        "age": age(meta.get("creationTimestamp"), now),
    }


def render_list(rows: list[dict[str, Any]], *, all_namespaces: bool, tty: bool) -> str:
    """The `list` table."""
    if not rows:
        return "No FineTuneJobs found."
    headers = ["NAMESPACE"] if all_namespaces else []
    headers += ["NAME", "PHASE", "PROGRESS", "STEP", "LOSS", "ETA", "AGE"]
    lines = []
    for r in rows:
        step = "-" if r["step"] is None else f"{r['step']}/{r['totalSteps'] if r['totalSteps'] is not None else '?'}"
        cells = [r["namespace"]] if all_namespaces else []
        cells += [
            r["name"],
            colour(r["phase"], PHASE_COLOURS.get(r["phase"]), tty),
            progress_bar(r["percent"]),
            step,
            number(r["loss"]),
            duration(r["etaSeconds"]) if r["etaSeconds"] is not None else "-",
            r["age"],
        ]
        lines.append(cells)
    return table(headers, lines, visible_len=visible_len)


def status_summary(job: dict[str, Any], events: list[dict[str, Any]]) -> dict[str, Any]:
    """What `status` shows (also its -o json): conditions, events, topology, estimate, artifacts, progress."""
    spec, status, meta = job.get("spec") or {}, job.get("status") or {}, job["metadata"]
    return {
        "name": meta["name"],
        "namespace": meta.get("namespace"),
        "phase": status.get("phase") or "Pending",
        "message": status.get("message"),
        "task": (spec.get("task") or {}).get("type"),
        "method": (spec.get("method") or {}).get("type"),
        "model": (spec.get("model") or {}).get("name")
        or (spec.get("model") or {}).get("uri")
        or (spec.get("model") or {}).get("path"),
        "topology": status.get("topology"),
        "restarts": status.get("restarts", 0),
        "progress": status.get("progress") or {},
        "metrics": status.get("metrics") or {},
        "parameters": status.get("parameters") or {},
        "estimate": status.get("memoryEstimate") or {},
        "artifacts": status.get("artifacts") or {},
        "conditions": status.get("conditions") or [],
        "events": [
            {
                "type": e.get("type"),
                "reason": e.get("reason"),
                "message": e.get("message"),
                "count": e.get("count"),
                "lastTimestamp": e.get("lastTimestamp") or e.get("eventTime"),
            }
            for e in events
        ],
    }


def render_status(s: dict[str, Any], *, tty: bool, now: datetime | None = None) -> str:
    """The `status` text."""
    p = s["progress"]
    lines = [
        f"Name:        {s['namespace']}/{s['name']}",
        f"Phase:       {colour(s['phase'], PHASE_COLOURS.get(s['phase']), tty)}",
        f"Task:        {s['task']} / {s['method']} on {s['model']}",
        f"Topology:    {s['topology'] or '-'} (nodes x GPUs), restarts {s['restarts']}",
    ]
    if s["message"]:
        lines.append(f"Message:     {s['message']}")
    if p:
        lines.append(
            f"Progress:    {progress_bar(p.get('percent'))} step {p.get('step')}/{p.get('totalSteps') or '?'}, "
            f"loss {number(p.get('loss'))}, ETA {duration(p.get('etaSeconds'))}"
        )
    if s["metrics"]:
        lines.append("Metrics:     " + ", ".join(f"{k} {number(v)}" for k, v in sorted(s["metrics"].items())))
    if s["parameters"]:
        par = s["parameters"]
        lines.append(f"Parameters:  {par.get('trainable'):,} trainable of {par.get('total'):,}")
    est = s["estimate"]
    if est:
        lines.append(f"Estimate:    {est.get('verdict')}: {est.get('message') or '-'}")
    lines.append("Artifacts:" + ("" if s["artifacts"] else "   -"))
    lines += [f"  {k}: {v}" for k, v in s["artifacts"].items()]
    lines.append("Conditions:")
    rows = [
        [
            c.get("type", ""),
            c.get("status", ""),
            c.get("reason", ""),
            age(c.get("lastTransitionTime"), now),
            c.get("message", ""),
        ]
        for c in s["conditions"]
    ]
    lines += ["  " + line for line in table(["TYPE", "STATUS", "REASON", "AGE", "MESSAGE"], rows).splitlines()]
    lines.append("Events:" + ("" if s["events"] else "      <none>"))
    if s["events"]:
        rows = [
            [e["type"] or "", e["reason"] or "", age(e["lastTimestamp"], now), e["message"] or ""] for e in s["events"]
        ]
        lines += ["  " + line for line in table(["TYPE", "REASON", "AGE", "MESSAGE"], rows).splitlines()]
    return "\n".join(lines)


def set_suspend(cluster: Cluster, name: str, suspend: bool) -> str:
    """spec.runPolicy.suspend on or off (the operator suspends or resumes the pods)."""
    cluster.patch_job(name, {"spec": {"runPolicy": {"suspend": suspend}}})
    return f"finetunejob.finetune.dev/{name} {'suspended' if suspend else 'resumed'}"
