"""Run the real operator as a process against the local control plane, for the tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.cluster.fixture import Kube

ROOT = Path(__file__).resolve().parents[2]
T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(what: str, fn: Callable[[], T | None], timeout: float = 60, interval: float = 0.3) -> T:
    """Poll fn until it returns something truthy; fail naming what was awaited."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = fn()
        except Exception as err:  # the object may not exist yet
            last = err
        if last and not isinstance(last, Exception):
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; last: {last!r}")


class OperatorProcess:
    """One operator replica: a subprocess with its own metrics and health ports and log file."""

    def __init__(self, kube: Kube, log_path: Path, extra_args: list[str] | None = None, **env: str):
        self.kube = kube
        self.log_path = log_path
        self.metrics_port = free_port()
        self.health_port = free_port()
        # The session's operator watches test-* namespaces, leaving others to tests that run their own.
        self.extra_args = extra_args if extra_args is not None else ["--namespace=test-*", "--standalone"]
        self.env = {**os.environ, **kube.env, "KUBECONFIG": str(kube.kubeconfig), **env}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> OperatorProcess:
        log = open(self.log_path, "ab")  # noqa: SIM115  (closed with the process)
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "finetune_operator",
                *self.extra_args,
                f"--metrics-port={self.metrics_port}",
                f"--health-port={self.health_port}",
            ],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
        wait_for("the operator's health endpoint", self.healthy, timeout=60)
        return self

    def healthy(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"operator exited with {self.proc.returncode}:\n{self.log()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/healthz", timeout=2) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
            return str(r.read().decode())

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        """SIGKILL: no cleanup, as when a node dies."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()


def install_crds(kube: Kube) -> None:
    """Apply the generated CRD and kopf's peering CRDs, and wait until they are served."""
    for path in (ROOT / "crds" / "finetunejob.yaml", ROOT / "charts/finetune-operator/crds/kopf-peering.yaml"):
        kube.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(path))
    kube.kubectl(
        "wait",
        "--for=condition=Established",
        "crd/finetunejobs.finetune.dev",
        "crd/kopfpeerings.kopf.dev",
        "crd/clusterkopfpeerings.kopf.dev",
        "--timeout=60s",
    )


@pytest.fixture(scope="session")
def crds(kube: Kube) -> Kube:
    install_crds(kube)
    return kube


@pytest.fixture(scope="session")
def operator(crds: Kube, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    """One standalone operator watching every namespace, for the whole session."""
    proc = OperatorProcess(crds, tmp_path_factory.mktemp("operator") / "operator.log").start()
    yield proc
    proc.stop()
