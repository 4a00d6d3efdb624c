"""Pure formatting: tables, progress bars, durations, colour (only when asked: on a TTY)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import yaml

BAR_WIDTH = 20
PHASE_COLOURS = {"Succeeded": "32", "Running": "36", "Failed": "31", "Suspended": "33", "Pending": "33"}


def colour(text: str, code: str | None, enabled: bool) -> str:
    """``text`` in an ANSI colour when enabled (stdout is a TTY and NO_COLOR is unset)."""
    return f"\033[{code}m{text}\033[0m" if enabled and code else text


def progress_bar(percent: float | None, width: int = BAR_WIDTH) -> str:
    """``[#####.....]  45%`` for a percentage; blank brackets when unknown."""
    if percent is None:
        return "[" + " " * width + "]    -"
    clamped = max(0.0, min(100.0, percent))
    filled = round(width * clamped / 100)
    return "[" + "#" * filled + "." * (width - filled) + f"] {clamped:3.0f}%"


def duration(seconds: float | None) -> str:
    """A short duration as kubectl shows ages: 45s, 12m, 3h5m, 2d4h."""
    if seconds is None:
        return "-"
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60}s" if s < 600 and s % 60 else f"{s // 60}m"
    if s < 86400:
        return f"{s // 3600}h{(s % 3600) // 60}m" if (s % 3600) // 60 else f"{s // 3600}h"
    return f"{s // 86400}d{(s % 86400) // 3600}h" if (s % 86400) // 3600 else f"{s // 86400}d"


def age(timestamp: str | None, now: datetime | None = None) -> str:
    """The age of an RFC 3339 timestamp."""
    if not timestamp:
        return "-"
    then = datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    return duration(((now or datetime.now(UTC)) - then).total_seconds())


def number(value: Any, digits: int = 4) -> str:
    """A metric as a person reads it: 4 significant digits, '-' when missing."""
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    return f"{value:.{digits}g}"


def table(headers: Sequence[str], rows: Iterable[Sequence[str]], *, visible_len: Any = len) -> str:
    """Columns padded as kubectl pads them (three spaces between); ``visible_len`` ignores colour codes."""
    rows = [list(r) for r in rows]
    widths = [max([len(h), *(visible_len(r[i]) for r in rows)]) for i, h in enumerate(headers)]
    lines = []
    for row in [list(headers), *rows]:
        cells = [c + " " * (widths[i] - visible_len(c)) for i, c in enumerate(row)]
        lines.append("   ".join(cells).rstrip())
    return "\n".join(lines)


def strip_ansi(text: str) -> str:
    """The text without ANSI colour codes."""
    import re

    return re.sub(r"\033\[[0-9;]*m", "", text)


def visible_len(text: str) -> int:
    """Length of text as the terminal shows it."""
    return len(strip_ansi(text))


def dump(data: Any, fmt: str) -> str:
    """-o json or -o yaml."""
    if fmt == "json":
        return json.dumps(data, indent=2, sort_keys=False)
    return yaml.safe_dump(data, sort_keys=False).rstrip()


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as dotted keys: {"training": {"epochs": 3}} -> {"training.epochs": 3}."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, path + "."))
        else:
            out[path] = value
    return out
