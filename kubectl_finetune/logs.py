"""logs: the trainer pods' logs, each line prefixed by its node rank."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from finetune_api.contract import COMPLETION_INDEX_ANNOTATION
from kubectl_finetune.formatting import colour
from kubectl_finetune.kube import Cluster, CommandError
from kubectl_finetune.plot import SERIES_COLOURS


def pod_rank(pod: dict[str, Any]) -> int | None:
    """The node rank of a trainer pod: its Indexed Job completion index."""
    meta = pod.get("metadata") or {}
    value = (meta.get("annotations") or {}).get(COMPLETION_INDEX_ANNOTATION) or (meta.get("labels") or {}).get(
        COMPLETION_INDEX_ANNOTATION
    )
    return int(value) if value is not None and str(value).isdigit() else None


def choose_pods(pods: list[dict[str, Any]], rank: int | None, every: bool) -> list[tuple[int, dict[str, Any]]]:
    """(rank, pod) to show: every rank, or one (default 0); the newest pod of a rank (a restart replaces one)."""
    newest: dict[int, dict[str, Any]] = {}
    for pod in pods:
        r = pod_rank(pod)
        if r is None:
            continue
        created = pod["metadata"].get("creationTimestamp") or ""
        if r not in newest or created >= (newest[r]["metadata"].get("creationTimestamp") or ""):
            newest[r] = pod
    if every:
        return sorted(newest.items())
    wanted = 0 if rank is None else rank
    if wanted not in newest:
        have = ", ".join(str(r) for r in sorted(newest)) or "none"
        raise CommandError(f"the job has no pod of rank {wanted} (ranks with pods: {have})")
    return [(wanted, newest[wanted])]


def prefix_lines(rank: int, text: str, *, tty: bool = False) -> list[str]:
    """The lines of a log, each prefixed by ``[rank N]``."""
    prefix = colour(f"[rank {rank}]", SERIES_COLOURS[rank % len(SERIES_COLOURS)], tty)
    return [f"{prefix} {line}" for line in text.splitlines()]


def split_stream(chunks: Iterable[bytes]) -> Iterator[str]:
    """Whole lines from a stream of byte chunks (a partial last line is kept until it ends)."""
    pending = b""
    for chunk in chunks:
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            yield line.decode(errors="replace")
    if pending:
        yield pending.decode(errors="replace")


def show_logs(
    cluster: Cluster,
    job: dict[str, Any],
    rank: int | None,
    every: bool,
    follow: bool,
    write: Callable[[str], None],
    tty: bool,
) -> None:
    """Print the chosen pods' logs (following them until they end with -f)."""
    chosen = choose_pods(cluster.pods(job), rank, every)
    namespace = job["metadata"]["namespace"]
    if not follow:
        for r, pod in chosen:
            for line in prefix_lines(r, cluster.pod_log(namespace, pod["metadata"]["name"], follow=False), tty=tty):
                write(line)
        return
    lines: queue.Queue[str | None] = queue.Queue()

    def pump(r: int, name: str) -> None:
        try:
            for line in split_stream(cluster.pod_log(namespace, name, follow=True)):
                lines.put(prefix_lines(r, line, tty=tty)[0] if line else f"[rank {r}]")
        except CommandError as err:
            lines.put(f"error: {err}")
        finally:
            lines.put(None)

    for r, pod in chosen:
        threading.Thread(target=pump, args=(r, pod["metadata"]["name"]), daemon=True).start()
    running = len(chosen)
    while running:
        item = lines.get()
        if item is None:
            running -= 1
        else:
            write(item)
