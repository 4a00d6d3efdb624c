"""The background thread that uploads checkpoints while training goes on.

The queue holds at most ``FTJ_S3_UPLOAD_QUEUE`` (default 1) checkpoints waiting behind the one
uploading: when a newer checkpoint arrives and the queue is full, the oldest waiting one is dropped
(superseded) instead of blocking training or piling up snapshots on disk.
"""

from __future__ import annotations

import collections
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from finetune_trainer.s3_types import relative_files

log = logging.getLogger(__name__)


@dataclass
class PendingCheckpoint:
    """A checkpoint snapshot waiting for (or in) upload."""

    step: int
    snapshot: Path
    queued_at: float = field(default_factory=time.monotonic)


class CheckpointUploader:
    """One thread uploading checkpoints in order; at most ``max_pending`` wait, newer ones supersede older."""

    def __init__(self, upload: Callable[[PendingCheckpoint], None], max_pending: int = 1):
        self._upload = upload
        self._max_pending = max(1, max_pending)
        self._pending: collections.deque[PendingCheckpoint] = collections.deque()
        self._busy = False
        self._closed = False
        self._cond = threading.Condition()
        self.superseded: list[int] = []
        self._thread = threading.Thread(target=self._run, name="ftj-s3-checkpoints", daemon=True)
        self._thread.start()

    def submit(self, item: PendingCheckpoint) -> None:
        """Queue a checkpoint; if the queue is full the oldest waiting one is dropped (never blocks)."""
        with self._cond:
            while len(self._pending) >= self._max_pending:
                old = self._pending.popleft()
                self.superseded.append(old.step)
                log.warning(
                    "checkpoint-%d is superseded by checkpoint-%d before its upload started; it is not uploaded",
                    old.step,
                    item.step,
                )
                shutil.rmtree(old.snapshot, ignore_errors=True)
            self._pending.append(item)
            self._cond.notify_all()

    def newer_than(self, step: int) -> bool:
        """Whether a later checkpoint waits in the queue."""
        with self._cond:
            return any(p.step > step for p in self._pending)

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until nothing is queued or uploading; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._pending or self._busy:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._cond.wait(remaining)
        return True

    def close(self, timeout: float | None = None) -> bool:
        """Finish what is queued, then stop the thread; False if it did not finish in time."""
        done = self.drain(timeout)
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(1.0 if not done else None)
        return done

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if not self._pending:
                    return
                item = self._pending.popleft()
                self._busy = True
            try:
                self._upload(item)
            except Exception:  # the upload function logs its own failures; never let the thread die
                log.exception("checkpoint-%d: upload failed", item.step)
            finally:
                shutil.rmtree(item.snapshot, ignore_errors=True)
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()


def snapshot_directory(source: Path, dest: Path) -> Path:
    """Hard-link (or copy) every file of source into dest, so later deletes of source do not touch it.

    The Trainer deletes old checkpoints (saveTotalLimit) while an upload may still be reading them;
    links to the same inodes keep the bytes until the upload is done, at no copying cost.
    """
    shutil.rmtree(dest, ignore_errors=True)
    for name in relative_files(source):
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(source / name, target)
        except OSError:
            shutil.copy2(source / name, target)
    return dest
