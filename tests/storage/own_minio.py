"""A MinIO server of a test's own (the cluster's binary, its own port and data dir), to stop and start."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.cluster.fixture import MinIO
from tests.storage.trainer_runs import wait_for


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class OwnMinIO:
    """A separate MinIO server (the cluster's binary, another port and data dir) that a test may kill."""

    binary: Path
    data_dir: Path
    log_path: Path
    access_key: str
    secret_key: str
    port: int = field(default_factory=_free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        """http://127.0.0.1:<port>."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> OwnMinIO:
        """Start the server (same port and data as before) and wait until it is ready."""
        env = {
            **os.environ,
            "MINIO_ROOT_USER": self.access_key,
            "MINIO_ROOT_PASSWORD": self.secret_key,
            "MINIO_BROWSER": "off",
            "MINIO_UPDATE": "off",
            "MINIO_CI_CD": "1",
        }
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [
                str(self.binary),
                "server",
                "--quiet",
                "--address",
                f"127.0.0.1:{self.port}",
                "--console-address",
                "127.0.0.1:0",
                str(self.data_dir),
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        wait_for(f"MinIO on {self.endpoint}", self.ready, timeout=120, interval=0.1)  # slow on a busy machine
        return self

    def ready(self) -> bool:
        """Whether the server answers its readiness probe."""
        import urllib.request

        try:
            with urllib.request.urlopen(f"{self.endpoint}/minio/health/ready", timeout=1) as r:
                if r.status != 200:
                    return False
        except OSError:
            return False
        # The probe can answer before the object layer is up ("Server not initialized yet"):
        # ready means an S3 call succeeds.
        try:
            self.client().list_buckets()
        except Exception:  # any refusal means "not yet"
            return False
        return True

    def kill(self) -> None:
        """SIGKILL the server, as when its node dies."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)

    def client(self) -> Any:
        """A boto3 client for this server."""
        return MinIO(self.endpoint, self.access_key, self.secret_key, "us-east-1").client()
