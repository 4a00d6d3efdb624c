"""A test-only node agent: runs the pods bound to its Node as local processes.

KWOK only simulates pods. The end-to-end tests need the real trainer to run, so this
agent plays the kubelet for one Node, for exactly what our trainer pods use:

* registers a Node (not annotated ``kwok.x-k8s.io/node=fake``, so KWOK leaves it and its
  pods alone), labelled ``finetune.dev/test-node=local`` and tainted with the same key
  (``NoSchedule``) so that only pods that ask for it land here; keeps it alive by renewing
  its Lease in ``kube-node-lease`` and refreshing the Ready condition;
* watches the pods bound to it (``spec.nodeName``) and for each new one resolves the
  container's env (values, ``$(VAR)`` references, fieldRef, secretKeyRef, configMapKeyRef,
  envFrom), writes ConfigMap / Secret / downward-API / projected volumes into a per-pod
  folder, creates folders for emptyDir and PVC volumes, and rewrites every mountPath in
  the command, args and env values (and in ConfigMap files) to its local folder;
* points the rendezvous address (``--master-addr``, ``--rdzv-endpoint``, ``MASTER_ADDR``)
  at 127.0.0.1 and gives every Job its own free master port, the same for all its pods;
* gives the process the pod's ServiceAccount identity: a token from the TokenRequest API
  (bound to the pod) in a per-pod kubeconfig, ``KUBECONFIG`` set, no
  ``KUBERNETES_SERVICE_HOST`` (in-cluster config detection fails), so RBAC is exercised;
* reports Running / Succeeded / Failed through the pod status subresource with the real
  exit code (``containerStatuses[].state.terminated.exitCode``, what podFailurePolicy reads);
* on deletion sends SIGTERM, SIGKILL after the grace period, reports the terminal phase
  and removes the pod object (grace 0), like a kubelet.

Use it in-process (:class:`NodeAgent` with ``start()``/``stop()``; the pytest fixture in
``tests/e2e/agent_fixture.py``) or as a CLI: ``python -m tests.e2e.node_agent --help``.

Not a kubelet: no images, no isolation (processes run as this user, on this host's
filesystem and network), no resource limits, no probes, no kubelet API (``kubectl logs``
and ``exec`` do not work: read :meth:`NodeAgent.log_of`), one container per pod.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import ctypes
import json
import logging
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import yaml
from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException

LOCAL_NODE_LABEL = "finetune.dev/test-node"
LOCAL_NODE_VALUE = "local"
AGENT_ANNOTATION = "finetune.dev/node-agent"
NODE_LEASE_NAMESPACE = "kube-node-lease"
LOOPBACK = "127.0.0.1"
SHM = "/dev/shm"
TERMINAL_PHASES = ("Succeeded", "Failed")
JOB_UID_LABEL = "batch.kubernetes.io/controller-uid"
STRATEGIC = "application/strategic-merge-patch+json"
MERGE = "application/merge-patch+json"
# Exit code and reason a kubelet reports for a container whose process it lost or never started.
LOST_EXIT_CODE = 137
LOST_REASON = "ContainerStatusUnknown"

T = TypeVar("T")


class PodConfigError(Exception):
    """The pod refers to something missing (a Secret, a key): the kubelet's CreateContainerConfigError.

    The agent retries until it appears or the pod is deleted, as a kubelet does.
    """


class UnsupportedPod(Exception):
    """The pod uses a feature this agent does not implement; the pod is failed with this message."""


# --------------------------------------------------------------------------- pure helpers


def utc_now() -> datetime:
    return datetime.now(UTC)


def rfc3339(moment: datetime) -> str:
    """Kubernetes ``Time`` (seconds precision)."""
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def micro_time(moment: datetime) -> str:
    """Kubernetes ``MicroTime`` (Lease renewTime)."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


_VAR_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.\-]*)\)")


def expand_vars(text: str, env: Mapping[str, str]) -> str:
    """Expand ``$(VAR)`` as the kubelet does: defined names are replaced, ``$$`` is a literal ``$``,
    anything else (an undefined name) stays as written."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return env.get(name, match.group(0))

    return _VAR_REF.sub(replace, text)


def path_rewriter(mounts: Mapping[str, str]) -> Callable[[str], str]:
    """A function replacing each container path prefix (mountPath) by its local folder.

    A mountPath matches only as a whole path prefix: at the start of the string or after a
    non-path character (``=``, ``:``, space, quote...) and followed by ``/`` or the end of
    the path, so ``/workspace`` rewrites ``--out=/workspace/x`` but not ``/workspaces`` or
    ``/a/workspace``. One regex pass, longest prefix first, so a replacement is never
    rewritten again.
    """
    prefixes = sorted((p.rstrip("/") for p in mounts if p.rstrip("/")), key=len, reverse=True)
    if not prefixes:
        return lambda text: text
    local = {p.rstrip("/"): str(v) for p, v in mounts.items()}
    pattern = re.compile(r"(?<![\w.\-/])(" + "|".join(re.escape(p) for p in prefixes) + r")(?![\w.\-])")
    return lambda text: pattern.sub(lambda m: local[m.group(1)], text)


def kill_container(pid: int, sig: int) -> None:
    """Signal a container's main process, its process group and every descendant.

    A kubelet kills the container's cgroup; the closest here is the process tree. Its
    process group alone is not enough: torchrun starts each worker in a session of its
    own, and a worker outliving its pod would go on training as a ghost rank.
    """
    import psutil

    try:
        descendants = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        descendants = []
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)
    for child in descendants:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            child.send_signal(sig)


_MASTER_ADDR = ("--master-addr", "--master_addr")
_MASTER_PORT = ("--master-port", "--master_port")
_RDZV_ENDPOINT = ("--rdzv-endpoint", "--rdzv_endpoint")
_RDZV_OPTIONS = (*_MASTER_ADDR, *_MASTER_PORT, *_RDZV_ENDPOINT)
# torchrun options that take no value; any other "--opt" without "=" takes the next argument.
_LAUNCHER_FLAGS = frozenset(
    {"-m", "--module", "--standalone", "--no-python", "--no_python", "--run-path", "--run_path", "--help"}
)


def rewrite_rendezvous(argv: Sequence[str], addr: str, port: int) -> list[str]:
    """Point the launcher's rendezvous options at ``addr:port`` (``--opt=value`` and ``--opt value``).

    In a cluster pod 0 is reached through the headless Service's DNS name; here every pod
    is a local process, so the name becomes 127.0.0.1 and the port one of the Job's own.
    Only the launcher's options (before the script or ``-m`` module) are touched: the
    program's own arguments are not torchrun's.
    """
    # The launcher is argv[0] (torchrun), or "python -m <launcher module>" (finetune_trainer.launch).
    start = 3 if len(argv) > 2 and argv[1] == "-m" else 1
    out = list(argv[:start])
    rest = list(argv[start:])
    pending: str | None = None  # an option written "--opt value", waiting for its value
    for i, arg in enumerate(rest):
        if pending is not None:
            out.append(_rendezvous_value(pending, arg, addr, port) if pending in _RDZV_OPTIONS else arg)
            pending = None
            continue
        if arg == "--" or not arg.startswith("-"):
            return out + rest[i:]  # the program and its arguments
        name, sep, value = arg.partition("=")
        if sep:
            out.append(f"{name}={_rendezvous_value(name, value, addr, port)}" if name in _RDZV_OPTIONS else arg)
        else:
            out.append(arg)
            if name not in _LAUNCHER_FLAGS:
                pending = name
    return out


def _rendezvous_value(option: str, value: str, addr: str, port: int) -> str:
    if option in _MASTER_ADDR:
        return addr
    if option in _MASTER_PORT:
        return str(port)
    return f"{addr}:{port}"  # --rdzv-endpoint host[:port]


def rewrite_rendezvous_env(env: Mapping[str, str], addr: str, port: int) -> dict[str, str]:
    """The env counterpart of :func:`rewrite_rendezvous` (torchrun reads ``PET_*``; torch ``MASTER_*``)."""
    out = dict(env)
    for key in ("MASTER_ADDR", "PET_MASTER_ADDR"):
        if key in out:
            out[key] = addr
    for key in ("MASTER_PORT", "PET_MASTER_PORT"):
        if key in out:
            out[key] = str(port)
    if "PET_RDZV_ENDPOINT" in out:
        out["PET_RDZV_ENDPOINT"] = f"{addr}:{port}"
    return out


_BRACKETED = re.compile(r"^metadata\.(labels|annotations)\['(.+)'\]$")


def resolve_field_path(pod: Mapping[str, Any], field_path: str, node_name: str) -> str:
    """The downward-API value of ``field_path`` for this pod (the fields a kubelet supports)."""
    meta = pod.get("metadata", {})
    spec = pod.get("spec", {})
    match = _BRACKETED.match(field_path)
    if match:
        return str((meta.get(match.group(1)) or {}).get(match.group(2), ""))
    simple: dict[str, Callable[[], Any]] = {
        "metadata.name": lambda: meta.get("name", ""),
        "metadata.namespace": lambda: meta.get("namespace", ""),
        "metadata.uid": lambda: meta.get("uid", ""),
        "metadata.labels": lambda: _key_values(meta.get("labels") or {}),
        "metadata.annotations": lambda: _key_values(meta.get("annotations") or {}),
        "spec.nodeName": lambda: spec.get("nodeName") or node_name,
        "spec.serviceAccountName": lambda: spec.get("serviceAccountName", "default"),
        # Every pod of this node is a local process: pod IP = host IP = loopback.
        "status.podIP": lambda: LOOPBACK,
        "status.podIPs": lambda: LOOPBACK,
        "status.hostIP": lambda: LOOPBACK,
        "status.hostIPs": lambda: LOOPBACK,
    }
    if field_path not in simple:
        raise UnsupportedPod(f"fieldRef {field_path!r} is not supported by the node agent")
    return str(simple[field_path]())


def _key_values(values: Mapping[str, str]) -> str:
    return "\n".join(f'{k}="{v}"' for k, v in sorted(values.items()))


def exit_code_of(returncode: int) -> int:
    """A container runtime's exit code: a process killed by signal N exits 128 + N."""
    return 128 - returncode if returncode < 0 else returncode


