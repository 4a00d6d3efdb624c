"""Pytest plugin: the local Kubernetes control plane, MinIO and Helm as session fixtures.

Load it with ``pytest_plugins = ["tests.cluster.fixture"]`` (or ``-p tests.cluster.fixture``).

- ``kube``: a :class:`Kube` (kubeconfig path, ``kubectl(...)`` and ``helm(...)`` helpers).
- ``minio``: a :class:`MinIO` (endpoint, credentials, ``client()`` for a boto3 S3 client).
- ``kube_namespace``: a fresh namespace per test, deleted afterwards.

If ``tests/cluster/up.sh`` already started a cluster (its env file exists and the API
server answers), the fixtures reuse it and leave it running. Otherwise the session runs
up.sh itself, and the last session using that cluster runs down.sh at its end; set
``FTJ_CLUSTER_KEEP=1`` to leave it running.
"""

from __future__ import annotations

import fcntl
import json
import os
import ssl
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

CLUSTER_DIR = Path(__file__).resolve().parent
REPO_ROOT = CLUSTER_DIR.parent.parent
UP_SH = CLUSTER_DIR / "up.sh"
DOWN_SH = CLUSTER_DIR / "down.sh"
# up.sh records who started the cluster in RUN/started-by; fixtures stop only their own.
PYTEST_OWNER = "pytest"


def run_dir() -> Path:
    """The run dir up.sh uses (FTJ_CLUSTER_RUN_DIR, default .cache/cluster/run)."""
    return Path(os.environ.get("FTJ_CLUSTER_RUN_DIR", REPO_ROOT / ".cache" / "cluster" / "run"))


def read_env_file(path: Path) -> dict[str, str]:
    """Parse the KEY=VALUE lines of up.sh's env file (comments and blanks skipped)."""
    env: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            env[key] = value
    return env


class CommandError(subprocess.CalledProcessError):
    """A failed kubectl/helm call whose message carries the command's stderr."""

    def __str__(self) -> str:
        return f"{super().__str__()}\nstdout:\n{self.stdout}\nstderr:\n{self.stderr}"


def _run(
    argv: Sequence[str], env: Mapping[str, str], input: str | None, check: bool, timeout: float
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        list(argv), input=input, env=dict(env), capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and proc.returncode != 0:
        raise CommandError(proc.returncode, proc.args, proc.stdout, proc.stderr)
    return proc


@dataclass(frozen=True)
class Kube:
    """The local API server, reached with the admin kubeconfig."""

    kubeconfig: Path
    server: str
    ca_file: Path
    kubectl_path: str
    helm_path: str
    env: Mapping[str, str]
    """Environment for child processes: KUBECONFIG, HELM_* homes, AWS_* for MinIO."""
    gpu_nodes: int

    def kubectl(
        self,
        *args: str,
        input: str | Mapping[str, Any] | None = None,
        check: bool = True,
        timeout: float = 120,
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl against the cluster; a dict ``input`` is sent as a JSON manifest."""
        text = json.dumps(input) if isinstance(input, Mapping) else input
        return _run([self.kubectl_path, "--kubeconfig", str(self.kubeconfig), *args], self.env, text, check, timeout)

    def kubectl_json(self, *args: str) -> Any:
        """Run ``kubectl ... -o json`` and return the parsed output."""
        return json.loads(self.kubectl(*args, "-o", "json").stdout)

    def helm(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 180
    ) -> subprocess.CompletedProcess[str]:
        """Run the pinned helm binary against the cluster."""
        return _run([self.helm_path, "--kubeconfig", str(self.kubeconfig), *args], self.env, input, check, timeout)


@dataclass(frozen=True)
class MinIO:
    """The local MinIO server (S3 API) and its fixed test credentials."""

    endpoint: str
    access_key: str
    secret_key: str
    region: str

    def client(self) -> S3Client:
        """A boto3 S3 client for this server (path-style addressing, SigV4)."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
            config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
        )


def _api_server_ready(env: Mapping[str, str]) -> bool:
    try:
        context = ssl.create_default_context(cafile=env["FTJ_CLUSTER_CA"])
        with urllib.request.urlopen(f"{env['FTJ_KUBE_APISERVER']}/readyz", context=context, timeout=3) as response:
            return bool(response.status == 200)
    except (OSError, KeyError, ValueError):
        return False


def _up() -> None:
    env = {**os.environ, "FTJ_CLUSTER_OWNER": PYTEST_OWNER}
    proc = subprocess.run([str(UP_SH)], capture_output=True, text=True, stdin=subprocess.DEVNULL, env=env, check=False)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-40:])
        pytest.fail(f"tests/cluster/up.sh failed (exit {proc.returncode}):\n{tail}", pytrace=False)


