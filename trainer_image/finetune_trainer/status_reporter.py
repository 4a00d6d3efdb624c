"""Live progress on the FineTuneJob: the trainer (rank 0) patches its own job's status.

Only the fields the trainer owns are written (progress, metrics, parameters, artifacts),
with a JSON merge patch on the status subresource, so the operator's fields are never
touched. Every update is a typed :class:`~finetune_api.status.FineTuneJobStatus`, so a misspelt
field fails at once instead of being pruned by the API server. Patches are throttled (at most
one every ``FTJ_STATUS_INTERVAL`` seconds) and sent from a background thread that keeps only the
newest pending update: a slow or unreachable API server never slows training, and a failed
patch is logged, not raised.

Outside a cluster (no ``FTJ_NAME``/``FTJ_NAMESPACE``) reporting is off.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from finetune_api.contract import API_GROUP, API_VERSION, ENV_JOB_NAME, ENV_JOB_NAMESPACE, ENV_STATUS_INTERVAL, PLURAL
from finetune_api.kube_client import load_kube_config
from finetune_api.status import FineTuneJobStatus, Progress, now, status_patch
from finetune_trainer.history_recorder import HistoryRecorder

log = logging.getLogger(__name__)
PatchFn = Callable[[dict[str, Any]], None]


def kubernetes_patcher(namespace: str, name: str) -> PatchFn:
    """A function that merge-patches the job's status, with the pod's service-account identity.

    In a pod the in-cluster config is used; elsewhere KUBECONFIG (the test node agent
    writes one per pod holding that pod's service-account token).
    """
    from kubernetes import client

    load_kube_config()
    api = client.CustomObjectsApi()

    def patch(status: dict[str, Any]) -> None:
        api.patch_namespaced_custom_object_status(
            API_GROUP, API_VERSION, namespace, PLURAL, name, {"status": status}, _request_timeout=10
        )

    return patch


class StatusReporter:
    """Sends the newest status update in the background, at most once per interval."""

    def __init__(self, patch: PatchFn, interval: float = 10.0):
        self._patch = patch
        self._interval = interval
        self._pending: dict[str, Any] | None = None
        self._last_sent = 0.0
        self._cond = threading.Condition()
        self._closed = False
        self.sent = 0
        self.failures = 0
        self._thread = threading.Thread(target=self._run, name="ftj-status", daemon=True)
        self._thread.start()

    @classmethod
    def from_env(cls) -> StatusReporter | None:
        """A reporter for the job named by FTJ_NAME/FTJ_NAMESPACE, or None when not in a job."""
        name, namespace = os.environ.get(ENV_JOB_NAME), os.environ.get(ENV_JOB_NAMESPACE)
        if not name or not namespace:
            return None
        try:
            patch = kubernetes_patcher(namespace, name)
        except Exception as err:  # no credentials: train anyway, say why progress is missing
            log.warning("status reporting off: cannot reach the Kubernetes API (%s)", err)
            return None
        return cls(patch, float(os.environ.get(ENV_STATUS_INTERVAL, "10")))

    def update(self, status: FineTuneJobStatus) -> None:
        """Queue the trainer's fields set on ``status``; they merge with a still-pending update (newest win)."""
        body = status_patch(status, "trainer")
        with self._cond:
            self._pending = _deep_merge(self._pending or {}, body)
            self._cond.notify()

    def close(self, timeout: float = 30.0) -> None:
        """Send what is pending now (ignoring the interval) and stop the thread."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._pending is None and not self._closed:
                    self._cond.wait()
                if self._pending is None and self._closed:
                    return
                wait = self._last_sent + self._interval - time.monotonic()
                if wait > 0 and not self._closed:
                    self._cond.wait(wait)
                    continue
                status, self._pending = self._pending, None
            try:
                self._patch(status or {})
                self.sent += 1
            except Exception as err:
                self.failures += 1
                log.warning("could not update the FineTuneJob status: %s", err)
            self._last_sent = time.monotonic()


def _deep_merge(base: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _finite(value: Any) -> float | None:
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


class ProgressCallback(TrainerCallback):
    """Turns the Trainer's logs into status.progress, status.metrics and status.history (world process zero only).

    ``history_uri`` is where the full history goes (S3 output only), named in status.history.uri.
    """

    def __init__(self, reporter: StatusReporter, global_batch_size: int, history_uri: str | None = None):
        self.reporter = reporter
        self.global_batch_size = global_batch_size
        self.history = HistoryRecorder(global_batch_size, history_uri)
        self._t0: float | None = None
        self._step0 = 0

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **_: Any) -> None:
        self._t0 = time.monotonic()
        self._step0 = state.global_step  # resumed runs start past zero
        self.history.begin(state.log_history, state.global_step)  # a resumed run's curve so far

    def progress(self, state: TrainerState, loss: float | None = None, lr: float | None = None) -> Progress:
        """status.progress for the trainer's current state."""
        step, total = state.global_step, state.max_steps or None
        samples_per_second = eta = None
        if self._t0 is not None and step > self._step0:
            per_step = (time.monotonic() - self._t0) / (step - self._step0)
            samples_per_second = round(self.global_batch_size / per_step, 2) if per_step > 0 else None
            eta = max(0, int(per_step * (total - step))) if total else None
        return Progress(
            step=step,
            total_steps=total,
            percent=round(100.0 * min(step, total) / total, 1) if total else None,
            epoch=round(float(state.epoch), 3) if state.epoch is not None else None,
            loss=loss,
            learning_rate=lr,
            samples_per_second=samples_per_second,
            eta_seconds=eta,
            updated_at=now(),
        )

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, Any] | None = None,
        **_: Any,
    ) -> None:
        if not state.is_world_process_zero or not logs:
            return
        progress = self.progress(state, _finite(logs.get("loss")), _finite(logs.get("learning_rate")))
        metrics = {k: f for k, v in logs.items() if k.startswith("eval_") and (f := _finite(v)) is not None}
        history = self.history.log(logs, state.global_step)
        update = FineTuneJobStatus(progress=progress, history=history)
        if metrics:
            try:
                update = FineTuneJobStatus(progress=progress, metrics=metrics, history=history)
            except ValidationError as err:  # e.g. more metrics than the status holds: report progress only
                log.warning("status.metrics not reported: %s", err)
        self.reporter.update(update)

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **_: Any) -> None:
        if state.is_world_process_zero:
            self.reporter.update(FineTuneJobStatus(progress=self.progress(state)))