def find_executable(name: str, path: str) -> str:
    """Resolve a container command: the executables next to this Python (the venv's torchrun,
    python) come first, then ``path``."""
    if "/" in name:
        return name
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which(name, path=path)
    if found is None:
        raise UnsupportedPod(f"executable {name!r} not found next to {sys.executable} or on PATH")
    return found


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None
_PR_SET_PDEATHSIG = 1


def _die_with_agent() -> None:
    """Child side of the fork: get SIGKILL when the agent's thread that started us dies.

    A killed test run must not leave trainers running on a shared machine. (libc is
    loaded before the fork: nothing but a syscall happens between fork and exec.)
    """
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _decode(data: str) -> bytes:
    return base64.b64decode(data)


def _retry(what: str, fn: Callable[[], T], logger: logging.Logger, attempts: int = 5) -> T | None:
    """Call ``fn`` with backoff on API errors; a 404 (object gone) ends it quietly."""
    delay = 0.2
    for attempt in range(attempts):
        try:
            return fn()
        except ApiException as err:
            if err.status == 404:
                return None
            if attempt == attempts - 1:
                logger.warning("%s failed: %s %s", what, err.status, err.reason)
                return None
        except Exception as err:  # connection errors (urllib3): retry the same way
            if attempt == attempts - 1:
                logger.warning("%s failed: %s", what, err)
                return None
        time.sleep(delay)
        delay *= 2
    return None


# --------------------------------------------------------------------------- state


@dataclass(frozen=True)
class PodProcess:
    """A snapshot of one pod's local process, for tests."""

    namespace: str
    name: str
    uid: str
    pid: int
    pod_dir: Path
    log_path: Path


@dataclass
class _Prepared:
    argv: list[str]
    env: dict[str, str]
    cwd: Path
    secret_env: frozenset[str] = frozenset()  # names whose value came from a Secret: masked in command.json


@dataclass
class _PodRun:
    """What the agent knows about one pod (by uid) and its process."""

    namespace: str
    name: str
    uid: str
    pod: dict[str, Any]
    pod_dir: Path
    log_path: Path
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop_requested: threading.Event = field(default_factory=threading.Event)
    grace_seconds: float = 30.0
    shutdown: bool = False  # stopped because the agent stops (not a pod deletion)
    process: subprocess.Popen[bytes] | None = None
    reaped: bool = True
    finished: bool = False
    delete_sent: bool = False
    gone: bool = False  # the pod object no longer exists
    started_at: datetime | None = None
    thread: threading.Thread | None = None


# --------------------------------------------------------------------------- the agent


