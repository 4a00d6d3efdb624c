"""The run's history on rank 0: status.history (downsampled) and history.jsonl (every log entry, in S3).

The downsampling itself is :mod:`finetune_api.history`; this module feeds it the Trainer's log
entries with the throughput measured between two of them, and rebuilds it from the restored
TrainerState's log history when a run resumes from a checkpoint.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from typing import Any

from finetune_api.history import add_log_entry, from_log_history
from finetune_api.status import History

# Cumulative token counts a log entry may carry: the Trainer's (include_num_input_tokens_seen) or TRL's.
TOKENS_SEEN = ("num_input_tokens_seen", "num_tokens")


def history_jsonl(log_history: Iterable[Mapping[str, Any]]) -> bytes:
    """The full history as JSON lines: one Trainer log entry per line, as the Trainer logged it."""
    return b"".join(json.dumps(dict(entry), sort_keys=True).encode() + b"\n" for entry in log_history)


class HistoryRecorder:
    """status.history of one run, kept up to date from the Trainer's logs."""

    def __init__(self, global_batch_size: int, uri: str | None = None, clock: Any = time.monotonic):
        self.global_batch_size = global_batch_size
        self.history = History(uri=uri)
        self._clock = clock
        self._last: tuple[float, int, float | None] | None = None  # time, step, tokens seen

    def begin(self, log_history: Iterable[Mapping[str, Any]], step: int) -> History:
        """Start (or, resumed, restart from the checkpoint's log history) at ``step``."""
        self.history = from_log_history(list(log_history), History(uri=self.history.uri))
        self._last = (self._clock(), step, None)
        return self.history

    def log(self, logs: Mapping[str, Any], step: int) -> History:
        """Add one log entry; training entries get the samples/s and tokens/s since the previous one."""
        now = self._clock()
        tokens = next((logs[k] for k in TOKENS_SEEN if k in logs), None)
        tokens = float(tokens) if isinstance(tokens, int | float) and not isinstance(tokens, bool) else None
        samples_per_second = tokens_per_second = None
        if "loss" in logs and self._last is not None:
            then, last_step, last_tokens = self._last
            elapsed = now - then
            if elapsed > 0 and step > last_step:
                samples_per_second = round((step - last_step) * self.global_batch_size / elapsed, 3)
                if tokens is not None and last_tokens is not None and tokens >= last_tokens:
                    tokens_per_second = round((tokens - last_tokens) / elapsed, 3)
        if "loss" in logs:
            self._last = (now, step, tokens)
        elif self._last is not None:  # an evaluation: its time is not training time
            _, last_step, last_tokens = self._last
            self._last = (now, last_step, last_tokens)
        self.history = add_log_entry(
            self.history, logs, step, samples_per_second=samples_per_second, tokens_per_second=tokens_per_second
        )
        return self.history
