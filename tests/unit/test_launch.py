"""The pod launcher keeps the trainer's exit code, which torchrun alone turns into 1."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from finetune_trainer.launch import exit_code_for


@pytest.mark.parametrize(
    ("codes", "expected"),
    [([0, 0], 0), ([1, 0], 1), ([0, 3], 3), ([1, 4], 4), ([-9, 1], 137), ([-15], 143), ([2, 1], 2)],
)
def test_exit_code_for_worker_codes(codes: list[int], expected: int) -> None:
    assert exit_code_for(codes) == expected


@pytest.mark.slow
def test_a_worker_exiting_3_makes_the_launcher_exit_3(tmp_path: Path) -> None:
    script = tmp_path / "worker.py"
    script.write_text(
        textwrap.dedent("""
        import os, sys
        sys.exit(3 if os.environ["LOCAL_RANK"] == "1" else 0)
    """)
    )
    argv = [sys.executable, "-m", "finetune_trainer.launch", "--nproc-per-node=2", "--master-port=0", str(script)]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert out.returncode == 3, out.stderr[-2000:]


@pytest.mark.slow
def test_a_pod_stopped_with_sigterm_exits_retryable_with_the_reason(tmp_path: Path) -> None:
    import signal
    import time

    from finetune_api.contract import EXIT_RETRYABLE

    script = tmp_path / "worker.py"
    ready = tmp_path / "ready"
    script.write_text(
        textwrap.dedent(f"""
        import pathlib, time
        pathlib.Path({str(ready)!r}).touch()
        time.sleep(120)
    """)
    )
    argv = [sys.executable, "-m", "finetune_trainer.launch", "--nproc-per-node=1", "--master-port=0", str(script)]
    launcher = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not ready.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert ready.exists(), "the worker did not start"

    launcher.send_signal(signal.SIGTERM)  # what the kubelet does to a preempted or evicted pod
    _, stderr = launcher.communicate(timeout=60)
    assert launcher.returncode == EXIT_RETRYABLE, stderr[-2000:]
    assert "retryable error: the trainer was stopped by SIGTERM (preempted or evicted)" in stderr


@pytest.mark.slow
@pytest.mark.parametrize(("shutdown_timeout", "saved"), [(15, True), (1, False)], ids=["grace-allows", "too-short"])
def test_workers_finish_their_sigterm_save_within_the_shutdown_timeout(
    tmp_path: Path, shutdown_timeout: int, saved: bool
) -> None:
    """torchrun's own 30 s would cut a long SIGTERM checkpoint short: the operator passes the pod's grace period."""
    import signal
    import time

    script = tmp_path / "worker.py"
    ready, done = tmp_path / "ready", tmp_path / "saved"
    script.write_text(
        textwrap.dedent(f"""
        import pathlib, signal, sys, time
        def save(*_):
            time.sleep(3)  # a checkpoint and its upload
            pathlib.Path({str(done)!r}).touch()
            sys.exit(75)
        signal.signal(signal.SIGTERM, save)
        pathlib.Path({str(ready)!r}).touch()
        time.sleep(120)
    """)
    )
    argv = [
        sys.executable, "-m", "finetune_trainer.launch", "--nproc-per-node=1", "--master-port=0",
        f"--shutdown-timeout={shutdown_timeout}", str(script),
    ]  # fmt: skip
    launcher = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not ready.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert ready.exists(), "the worker did not start"
    launcher.send_signal(signal.SIGTERM)
    _, stderr = launcher.communicate(timeout=60)
    assert launcher.returncode == 75, stderr[-2000:]
    assert done.exists() is saved, stderr[-2000:]