class NodeAgent:
    """Plays the kubelet for one Node: runs the pods bound to it as local processes.

    ``kubeconfig`` must be an admin's (it registers the Node, reads Secrets, requests
    tokens, writes pod status). ``work_dir`` holds ``logs/``, ``pods/`` (one folder per
    pod) and ``pvcs/`` (one folder per claim, shared by the pods that mount it).
    """

    def __init__(
        self,
        kubeconfig: str | Path,
        work_dir: str | Path,
        node_name: str = "local-agent-0",
        *,
        cpu: str = "64",
        memory: str = "512Gi",
        pods: int = 110,
        gpus: int = 0,
        labels: Mapping[str, str] | None = None,
        taint: bool = True,
        heartbeat_seconds: float = 10.0,
        lease_seconds: int = 40,
        max_grace_seconds: float = 30.0,
        stop_grace_seconds: float = 5.0,
        delete_node_on_stop: bool = True,
        extra_env: Mapping[str, str] | None = None,
        token_seconds: int = 86400,
    ) -> None:
        self.kubeconfig = Path(kubeconfig).resolve()
        self.work_dir = Path(work_dir).resolve()
        self.node_name = node_name
        self.cpu, self.memory, self.pods, self.gpus = cpu, memory, pods, gpus
        self.labels = {
            "kubernetes.io/hostname": node_name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine()),
            "node.kubernetes.io/instance-type": "local-agent",
            "type": "local-agent",
            LOCAL_NODE_LABEL: LOCAL_NODE_VALUE,
            **(labels or {}),
        }
        self.taint = taint
        self.heartbeat_seconds = heartbeat_seconds
        self.lease_seconds = lease_seconds
        self.max_grace_seconds = max_grace_seconds
        self.stop_grace_seconds = stop_grace_seconds
        self.delete_node_on_stop = delete_node_on_stop
        self.extra_env = dict(extra_env or {})
        self.token_seconds = token_seconds
        self.log = logging.getLogger(f"{__name__}.{node_name}")

        self._api_client: client.ApiClient | None = None
        self._watch_client: client.ApiClient | None = None
        self._server = ""
        self._ca_data = ""
        self._runs: dict[str, _PodRun] = {}
        self._job_ports: dict[str, int] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._watch: watch.Watch | None = None
        self._threads: list[threading.Thread] = []
        self._log_handler: logging.Handler | None = None
        self._node_created = False
        self._node_ready_since = utc_now()

    # ----------------------------------------------------------------- public API

    @property
    def logs_dir(self) -> Path:
        return self.work_dir / "logs"

    @property
    def node_selector(self) -> dict[str, str]:
        """The nodeSelector that sends a pod here."""
        return {LOCAL_NODE_LABEL: LOCAL_NODE_VALUE, "kubernetes.io/hostname": self.node_name}

    @property
    def tolerations(self) -> list[dict[str, str]]:
        """The toleration a pod needs for this node's taint (wire format, also valid in a FineTuneJob spec)."""
        return [{"key": LOCAL_NODE_LABEL, "operator": "Equal", "value": LOCAL_NODE_VALUE, "effect": "NoSchedule"}]

    def scheduling(self) -> dict[str, Any]:
        """``nodeSelector`` and ``tolerations`` to merge into a pod spec."""
        return {"nodeSelector": self.node_selector, "tolerations": self.tolerations}

    def start(self) -> NodeAgent:
        """Register the Node, start the heartbeat and the pod watch (threads); returns self."""
        self.work_dir.mkdir(parents=True, exist_ok=True)
        for sub in ("logs", "pods", "pvcs"):
            (self.work_dir / sub).mkdir(exist_ok=True)
        handler = logging.FileHandler(self.work_dir / "agent.log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(threadName)s %(message)s"))
        self.log.addHandler(handler)
        self.log.setLevel(logging.DEBUG)
        self._log_handler = handler

        self._read_admin_kubeconfig()
        self._api_client = config.new_client_from_config(config_file=str(self.kubeconfig))
        self._watch_client = config.new_client_from_config(config_file=str(self.kubeconfig))
        self._register_node()
        for name, target in (("heartbeat", self._heartbeat_loop), ("pod-watch", self._watch_loop)):
            thread = threading.Thread(target=target, name=f"{self.node_name}-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        self.log.info("node %s registered; work dir %s", self.node_name, self.work_dir)
        return self

    def stop(self) -> None:
        """Stop every process (SIGTERM, SIGKILL after ``stop_grace_seconds``), report their pods
        Failed (with a DisruptionTarget condition, as a graceful node shutdown does), stop the
        threads and delete the Node (unless ``delete_node_on_stop`` is False: then it is cordoned)."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        if self._watch is not None:
            self._watch.stop()
        with self._lock:
            runs = list(self._runs.values())
        for run in runs:
            with run.lock:
                if not run.finished:
                    run.shutdown = True
                    run.grace_seconds = self.stop_grace_seconds
                    run.stop_requested.set()
        for run in runs:
            if run.thread is not None:
                run.thread.join(timeout=self.stop_grace_seconds + 30)
        for thread in self._threads:
            thread.join(timeout=15)
        self._finish_node()
        for api_client in (self._api_client, self._watch_client):
            if api_client is not None:
                api_client.close()
        if self._log_handler is not None:
            self.log.removeHandler(self._log_handler)
            self._log_handler.close()

    def __enter__(self) -> NodeAgent:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def processes(self, namespace: str | None = None) -> list[PodProcess]:
        """The pods whose process is running now."""
        out = []
        with self._lock:
            runs = list(self._runs.values())
        for run in runs:
            with run.lock:
                if run.process is not None and not run.reaped and (namespace is None or run.namespace == namespace):
                    out.append(PodProcess(run.namespace, run.name, run.uid, run.process.pid, run.pod_dir, run.log_path))
        return out

    def wait_for_process(self, namespace: str, name_prefix: str, timeout: float = 120) -> PodProcess:
        """Wait until a pod whose name starts with ``name_prefix`` has a running process."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for proc in self.processes(namespace):
                if proc.name.startswith(name_prefix):
                    return proc
            time.sleep(0.1)
        raise TimeoutError(f"no process for a pod {namespace}/{name_prefix}* after {timeout:.0f} s")

    def kill_pod(self, namespace: str, name: str, sig: int = signal.SIGKILL, *, group: bool = True) -> int:
        """Send ``sig`` to a pod's process (its whole process group by default, like a node crash
        killing the container); returns the PID. The pod then ends as its process does: killed by
        SIGKILL it exits 137, the pod is Failed and a Job replaces it."""
        with self._lock:
            runs = [r for r in self._runs.values() if r.namespace == namespace and r.name == name]
        for run in runs:
            with run.lock:  # the PID is ours (not reaped) while the lock is held
                if run.process is not None and not run.reaped:
                    pid = run.process.pid
                    if group:
                        kill_container(pid, sig)
                    else:
                        os.kill(pid, sig)
                    self.log.info("pod %s/%s: sent signal %s to pid %d", namespace, name, sig, pid)
                    return pid
        raise LookupError(f"pod {namespace}/{name} has no running process on {self.node_name}")

    def log_path(self, namespace: str, name: str) -> Path:
        """Where the container output of pod ``namespace/name`` goes."""
        return self.logs_dir / f"{namespace}_{name}.log"

    def log_files(self, namespace: str, name_prefix: str = "") -> list[Path]:
        """Log files of the pods whose name starts with ``name_prefix``, oldest first."""
        # Namespaces and pod names cannot contain "_", so the pattern is unambiguous.
        return sorted(self.logs_dir.glob(f"{namespace}_{name_prefix}*.log"), key=lambda p: (p.stat().st_mtime, p.name))

    def log_of(self, namespace: str, name_prefix: str = "") -> str:
        """Output (stdout+stderr) of every pod whose name starts with ``name_prefix``, concatenated."""
        return "".join(p.read_text(errors="replace") for p in self.log_files(namespace, name_prefix))

    def pod_dir(self, namespace: str, name: str) -> Path:
        """The local folder of the most recent pod ``namespace/name`` (volumes, kubeconfig, home)."""
        with self._lock:
            runs = [r for r in self._runs.values() if r.namespace == namespace and r.name == name]
        if runs:
            return runs[-1].pod_dir
        matches = sorted((self.work_dir / "pods").glob(f"{namespace}_{name}_*"), key=lambda p: p.stat().st_mtime)
        if not matches:
            raise LookupError(f"no folder for pod {namespace}/{name}")
        return matches[-1]

    def master_port(self, job_uid: str) -> int:
        """The local rendezvous port of a Job (allocated on first use; the same for all its pods)."""
        with self._lock:
            if job_uid not in self._job_ports:
                used = set(self._job_ports.values())
                port = free_port()
                while port in used:
                    port = free_port()
                self._job_ports[job_uid] = port
            return self._job_ports[job_uid]

    # ----------------------------------------------------------------- API helpers

    @property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self._api_client)

    def _json(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> dict[str, Any]:
        """Call a generated API method and return the raw JSON (camelCase dicts, not models)."""
        response = fn(*args, _preload_content=False, **kwargs)
        try:
            return dict(json.loads(response.data))
        finally:
            response.release_conn()

    def _read_admin_kubeconfig(self) -> None:
        """Server and CA of the current context, for the per-pod kubeconfigs."""
        cfg = yaml.safe_load(self.kubeconfig.read_text())
        context_name = cfg["current-context"]
        context = next(c["context"] for c in cfg["contexts"] if c["name"] == context_name)
        cluster = next(c["cluster"] for c in cfg["clusters"] if c["name"] == context["cluster"])
        self._server = cluster["server"]
        if "certificate-authority-data" in cluster:
            self._ca_data = cluster["certificate-authority-data"]
        elif "certificate-authority" in cluster:
            ca_path = Path(cluster["certificate-authority"])
            if not ca_path.is_absolute():
                ca_path = self.kubeconfig.parent / ca_path
            self._ca_data = base64.b64encode(ca_path.read_bytes()).decode()

    # ----------------------------------------------------------------- node

    def _node_status(self, now: datetime) -> dict[str, Any]:
        ready_since = rfc3339(self._node_ready_since)
        amounts = {"cpu": self.cpu, "memory": self.memory, "pods": str(self.pods), "ephemeral-storage": "1Ti"}
        amounts["nvidia.com/gpu"] = str(self.gpus)

        def condition(kind: str, status: str, reason: str, message: str) -> dict[str, Any]:
            return {
                "type": kind,
                "status": status,
                "reason": reason,
                "message": message,
                "lastHeartbeatTime": rfc3339(now),
                "lastTransitionTime": ready_since,
            }

        return {
            "capacity": amounts,
            "allocatable": amounts,
            "conditions": [
                condition(
                    "Ready", "True", "KubeletReady", "node agent (tests/e2e/node_agent.py) is posting ready status"
                ),
                condition("MemoryPressure", "False", "KubeletHasSufficientMemory", "no memory pressure"),
                condition("DiskPressure", "False", "KubeletHasNoDiskPressure", "no disk pressure"),
                condition("PIDPressure", "False", "KubeletHasSufficientPID", "no PID pressure"),
            ],
            "addresses": [{"type": "InternalIP", "address": LOOPBACK}, {"type": "Hostname", "address": self.node_name}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 0}},  # no kubelet API: no kubectl logs/exec
            "nodeInfo": {
                "architecture": self.labels["kubernetes.io/arch"],
                "operatingSystem": "linux",
                "osImage": platform.platform(),
                "kernelVersion": platform.release(),
                "kubeletVersion": "local-agent",
                "kubeProxyVersion": "",
                "containerRuntimeVersion": "local-process://",
                "machineID": "",
                "systemUUID": "",
                "bootID": "",
            },
        }

    def _register_node(self) -> None:
        now = utc_now()
        self._node_ready_since = now
        taints = [{"key": LOCAL_NODE_LABEL, "value": LOCAL_NODE_VALUE, "effect": "NoSchedule"}] if self.taint else []
        body = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": self.node_name,
                "labels": self.labels,
                # Deliberately no kwok.x-k8s.io/node annotation: KWOK must leave this node alone.
                "annotations": {AGENT_ANNOTATION: "true", "node.alpha.kubernetes.io/ttl": "0"},
            },
            "spec": {"taints": taints},
            "status": self._node_status(now),
        }
        try:
            node = self._json(self.core.create_node, body)
        except ApiException as err:
            if err.status != 409:
                raise
            # Left over from an agent that crashed: take it over (its pods are reported lost).
            patch = {"metadata": {"labels": self.labels}, "spec": {"taints": taints, "unschedulable": False}}
            node = self._json(self.core.patch_node, self.node_name, patch, _content_type=MERGE)
        self._node_created = True
        # Create may drop status on some versions; the status subresource is authoritative.
        self.core.patch_node_status(self.node_name, {"status": self._node_status(now)}, _content_type=STRATEGIC)
        self._renew_lease(node["metadata"]["uid"])

    def _renew_lease(self, node_uid: str | None = None) -> None:
        coordination = client.CoordinationV1Api(self._api_client)
        now = micro_time(utc_now())
        try:
            coordination.patch_namespaced_lease(
                self.node_name,
                NODE_LEASE_NAMESPACE,
                {"spec": {"holderIdentity": self.node_name, "renewTime": now}},
                _content_type=MERGE,
            )
            return
        except ApiException as err:
            if err.status != 404:
                raise
        if node_uid is None:
            node_uid = self._json(self.core.read_node, self.node_name)["metadata"]["uid"]
        lease = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {
                "name": self.node_name,
                "namespace": NODE_LEASE_NAMESPACE,
                # As a kubelet does: the Lease goes with its Node.
                "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": self.node_name, "uid": node_uid}],
            },
            "spec": {
                "holderIdentity": self.node_name,
                "leaseDurationSeconds": self.lease_seconds,
                "acquireTime": now,  # lets a test tell a renewed lease from a fresh one
                "renewTime": now,
            },
        }
        coordination.create_namespaced_lease(NODE_LEASE_NAMESPACE, lease)

    def _heartbeat_loop(self) -> None:
        """Renew the Lease and refresh the Ready condition, so the node-lifecycle controller
        never marks the node NotReady (nor taints it and evicts its pods)."""
        while not self._stopping.wait(self.heartbeat_seconds):
            try:
                self._renew_lease()
                status = {"conditions": self._node_status(utc_now())["conditions"]}
                self.core.patch_node_status(self.node_name, {"status": status}, _content_type=STRATEGIC)
            except Exception as err:
                self.log.warning("heartbeat failed: %s", err)

    def _finish_node(self) -> None:
        if not self._node_created:
            return
        try:
            if self.delete_node_on_stop:
                # Deleting is cleaner than a NotReady node left behind: nothing is scheduled to
                # it, and the pod GC removes any pod still bound to it.
                self.core.delete_node(self.node_name)
                with contextlib.suppress(ApiException):
                    client.CoordinationV1Api(self._api_client).delete_namespaced_lease(
                        self.node_name, NODE_LEASE_NAMESPACE
                    )
            else:
                self.core.patch_node(self.node_name, {"spec": {"unschedulable": True}}, _content_type=MERGE)
        except ApiException as err:
            if err.status != 404:
                self.log.warning("could not remove node %s: %s", self.node_name, err.reason)

    # ----------------------------------------------------------------- pod watch

    def _watch_loop(self) -> None:
        """List + watch the pods bound to this node; relist after each watch window or error."""
        core = client.CoreV1Api(self._watch_client)
        selector = f"spec.nodeName={self.node_name}"
        while not self._stopping.is_set():
            try:
                listing = self._json(core.list_pod_for_all_namespaces, field_selector=selector)
                seen = set()
                for pod in listing.get("items", []):
                    seen.add(pod["metadata"]["uid"])
                    self._on_pod("SYNC", pod)
                with self._lock:
                    missing = [uid for uid in self._runs if uid not in seen]
                for uid in missing:
                    self._on_gone(uid)
                version = listing["metadata"]["resourceVersion"]
                self._watch = watch.Watch()
                for event in self._watch.stream(
                    core.list_pod_for_all_namespaces,
                    field_selector=selector,
                    resource_version=version,
                    timeout_seconds=60,
                    allow_watch_bookmarks=False,
                ):
                    if self._stopping.is_set():
                        break
                    raw = event.get("raw_object") or {}
                    if event["type"] == "ERROR":
                        self.log.debug("watch error event: %s", raw.get("message"))
                        break  # e.g. 410 Gone: relist
                    if event["type"] == "DELETED":
                        self._on_gone(raw["metadata"]["uid"])
                    else:
                        self._on_pod(event["type"], raw)
            except Exception as err:
                if self._stopping.is_set():
                    break
                self.log.warning("pod watch failed (%s); relisting", err)
                self._stopping.wait(1)

    def _on_pod(self, event: str, pod: dict[str, Any]) -> None:
        if self._stopping.is_set():
            return
        meta = pod["metadata"]
        uid = meta["uid"]
        with self._lock:
            run = self._runs.get(uid)
            if run is None:
                run = self._new_run(pod)
                self._runs[uid] = run
                new = True
            else:
                new = False
        with run.lock:
            run.pod = pod
            delete_now = False
            if meta.get("deletionTimestamp") and not run.stop_requested.is_set():
                grace = meta.get("deletionGracePeriodSeconds")
                run.grace_seconds = min(float(30 if grace is None else grace), self.max_grace_seconds)
                run.stop_requested.set()
            if meta.get("deletionTimestamp") and run.finished and not run.delete_sent and not run.shutdown:
                run.delete_sent = delete_now = True
        if new:
            self.log.info("pod %s/%s (%s) bound here (%s)", run.namespace, run.name, uid, event)
            run.thread = threading.Thread(target=self._run_pod, args=(run,), name=f"pod-{run.name}", daemon=True)
            run.thread.start()
        elif delete_now:
            threading.Thread(target=self._delete_pod, args=(run,), daemon=True).start()

    def _on_gone(self, uid: str) -> None:
        """The pod object is gone (force-deleted, or removed after we finished it)."""
        with self._lock:
            run = self._runs.get(uid)
        if run is None:
            return
        with run.lock:
            run.gone = True
            if run.process is not None and not run.reaped:
                # Force deletion (grace 0) gives no time to anyone: kill the whole container now.
                self.log.info(
                    "pod %s/%s deleted while running: killing pid %d", run.namespace, run.name, run.process.pid
                )
                kill_container(run.process.pid, signal.SIGKILL)
            run.grace_seconds = 0
            run.stop_requested.set()
            finished = run.finished
        if finished:
            with self._lock:
                self._runs.pop(uid, None)

    def _new_run(self, pod: dict[str, Any]) -> _PodRun:
        meta = pod["metadata"]
        namespace, name, uid = meta["namespace"], meta["name"], meta["uid"]
        return _PodRun(
            namespace=namespace,
            name=name,
            uid=uid,
            pod=pod,
            pod_dir=self.work_dir / "pods" / f"{namespace}_{name}_{uid[:8]}",
            log_path=self.log_path(namespace, name),
        )

    # ----------------------------------------------------------------- one pod

    def _run_pod(self, run: _PodRun) -> None:
        try:
            pod = run.pod
            status = pod.get("status") or {}
            if status.get("phase") in TERMINAL_PHASES:
                pass  # finished before we saw it (e.g. by an earlier agent): nothing to run
            elif status.get("phase") == "Running" or any(
                "running" in (cs.get("state") or {}) for cs in status.get("containerStatuses") or []
            ):
                # Bound here and started, but not by this agent (it restarted): the process is lost.
                self._report_terminated(run, LOST_EXIT_CODE, LOST_REASON, "the node agent lost this pod's process")
            else:
                self._execute(run)
        except Exception:
            self.log.exception("pod %s/%s: agent error", run.namespace, run.name)
            with contextlib.suppress(Exception):
                self._report_terminated(run, LOST_EXIT_CODE, LOST_REASON, "node agent error; see agent.log")
        finally:
            with run.lock:
                run.finished = True
                deleting = bool(run.pod["metadata"].get("deletionTimestamp")) and not run.shutdown
                delete_now = deleting and not run.delete_sent and not run.gone
                if delete_now:
                    run.delete_sent = True
                gone = run.gone
            if delete_now:
                self._delete_pod(run)
            if gone:
                with self._lock:
                    self._runs.pop(run.uid, None)

    def _execute(self, run: _PodRun) -> None:
        """Prepare, start and supervise the pod's container; report its status throughout."""
        run.started_at = utc_now()
        run.pod_dir.mkdir(parents=True, exist_ok=True)
        prepared: _Prepared | None = None
        last_error = ""
        while not run.stop_requested.is_set():
            try:
                prepared = self._prepare(run)
                break
            except PodConfigError as err:
                if str(err) != last_error:  # like the kubelet: report it, then retry until it resolves
                    last_error = str(err)
                    self.log.info("pod %s/%s: %s (retrying)", run.namespace, run.name, err)
                    self._report_waiting(run, "CreateContainerConfigError", last_error)
                run.stop_requested.wait(2)
            except UnsupportedPod as err:
                self.log.warning("pod %s/%s: unsupported: %s", run.namespace, run.name, err)
                self._report_terminated(run, 128, "UnsupportedByNodeAgent", str(err))
                return
        if prepared is None:  # deleted (or agent stopped) before it could start
            self._report_terminated(run, LOST_EXIT_CODE, LOST_REASON, "pod stopped before its container started")
            return

        run.log_path.parent.mkdir(parents=True, exist_ok=True)
        (run.pod_dir / "command.json").write_text(
            json.dumps(
                {
                    "argv": prepared.argv,
                    "cwd": str(prepared.cwd),
                    "env": {k: "<from a Secret>" if k in prepared.secret_env else v for k, v in prepared.env.items()},
                },
                indent=2,
            )
        )
        with run.lock:
            if run.stop_requested.is_set():
                prepared = None
            else:
                with open(run.log_path, "ab") as log_file:
                    run.process = subprocess.Popen(
                        prepared.argv,
                        env=prepared.env,
                        cwd=prepared.cwd,
                        stdin=subprocess.DEVNULL,
                        stdout=log_file,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,  # its own process group: the "container" we can kill whole
                        close_fds=True,
                        preexec_fn=_die_with_agent,  # the runner thread lives until the process is reaped
                    )
                run.reaped = False
        if prepared is None or run.process is None:
            self._report_terminated(run, LOST_EXIT_CODE, LOST_REASON, "pod stopped before its container started")
            return
        self.log.info("pod %s/%s: started pid %d: %s", run.namespace, run.name, run.process.pid, prepared.argv)
        self._report_running(run)
        code = self._supervise(run, run.process)
        self.log.info("pod %s/%s: pid %d exited with %d", run.namespace, run.name, run.process.pid, code)
        if run.shutdown:
            self._report_terminated(run, code, "Error" if code else "Completed", "node agent stopped", disrupted=True)
        else:
            self._report_terminated(run, code, "Completed" if code == 0 else "Error", "")

    def _supervise(self, run: _PodRun, proc: subprocess.Popen[bytes]) -> int:
        """Wait for the process; on a stop request SIGTERM it, SIGKILL its group after the grace period.

        Waits without reaping (WNOWAIT) so the PID, and with it the process group id, cannot be
        reused while leftovers of the group are killed.
        """
        kill_at: float | None = None
        while True:
            info = os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            if info is not None and info.si_pid == proc.pid:
                break
            if run.stop_requested.is_set():
                now = time.monotonic()
                if kill_at is None:
                    # A container runtime signals the container's main process; torchrun forwards it.
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(proc.pid, signal.SIGTERM)
                    kill_at = now + run.grace_seconds
                elif now >= kill_at:
                    kill_container(proc.pid, signal.SIGKILL)
                    kill_at = now + 3600
            if kill_at is None:
                run.stop_requested.wait(0.1)
            else:
                time.sleep(0.1)
        # The container is over when its main process is: nothing of it survives (e.g. workers).
        kill_container(proc.pid, signal.SIGKILL)
        with run.lock:
            returncode = proc.wait()
            run.reaped = True
        return exit_code_of(returncode)

    def _delete_pod(self, run: _PodRun) -> None:
        """Finish a pod's graceful deletion, as a kubelet does once its containers are gone."""
        body = {"gracePeriodSeconds": 0, "preconditions": {"uid": run.uid}}
        _retry(
            f"delete pod {run.namespace}/{run.name}",
            lambda: self.core.delete_namespaced_pod(run.name, run.namespace, body=body, grace_period_seconds=0),
            self.log,
        )

    # ----------------------------------------------------------------- preparing a pod

    def _prepare(self, run: _PodRun) -> _Prepared:
        pod = run.pod
        spec = pod["spec"]
        if spec.get("initContainers"):
            raise UnsupportedPod("init containers are not supported by the node agent")
        if len(spec["containers"]) != 1:
            raise UnsupportedPod("the node agent runs pods with exactly one container")
        container = spec["containers"][0]
        namespace = run.namespace

        volume_dirs = self._materialize_volumes(run)
        mounts: dict[str, str] = {}
        for mount in container.get("volumeMounts") or []:
            path = mount["mountPath"]
            if path.rstrip("/") in ("", SHM):
                continue  # /dev/shm stays the host's: torch uses it by that name
            local = volume_dirs[mount["name"]]
            if mount.get("subPath"):
                local = local / mount["subPath"]
                local.mkdir(parents=True, exist_ok=True)
            mounts[path] = str(local)
        rewrite = path_rewriter(mounts)
        # Files projected from ConfigMaps may name container paths too (job.yaml: data under /workspace).
        for volume in spec.get("volumes") or []:
            if "configMap" in volume:
                _rewrite_tree(volume_dirs[volume["name"]], rewrite)

        if not container.get("command"):
            raise UnsupportedPod("the node agent needs an explicit command (there is no image entrypoint)")
        env, secret_env = self._container_env(pod, container, namespace)
        argv = [expand_vars(a, env) for a in [*container["command"], *(container.get("args") or [])]]
        argv = [rewrite(a) for a in argv]
        env = {k: rewrite(v) for k, v in env.items()}

        job_key = (pod["metadata"].get("labels") or {}).get(JOB_UID_LABEL) or next(
            (o["uid"] for o in pod["metadata"].get("ownerReferences") or [] if o.get("controller")), run.uid
        )
        port = self.master_port(job_key)
        argv = rewrite_rendezvous(argv, LOOPBACK, port)
        env = rewrite_rendezvous_env(env, LOOPBACK, port)

        home = run.pod_dir / "home"
        tmp = run.pod_dir / "tmp"
        home.mkdir(exist_ok=True)
        tmp.mkdir(exist_ok=True)
        venv_bin = str(Path(sys.executable).parent)
        base: dict[str, str] = {
            "PATH": os.pathsep.join([venv_bin, os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin")]),
            "HOME": str(home),
            "TMPDIR": str(tmp),
            "LANG": os.environ.get("LANG", "C.UTF-8"),
            "HOSTNAME": spec.get("hostname") or run.name,
            # Collectives on loopback only: every peer is on this host, and nothing should listen outside it.
            "GLOO_SOCKET_IFNAME": "lo",
            "NCCL_SOCKET_IFNAME": "lo",
        }
        if os.environ.get("PYTHONPATH"):
            base["PYTHONPATH"] = os.environ["PYTHONPATH"]
        full = {**base, **self.extra_env, **env}
        # Forced: no hub downloads in tests; the pod's own identity, never the agent's admin one.
        full["HF_HUB_OFFLINE"] = "1"
        for key in ("KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT"):
            full.pop(key, None)
        full.pop("KUBECONFIG", None)
        if spec.get("automountServiceAccountToken") is not False:
            full["KUBECONFIG"] = str(self._write_kubeconfig(run))

        cwd = run.pod_dir
        if container.get("workingDir"):
            candidate = Path(rewrite(container["workingDir"]))
            if candidate.is_dir():
                cwd = candidate
        argv[0] = find_executable(argv[0], full["PATH"])
        return _Prepared(argv=argv, env=full, cwd=cwd, secret_env=frozenset(secret_env))

    def _container_env(
        self, pod: dict[str, Any], container: dict[str, Any], namespace: str
    ) -> tuple[dict[str, str], set[str]]:
        """The container's env in the kubelet's order (envFrom, then env); also the names taken from Secrets."""
        env: dict[str, str] = {}
        secret_names: set[str] = set()
        for source in container.get("envFrom") or []:
            prefix = source.get("prefix", "")
            if "configMapRef" in source:
                ref = source["configMapRef"]
                data = self._config_map_data(namespace, ref["name"], bool(ref.get("optional")))
            elif "secretRef" in source:
                ref = source["secretRef"]
                data = self._secret_data(namespace, ref["name"], bool(ref.get("optional")))
            else:
                raise UnsupportedPod(f"envFrom source {sorted(source)} is not supported")
            for key, value in (data or {}).items():
                env[prefix + key] = value.decode(errors="replace")
                if "secretRef" in source:
                    secret_names.add(prefix + key)
        for item in container.get("env") or []:
            name = item["name"]
            secret_names.discard(name)
            if "valueFrom" not in item:
                env[name] = expand_vars(item.get("value", ""), env)
                continue
            ref = item["valueFrom"]
            if "fieldRef" in ref:
                env[name] = resolve_field_path(pod, ref["fieldRef"]["fieldPath"], self.node_name)
            elif "secretKeyRef" in ref or "configMapKeyRef" in ref:
                kind = "secretKeyRef" if "secretKeyRef" in ref else "configMapKeyRef"
                key_ref = ref[kind]
                optional = bool(key_ref.get("optional"))
                read = self._secret_data if kind == "secretKeyRef" else self._config_map_data
                data = read(namespace, key_ref["name"], optional)
                if data is None:
                    continue
                if key_ref["key"] not in data:
                    if optional:
                        continue
                    raise PodConfigError(
                        f"couldn't find key {key_ref['key']} in {kind[:-6]} {namespace}/{key_ref['name']}"
                    )
                env[name] = data[key_ref["key"]].decode(errors="replace")
                if kind == "secretKeyRef":
                    secret_names.add(name)
            else:
                raise UnsupportedPod(f"env {name}: valueFrom {sorted(ref)} is not supported by the node agent")
        return env, secret_names

    def _secret_data(self, namespace: str, name: str, optional: bool) -> dict[str, bytes] | None:
        try:
            secret = self._json(self.core.read_namespaced_secret, name, namespace)
        except ApiException as err:
            if err.status == 404:
                if optional:
                    return None
                raise PodConfigError(f'secret "{name}" not found') from None
            raise PodConfigError(f"reading secret {name}: {err.reason}") from None
        return {k: _decode(v) for k, v in (secret.get("data") or {}).items()}

    def _config_map_data(self, namespace: str, name: str, optional: bool) -> dict[str, bytes] | None:
        try:
            cm = self._json(self.core.read_namespaced_config_map, name, namespace)
        except ApiException as err:
            if err.status == 404:
                if optional:
                    return None
                raise PodConfigError(f'configmap "{name}" not found') from None
            raise PodConfigError(f"reading configmap {name}: {err.reason}") from None
        data = {k: v.encode() for k, v in (cm.get("data") or {}).items()}
        data.update({k: _decode(v) for k, v in (cm.get("binaryData") or {}).items()})
        return data

    def _materialize_volumes(self, run: _PodRun) -> dict[str, Path]:
        """Write or create every volume of the pod; returns volume name → local folder."""
        out: dict[str, Path] = {}
        for volume in run.pod["spec"].get("volumes") or []:
            name = volume["name"]
            target = run.pod_dir / "volumes" / name
            if "emptyDir" in volume:
                target.mkdir(parents=True, exist_ok=True)
            elif "persistentVolumeClaim" in volume:
                # One folder per claim, shared by every pod that mounts it and kept across pods
                # (a replacement pod finds the checkpoints its predecessor wrote).
                claim = volume["persistentVolumeClaim"]["claimName"]
                target = self.work_dir / "pvcs" / run.namespace / claim
                target.mkdir(parents=True, exist_ok=True)
            elif "configMap" in volume:
                src = volume["configMap"]
                data = self._config_map_data(run.namespace, src["name"], bool(src.get("optional")))
                _write_files(target, data or {}, src.get("items"), src.get("defaultMode", 0o644))
            elif "secret" in volume:
                src = volume["secret"]
                data = self._secret_data(run.namespace, src["secretName"], bool(src.get("optional")))
                _write_files(target, data or {}, src.get("items"), src.get("defaultMode", 0o644))
            elif "downwardAPI" in volume:
                src = volume["downwardAPI"]
                _write_files(target, self._downward_files(run, src["items"]), None, src.get("defaultMode", 0o644))
            elif "projected" in volume:
                self._write_projected(run, target, volume["projected"])
            else:
                kinds = sorted(set(volume) - {"name"})
                raise UnsupportedPod(f"volume {name}: {kinds} volumes are not supported by the node agent")
            out[name] = target
        return out

    def _downward_files(self, run: _PodRun, items: Iterable[dict[str, Any]]) -> dict[str, bytes]:
        files = {}
        for item in items:
            if "fieldRef" not in item:
                raise UnsupportedPod("downwardAPI volumes: only fieldRef items are supported")
            files[item["path"]] = resolve_field_path(run.pod, item["fieldRef"]["fieldPath"], self.node_name).encode()
        return files

    def _write_projected(self, run: _PodRun, target: Path, projected: dict[str, Any]) -> None:
        """Projected volumes; every pod has one (the ServiceAccount admission plugin adds
        kube-api-access-*: token, ca.crt, namespace)."""
        files: dict[str, bytes] = {}
        for source in projected.get("sources") or []:
            if "serviceAccountToken" in source:
                sat = source["serviceAccountToken"]
                audiences = [sat["audience"]] if sat.get("audience") else None
                token = self._request_token(run, audiences, int(sat.get("expirationSeconds", 3607)))
                files[sat["path"]] = token.encode()
            elif "configMap" in source or "secret" in source:
                kind = "configMap" if "configMap" in source else "secret"
                src = source[kind]
                read = self._config_map_data if kind == "configMap" else self._secret_data
                data = read(run.namespace, src["name"], bool(src.get("optional"))) or {}
                files.update(_select_items(data, src.get("items")))
            elif "downwardAPI" in source:
                files.update(self._downward_files(run, source["downwardAPI"]["items"]))
            else:
                raise UnsupportedPod(f"projected source {sorted(source)} is not supported by the node agent")
        _write_files(target, files, None, projected.get("defaultMode", 0o644))

    def _request_token(self, run: _PodRun, audiences: list[str] | None, seconds: int) -> str:
        """A token for the pod's ServiceAccount, bound to the pod (invalid once the pod is gone)."""
        spec: dict[str, Any] = {
            "expirationSeconds": seconds,
            "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": run.name, "uid": run.uid},
        }
        if audiences:
            spec["audiences"] = audiences
        account = run.pod["spec"].get("serviceAccountName") or "default"
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec}
        try:
            response = self._json(self.core.create_namespaced_service_account_token, account, run.namespace, body)
        except ApiException as err:
            raise PodConfigError(f"token for serviceaccount {run.namespace}/{account}: {err.reason}") from None
        return str(response["status"]["token"])

    def _write_kubeconfig(self, run: _PodRun) -> Path:
        """A kubeconfig holding only the pod's ServiceAccount token (no client certificate)."""
        token = self._request_token(run, None, self.token_seconds)
        account = run.pod["spec"].get("serviceAccountName") or "default"
        user = f"system:serviceaccount:{run.namespace}:{account}"
        kubeconfig = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {"name": "local", "cluster": {"server": self._server, "certificate-authority-data": self._ca_data}}
            ],
            "users": [{"name": user, "user": {"token": token}}],
            "contexts": [{"name": "pod", "context": {"cluster": "local", "user": user, "namespace": run.namespace}}],
            "current-context": "pod",
        }
        path = run.pod_dir / "kubeconfig"
        path.touch(mode=0o600)
        path.write_text(yaml.safe_dump(kubeconfig, sort_keys=False))
        return path

    # ----------------------------------------------------------------- status

    def _patch_status(self, run: _PodRun, status: dict[str, Any]) -> None:
        if run.gone:
            return
        _retry(
            f"status of pod {run.namespace}/{run.name}",
            lambda: self.core.patch_namespaced_pod_status(
                run.name, run.namespace, {"status": status}, _content_type=STRATEGIC
            ),
            self.log,
        )

    def _container_base(self, run: _PodRun) -> dict[str, Any]:
        container = run.pod["spec"]["containers"][0]
        status: dict[str, Any] = {
            "name": container["name"],
            "image": container.get("image", ""),
            "imageID": "",
            "restartCount": 0,
        }
        if run.process is not None:
            status["containerID"] = f"local-process://{run.uid}-{run.process.pid}"
        return status

    def _ips(self) -> dict[str, Any]:
        return {
            "hostIP": LOOPBACK,
            "hostIPs": [{"ip": LOOPBACK}],
            "podIP": LOOPBACK,
            "podIPs": [{"ip": LOOPBACK}],
        }

    def _report_waiting(self, run: _PodRun, reason: str, message: str) -> None:
        now = rfc3339(utc_now())
        self._patch_status(
            run,
            {
                "phase": "Pending",
                "startTime": rfc3339(run.started_at or utc_now()),
                "hostIP": LOOPBACK,
                "hostIPs": [{"ip": LOOPBACK}],
                "conditions": [
                    _condition("PodReadyToStartContainers", "True", now),
                    _condition("Initialized", "True", now),
                    _condition("ContainersReady", "False", now, "ContainersNotReady", message),
                    _condition("Ready", "False", now, "ContainersNotReady", message),
                ],
                "containerStatuses": [
                    {
                        **self._container_base(run),
                        "ready": False,
                        "started": False,
                        "state": {"waiting": {"reason": reason, "message": message}},
                    }
                ],
            },
        )

    def _report_running(self, run: _PodRun) -> None:
        now = rfc3339(utc_now())
        started = rfc3339(run.started_at or utc_now())
        self._patch_status(
            run,
            {
                "phase": "Running",
                "startTime": started,
                **self._ips(),
                "conditions": [
                    _condition("PodReadyToStartContainers", "True", now),
                    _condition("Initialized", "True", now),
                    _condition("ContainersReady", "True", now),
                    _condition("Ready", "True", now),
                ],
                "containerStatuses": [
                    {
                        **self._container_base(run),
                        "ready": True,
                        "started": True,
                        "state": {"running": {"startedAt": now}},
                    }
                ],
            },
        )

    def _report_terminated(
        self, run: _PodRun, exit_code: int, reason: str, message: str, disrupted: bool = False
    ) -> None:
        """The terminal status a Job controller reads: phase and the container's exit code."""
        now = rfc3339(utc_now())
        started = rfc3339(run.started_at or utc_now())
        terminated: dict[str, Any] = {"exitCode": exit_code, "reason": reason, "startedAt": started, "finishedAt": now}
        if message:
            terminated["message"] = message
        if "containerID" in (base := self._container_base(run)):
            terminated["containerID"] = base["containerID"]
        conditions = [
            _condition("PodReadyToStartContainers", "False", now),
            _condition("ContainersReady", "False", now, "PodCompleted"),
            _condition("Ready", "False", now, "PodCompleted"),
        ]
        if disrupted:
            # As a kubelet's graceful node shutdown: not the pod's fault (podFailurePolicy may Ignore it).
            conditions.append(_condition("DisruptionTarget", "True", now, "TerminationByKubelet", "node agent stopped"))
        status: dict[str, Any] = {
            "phase": "Succeeded" if exit_code == 0 and not disrupted else "Failed",
            "startTime": started,
            **self._ips(),
            "conditions": conditions,
            "containerStatuses": [{**base, "ready": False, "started": False, "state": {"terminated": terminated}}],
        }
        if message and status["phase"] == "Failed":
            status["message"] = message
        self._patch_status(run, status)


