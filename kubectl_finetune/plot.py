"""plot: the curves of status.history, in the terminal (several runs overlaid) or saved as an image."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kubectl_finetune.formatting import colour, number

MARKERS = "*o+x#@%&"
SERIES_COLOURS = ["36", "33", "35", "32", "31", "34", "37", "90"]
Series = tuple[str, list[tuple[float, float]]]


def curves(job: dict[str, Any]) -> dict[str, list[tuple[float, float]]]:
    """The curves of one job's status.history: training loss, eval loss, learning rate, and each eval metric."""
    history = (job.get("status") or {}).get("history") or {}
    out: dict[str, list[tuple[float, float]]] = {}
    for p in history.get("train", []):
        if p.get("loss") is not None:
            out.setdefault("train loss", []).append((p["step"], p["loss"]))
        if p.get("learningRate") is not None:
            out.setdefault("learning rate", []).append((p["step"], p["learningRate"]))
    for p in history.get("eval", []):
        if p.get("loss") is not None:
            out.setdefault("eval loss", []).append((p["step"], p["loss"]))
        for name, value in sorted((p.get("metrics") or {}).items()):
            out.setdefault(f"eval {name}", []).append((p["step"], value))
    return out


def render_chart(
    title: str, series: Sequence[Series], *, width: int = 64, height: int = 14, tty: bool = False
) -> list[str]:
    """A scatter chart in characters: one marker per run, y axis with its range, x axis in steps."""
    points = [(x, y) for _, pts in series for x, y in pts]
    if not points:
        return [f"{title}: no points yet"]
    xs, ys = [x for x, _ in points], [y for _, y in points]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    if x1 == x0:
        x1 = x0 + 1
    if y1 == y0:
        y0, y1 = y0 - 0.5, y1 + 0.5
    grid = [[" "] * width for _ in range(height)]
    for i, (_, pts) in enumerate(series):
        marker = colour(MARKERS[i % len(MARKERS)], SERIES_COLOURS[i % len(SERIES_COLOURS)], tty)
        for x, y in pts:
            col = round((x - x0) / (x1 - x0) * (width - 1))
            row = height - 1 - round((y - y0) / (y1 - y0) * (height - 1))
            grid[row][col] = marker
    labels = [number(y1), number((y0 + y1) / 2), number(y0)]
    pad = max(len(label) for label in labels)
    lines = [title]
    for r, cells in enumerate(grid):
        label = labels[0] if r == 0 else labels[2] if r == height - 1 else labels[1] if r == height // 2 else ""
        lines.append(f"{label:>{pad}} |" + "".join(cells))
    lines.append(" " * pad + " +" + "-" * width)
    left, right = f"step {x0:g}", f"{x1:g}"
    lines.append(" " * (pad + 2) + left + " " * max(1, width - len(left) - len(right)) + right)
    legend = "  ".join(
        f"{colour(MARKERS[i % len(MARKERS)], SERIES_COLOURS[i % len(SERIES_COLOURS)], tty)} {name}"
        for i, (name, _) in enumerate(series)
    )
    lines.append(" " * (pad + 2) + legend)
    return lines


def chart_names(runs: dict[str, dict[str, list[tuple[float, float]]]]) -> list[str]:
    """The charts to draw, in a fixed order: losses first, then eval metrics, then the learning rate."""
    names = {n for c in runs.values() for n in c}
    first = [n for n in ("train loss", "eval loss") if n in names]
    metrics = sorted(n for n in names if n.startswith("eval ") and n != "eval loss")
    return first + metrics + (["learning rate"] if "learning rate" in names else [])


def render_terminal(runs: dict[str, dict[str, list[tuple[float, float]]]], *, width: int, tty: bool) -> str:
    """Every chart of the runs, one under the other, runs overlaid."""
    blocks = []
    for name in chart_names(runs):
        series = [(run, c.get(name, [])) for run, c in runs.items()]
        blocks.append("\n".join(render_chart(name, series, width=width, tty=tty)))
    return "\n\n".join(blocks) if blocks else "no history yet (status.history is empty)"


def save_image(runs: dict[str, dict[str, list[tuple[float, float]]]], path: Path) -> None:
    """The charts as an image (png, svg or pdf by the file's extension), with matplotlib's Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = chart_names(runs)
    if not names:
        raise ValueError("no history yet (status.history is empty): nothing to plot")
    fig, axes = plt.subplots(len(names), 1, figsize=(8, 2.8 * len(names)), squeeze=False)
    for ax, name in zip(axes[:, 0], names, strict=True):
        for run, c in runs.items():
            pts = c.get(name, [])
            if pts:
                ax.plot([x for x, _ in pts], [y for _, y in pts], marker="." if len(pts) < 40 else None, label=run)
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