@contextmanager
def _sessions_lock() -> Iterator[None]:
    """Serialises the sessions sharing one run dir while they join and leave."""
    lock_path = run_dir().parent / f"{run_dir().name}.sessions.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "cluster: needs the local Kubernetes control plane, MinIO and Helm (tests/cluster/up.sh)"
    )


@pytest.fixture(scope="session")
def cluster_env() -> Iterator[dict[str, str]]:
    """The env file of a running cluster; starts one if needed.

    Sessions sharing the run dir (several pytest runs, xdist workers) register in
    RUN/sessions/. A cluster that a session started is stopped by the last session to
    leave; one started by hand with up.sh is left running.
    """
    env_file = run_dir() / "cluster.env"
    session_file = run_dir() / "sessions" / str(os.getpid())
    with _sessions_lock():
        if not (env_file.is_file() and _api_server_ready(read_env_file(env_file))):
            _up()
        session_file.parent.mkdir(exist_ok=True)
        session_file.touch()
    yield read_env_file(env_file)
    with _sessions_lock():
        session_file.unlink(missing_ok=True)
        others = [p for p in session_file.parent.glob("*") if p.name.isdigit() and _pid_alive(int(p.name))]
        started_by = run_dir() / "started-by"
        ours = started_by.is_file() and started_by.read_text().strip() == PYTEST_OWNER
        if ours and not others and os.environ.get("FTJ_CLUSTER_KEEP") != "1":
            subprocess.run([str(DOWN_SH)], check=False)


@pytest.fixture(scope="session")
def kube(cluster_env: dict[str, str]) -> Kube:
    """The local Kubernetes API server (admin access)."""
    return Kube(
        kubeconfig=Path(cluster_env["KUBECONFIG"]),
        server=cluster_env["FTJ_KUBE_APISERVER"],
        ca_file=Path(cluster_env["FTJ_CLUSTER_CA"]),
        kubectl_path=cluster_env["FTJ_KUBECTL"],
        helm_path=cluster_env["FTJ_HELM"],
        env={**os.environ, **cluster_env},
        gpu_nodes=int(cluster_env["FTJ_KWOK_GPU_NODES"]),
    )


@pytest.fixture(scope="session")
def minio(cluster_env: dict[str, str]) -> MinIO:
    """The local MinIO server."""
    return MinIO(
        endpoint=cluster_env["FTJ_S3_ENDPOINT"],
        access_key=cluster_env["FTJ_S3_ACCESS_KEY"],
        secret_key=cluster_env["FTJ_S3_SECRET_KEY"],
        region=cluster_env["FTJ_S3_REGION"],
    )


@pytest.fixture
def kube_namespace(kube: Kube) -> Iterator[str]:
    """A namespace of its own for one test, with its default ServiceAccount; deleted afterwards."""
    name = f"test-{uuid.uuid4().hex[:8]}"
    kube.kubectl("create", "namespace", name)
    # The controller-manager adds the default ServiceAccount a moment later; pods need it.
    deadline = time.monotonic() + 30
    while kube.kubectl("get", "serviceaccount", "default", "-n", name, check=False).returncode != 0:
        if time.monotonic() > deadline:
            pytest.fail(f"namespace {name}: no default ServiceAccount after 30 s")
        time.sleep(0.2)
    yield name
    kube.kubectl("delete", "namespace", name, "--wait=false", check=False)