def _condition(kind: str, status: str, now: str, reason: str = "", message: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {"type": kind, "status": status, "lastProbeTime": None, "lastTransitionTime": now}
    if reason:
        out["reason"] = reason
    if message:
        out["message"] = message
    return out


def _select_items(data: Mapping[str, bytes], items: list[dict[str, Any]] | None) -> dict[str, bytes]:
    """ConfigMap/Secret volume semantics: every key as a file, or only ``items`` (key → path)."""
    if items is None:
        return dict(data)
    out = {}
    for item in items:
        if item["key"] not in data:
            raise PodConfigError(f"configmap/secret key {item['key']!r} not found")
        out[item["path"]] = data[item["key"]]
    return out


def _write_files(target: Path, data: Mapping[str, bytes], items: list[dict[str, Any]] | None, mode: int) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for rel, content in _select_items(data, items).items():
        path = target / rel
        if not path.resolve().is_relative_to(target.resolve()):
            raise UnsupportedPod(f"volume file path {rel!r} leaves the volume")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        path.chmod(mode | 0o200)  # we rewrite files in place, so the owner keeps write access


def _rewrite_tree(root: Path, rewrite: Callable[[str], str]) -> None:
    for path in root.rglob("*"):
        if not path.is_file():
            continue
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue  # binary: leave it alone
        new = rewrite(text)
        if new != text:
            path.write_text(new)


# --------------------------------------------------------------------------- CLI


def _default_kubeconfig() -> str | None:
    if os.environ.get("KUBECONFIG"):
        return os.environ["KUBECONFIG"].split(os.pathsep)[0]
    from tests.cluster.fixture import read_env_file, run_dir

    env_file = run_dir() / "cluster.env"
    return read_env_file(env_file).get("KUBECONFIG") if env_file.is_file() else None


def main(argv: Sequence[str] | None = None) -> int:
    """Run a node agent until SIGINT/SIGTERM."""
    parser = argparse.ArgumentParser(
        prog="python -m tests.e2e.node_agent",
        description="Test-only node agent: runs the pods bound to its Node as local processes.",
    )
    parser.add_argument(
        "--kubeconfig", default=None, help="admin kubeconfig (default: $KUBECONFIG, else the local cluster's)"
    )
    parser.add_argument("--node-name", default="local-agent-0")
    parser.add_argument("--work-dir", default=None, help="default: .cache/node-agent/<node name>")
    parser.add_argument("--cpu", default="64")
    parser.add_argument("--memory", default="512Gi")
    parser.add_argument("--pods", type=int, default=110)
    parser.add_argument("--gpus", type=int, default=0, help="advertised nvidia.com/gpu (nothing checks it exists)")
    parser.add_argument("--label", action="append", default=[], metavar="KEY=VALUE", help="extra node label")
    parser.add_argument("--no-taint", action="store_true", help=f"do not taint the node with {LOCAL_NODE_LABEL}")
    parser.add_argument("--keep-node", action="store_true", help="cordon the node at exit instead of deleting it")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)

    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    kubeconfig = args.kubeconfig or _default_kubeconfig()
    if not kubeconfig:
        parser.error("no kubeconfig: pass --kubeconfig, set KUBECONFIG or start tests/cluster/up.sh")
    work_dir = Path(args.work_dir or Path(".cache") / "node-agent" / args.node_name)
    labels = dict(item.split("=", 1) for item in args.label)
    agent = NodeAgent(
        kubeconfig,
        work_dir,
        args.node_name,
        cpu=args.cpu,
        memory=args.memory,
        pods=args.pods,
        gpus=args.gpus,
        labels=labels,
        taint=not args.no_taint,
        delete_node_on_stop=not args.keep_node,
    )
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    agent.start()
    print(f"node {agent.node_name} up; logs in {agent.logs_dir}; Ctrl-C to stop", flush=True)
    done.wait()
    agent.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = [
    "LOCAL_NODE_LABEL",
    "LOCAL_NODE_VALUE",
    "NodeAgent",
    "PodConfigError",
    "PodProcess",
    "UnsupportedPod",
    "expand_vars",
    "path_rewriter",
    "resolve_field_path",
    "rewrite_rendezvous",
    "rewrite_rendezvous_env",
]
