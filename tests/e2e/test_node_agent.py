"""The test node agent runs pods as real local processes and the real Job controller reacts.

Cluster tests use the local control plane (``tests/cluster/up.sh``) and the session's
``node_agent``; the first few tests pin the agent's pure rewriting rules and need nothing.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cluster.fixture import Kube
from tests.e2e.node_agent import (
    NodeAgent,
    exit_code_of,
    expand_vars,
    path_rewriter,
    rewrite_rendezvous,
    rewrite_rendezvous_env,
)

COMPLETION_INDEX = "metadata.annotations['batch.kubernetes.io/job-completion-index']"


def wait_until(what: str, check: Callable[[], bool], timeout: float = 60, interval: float = 0.25) -> None:
    """Poll ``check`` until it returns True; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def python_container(script: str, *args: str, **extra: Any) -> dict[str, Any]:
    """A container running ``python -c script args`` (python resolves to the venv's)."""
    env = [{"name": "PYTHONUNBUFFERED", "value": "1"}, *extra.pop("env", [])]
    return {"name": "main", "image": "local/python", "command": ["python", "-c", script, *args], "env": env, **extra}


def job(agent: NodeAgent, name: str, container: dict[str, Any], completions: int = 1, **spec: Any) -> dict[str, Any]:
    """An Indexed Job whose pods run on the agent's node."""
    pod_spec = {**agent.scheduling(), "restartPolicy": "Never", "containers": [container]}
    pod_spec.update(spec.pop("pod", {}))
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "completionMode": "Indexed",
            "completions": completions,
            "parallelism": completions,
            "backoffLimit": spec.pop("backoffLimit", 0),
            "template": {"metadata": {"labels": {"app": name}}, "spec": pod_spec},
            **spec,
        },
    }


def pod(agent: NodeAgent, name: str, container: dict[str, Any], **spec: Any) -> dict[str, Any]:
    """A bare pod on the agent's node."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {**agent.scheduling(), "restartPolicy": "Never", "containers": [container], **spec},
    }


def wait_job(kube: Kube, namespace: str, name: str, condition: str, timeout: int = 120) -> dict[str, Any]:
    """Wait for a Job condition (Complete, Failed); returns the Job."""
    kube.kubectl(
        "wait",
        "-n",
        namespace,
        f"--for=condition={condition}",
        f"job/{name}",
        f"--timeout={timeout}s",
        timeout=timeout + 10,
    )
    return dict(kube.kubectl_json("get", "job", name, "-n", namespace))


def job_pods(kube: Kube, namespace: str, name: str) -> list[dict[str, Any]]:
    pods = kube.kubectl_json("get", "pods", "-n", namespace, "-l", f"job-name={name}")["items"]
    return sorted(pods, key=lambda p: p["metadata"]["creationTimestamp"])


def terminated(pod: dict[str, Any]) -> dict[str, Any]:
    return dict(pod["status"]["containerStatuses"][0]["state"]["terminated"])


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# --------------------------------------------------------------------------- pure rules


def test_expand_vars_follows_kubelet_rules() -> None:
    env = {"A": "1", "B": "x"}
    assert expand_vars("$(A)-$(B)-$(C)-$$(A)", env) == "1-x-$(C)-$(A)"


def test_path_rewriter_replaces_whole_mount_prefixes_only() -> None:
    rewrite = path_rewriter({"/etc/finetune": "/tmp/p/config", "/workspace": "/tmp/p/ws", "/workspace/cache": "/c"})

    assert rewrite("--config=/etc/finetune/job.yaml") == "--config=/tmp/p/config/job.yaml"
    assert rewrite("/workspace/cache/hf") == "/c/hf"  # the longer mount wins
    assert rewrite("/workspace") == "/tmp/p/ws"
    assert rewrite("/workspaces/x /a/workspace x/workspace") == "/workspaces/x /a/workspace x/workspace"
    assert rewrite("open('/workspace/out.txt')") == "open('/tmp/p/ws/out.txt')"


def test_rendezvous_options_point_at_loopback_and_the_jobs_port() -> None:
    argv = [
        "torchrun",
        "--nnodes=2",
        "--master-addr=job-0.job",
        "--master-port",
        "29500",
        "--rdzv-endpoint=job-0.job:29400",
        "-m",
        "finetune_trainer",
        "run",
        "--master-port=1",
    ]

    assert rewrite_rendezvous(argv, "127.0.0.1", 4242) == [
        "torchrun",
        "--nnodes=2",
        "--master-addr=127.0.0.1",
        "--master-port",
        "4242",
        "--rdzv-endpoint=127.0.0.1:4242",
        "-m",
        "finetune_trainer",
        "run",
        "--master-port=1",  # the program's own argument: untouched
    ]
    env = rewrite_rendezvous_env({"MASTER_ADDR": "job-0.job", "PET_MASTER_PORT": "29500", "X": "y"}, "127.0.0.1", 7)
    assert env == {"MASTER_ADDR": "127.0.0.1", "PET_MASTER_PORT": "7", "X": "y"}


def test_rendezvous_rewrite_sees_through_the_python_m_launcher() -> None:
    argv = [
        "python",
        "-m",
        "finetune_trainer.launch",
        "--nnodes=2",
        "--master-addr=job-0.job",
        "--master-port=29500",
        "--module",
        "finetune_trainer",
        "run",
        "--config=/etc/finetune/job.yaml",
    ]
    assert rewrite_rendezvous(argv, "127.0.0.1", 4242) == [
        "python",
        "-m",
        "finetune_trainer.launch",
        "--nnodes=2",
        "--master-addr=127.0.0.1",
        "--master-port=4242",
        "--module",
        "finetune_trainer",
        "run",
        "--config=/etc/finetune/job.yaml",
    ]


def test_each_job_gets_its_own_stable_master_port(tmp_path: Path) -> None:
    agent = NodeAgent(tmp_path / "kubeconfig", tmp_path)  # not started: no cluster needed

    first, second = agent.master_port("job-a"), agent.master_port("job-b")

    assert first != second
    assert agent.master_port("job-a") == first


def test_signal_deaths_become_runtime_exit_codes() -> None:
    assert exit_code_of(-9) == 137
    assert exit_code_of(-15) == 143
    assert exit_code_of(3) == 3


# --------------------------------------------------------------------------- against the cluster


@pytest.mark.cluster
def test_indexed_job_pods_run_with_env_secret_and_config_volume(
    kube: Kube, node_agent: NodeAgent, kube_namespace: str
) -> None:
    ns = kube_namespace
    kube.kubectl("create", "secret", "generic", "demo", "-n", ns, "--from-literal=greeting=hello-from-secret")
    kube.kubectl("create", "configmap", "demo", "-n", ns, "--from-literal=message.txt=hello from the configmap")
    script = (
        "import os, sys\n"
        "message = open(sys.argv[1]).read().strip()\n"
        "open('/workspace/out.txt', 'w').write(os.environ['INDEX'])\n"
        "greeting = os.environ['GREETING']\n"
        "print(f\"index={os.environ['INDEX']} greeting={greeting} message={message} arg={sys.argv[2]}\")\n"
        "print('env-path-exists=' + str(os.path.exists(os.environ['MESSAGE_FILE'])))\n"
        "print('pod=' + os.environ['POD_NAME'] + ' ns=' + os.environ['POD_NAMESPACE'])\n"
        "print('service-host=' + str(os.environ.get('KUBERNETES_SERVICE_HOST')))\n"
        "print('offline=' + os.environ['HF_HUB_OFFLINE'] + ' job-index=' + os.environ['JOB_COMPLETION_INDEX'])\n"
    )
    container = python_container(
        script,
        "/etc/demo/message.txt",
        "rank-$(INDEX)",
        env=[
            {"name": "INDEX", "valueFrom": {"fieldRef": {"fieldPath": COMPLETION_INDEX}}},
            {"name": "GREETING", "valueFrom": {"secretKeyRef": {"name": "demo", "key": "greeting"}}},
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "MESSAGE_FILE", "value": "/etc/demo/message.txt"},
        ],
        volumeMounts=[
            {"name": "demo", "mountPath": "/etc/demo", "readOnly": True},
            {"name": "workspace", "mountPath": "/workspace"},
        ],
    )
    manifest = job(
        node_agent,
        "hello",
        container,
        completions=2,
        pod={"volumes": [{"name": "demo", "configMap": {"name": "demo"}}, {"name": "workspace", "emptyDir": {}}]},
    )
    kube.kubectl("apply", "-n", ns, "-f", "-", input=manifest)

    done = wait_job(kube, ns, "hello", "Complete")

    assert done["status"]["succeeded"] == 2
    pods = job_pods(kube, ns, "hello")
    assert len(pods) == 2
    for p in pods:
        name = p["metadata"]["name"]
        index = p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"]
        assert p["spec"]["nodeName"] == node_agent.node_name
        assert p["status"]["phase"] == "Succeeded"
        assert p["status"]["podIP"] == "127.0.0.1"
        assert terminated(p)["exitCode"] == 0
        assert terminated(p)["reason"] == "Completed"
        log = node_agent.log_of(ns, name)
        assert f"index={index} greeting=hello-from-secret message=hello from the configmap arg=rank-{index}" in log
        assert "env-path-exists=True" in log
        assert f"pod={name} ns={ns}" in log
        assert "service-host=None" in log
        assert f"offline=1 job-index={index}" in log
        assert (node_agent.pod_dir(ns, name) / "volumes" / "workspace" / "out.txt").read_text() == index


@pytest.mark.cluster
def test_exit_code_3_fails_the_job_through_pod_failure_policy(
    kube: Kube, node_agent: NodeAgent, kube_namespace: str
) -> None:
    ns = kube_namespace
    container = python_container("import sys; print('bad spec', flush=True); sys.exit(3)")
    policy = {
        "rules": [{"action": "FailJob", "onExitCodes": {"containerName": "main", "operator": "In", "values": [3]}}]
    }
    manifest = job(node_agent, "bad", container, backoffLimit=6, podFailurePolicy=policy)
    kube.kubectl("apply", "-n", ns, "-f", "-", input=manifest)

    failed = wait_job(kube, ns, "bad", "Failed")

    condition = next(c for c in failed["status"]["conditions"] if c["type"] == "Failed")
    assert condition["reason"] == "PodFailurePolicy"
    pods = job_pods(kube, ns, "bad")
    assert len(pods) == 1  # FailJob: no retry despite backoffLimit 6
    assert pods[0]["status"]["phase"] == "Failed"
    assert terminated(pods[0])["exitCode"] == 3
    assert terminated(pods[0])["reason"] == "Error"
    assert "bad spec" in node_agent.log_of(ns, "bad-")


@pytest.mark.cluster
def test_deleting_a_running_pod_terminates_its_process_gracefully(
    kube: Kube, node_agent: NodeAgent, kube_namespace: str
) -> None:
    ns = kube_namespace
    script = (
        "import signal, sys, time\n"
        "def stop(*_):\n"
        "    print('got SIGTERM', flush=True)\n"
        "    sys.exit(0)\n"
        "signal.signal(signal.SIGTERM, stop)\n"
        "print('sleeping', flush=True)\n"
        "time.sleep(600)\n"
    )
    kube.kubectl("apply", "-n", ns, "-f", "-", input=pod(node_agent, "sleeper", python_container(script)))
    proc = node_agent.wait_for_process(ns, "sleeper")
    wait_until("the pod to be Running", lambda: _phase(kube, ns, "sleeper") == "Running")
    wait_until("the process to start", lambda: "sleeping" in node_agent.log_of(ns, "sleeper"))

    started = time.monotonic()
    kube.kubectl("delete", "pod", "sleeper", "-n", ns, "--timeout=60s")
    elapsed = time.monotonic() - started

    assert not process_alive(proc.pid)
    assert "got SIGTERM" in node_agent.log_of(ns, "sleeper")
    assert kube.kubectl("get", "pod", "sleeper", "-n", ns, check=False).returncode != 0
    assert elapsed < 20, f"deletion took {elapsed:.1f} s although the process exits on SIGTERM"


@pytest.mark.cluster
def test_a_process_ignoring_sigterm_is_killed_after_the_grace_period(
    kube: Kube, node_agent: NodeAgent, kube_namespace: str
) -> None:
    ns = kube_namespace
    script = (
        "import signal, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "print('stubborn', flush=True)\n"
        "time.sleep(600)\n"
    )
    kube.kubectl("apply", "-n", ns, "-f", "-", input=pod(node_agent, "stubborn", python_container(script)))
    proc = node_agent.wait_for_process(ns, "stubborn")
    wait_until("the process to ignore SIGTERM", lambda: "stubborn" in node_agent.log_of(ns, "stubborn"))

    started = time.monotonic()
    kube.kubectl("delete", "pod", "stubborn", "-n", ns, "--grace-period=2", "--timeout=60s")
    elapsed = time.monotonic() - started

    assert not process_alive(proc.pid)
    assert 2 <= elapsed < 20


@pytest.mark.cluster
def test_suspending_a_job_stops_its_processes_and_removes_its_pods(
    kube: Kube, node_agent: NodeAgent, kube_namespace: str
) -> None:
    ns = kube_namespace
    container = python_container("import time; print('working', flush=True); time.sleep(600)")
    kube.kubectl("apply", "-n", ns, "-f", "-", input=job(node_agent, "pausable", container, completions=2))
    wait_until("both pods to run", lambda: len(node_agent.processes(ns)) == 2)
    pids = [p.pid for p in node_agent.processes(ns)]

    kube.kubectl("patch", "job", "pausable", "-n", ns, "--type=merge", "-p", json.dumps({"spec": {"suspend": True}}))

    wait_job(kube, ns, "pausable", "Suspended", timeout=60)
    wait_until("the pods to be removed", lambda: not job_pods(kube, ns, "pausable"), timeout=60)
    assert not any(process_alive(pid) for pid in pids)
    assert node_agent.processes(ns) == []


@pytest.mark.cluster
def test_killed_process_fails_the_pod_and_the_job_runs_a_replacement(
    kube: Kube, node_agent: NodeAgent, kube_namespace: str
) -> None:
    ns = kube_namespace
    kube.kubectl("create", "configmap", "ctl", "-n", ns, "--from-literal=mode=sleep")
    script = (
        "import time\n"
        "mode = open('/etc/ctl/mode').read()\n"
        "print('mode=' + mode, flush=True)\n"
        "if mode == 'sleep':\n"
        "    time.sleep(600)\n"
    )
    container = python_container(script, volumeMounts=[{"name": "ctl", "mountPath": "/etc/ctl"}])
    manifest = job(
        node_agent,
        "crashy",
        container,
        backoffLimit=2,
        pod={"volumes": [{"name": "ctl", "configMap": {"name": "ctl"}}]},
    )
    kube.kubectl("apply", "-n", ns, "-f", "-", input=manifest)
    first = node_agent.wait_for_process(ns, "crashy-")
    wait_until("the first pod to be Running", lambda: _phase(kube, ns, first.name) == "Running")
    # The replacement reads the ConfigMap afresh when it starts, and then finishes.
    kube.kubectl("patch", "configmap", "ctl", "-n", ns, "--type=merge", "-p", json.dumps({"data": {"mode": "done"}}))

    assert node_agent.kill_pod(ns, first.name) == first.pid  # a node crash: SIGKILL to the whole container

    wait_job(kube, ns, "crashy", "Complete", timeout=90)
    pods = {p["metadata"]["name"]: p for p in job_pods(kube, ns, "crashy")}
    assert pods[first.name]["status"]["phase"] == "Failed"
    assert terminated(pods[first.name])["exitCode"] == 137
    (replacement,) = (p for name, p in pods.items() if name != first.name)
    assert replacement["status"]["phase"] == "Succeeded"
    assert "mode=done" in node_agent.log_of(ns, replacement["metadata"]["name"])
    assert not process_alive(first.pid)


@pytest.mark.cluster
def test_pod_kubeconfig_authenticates_as_the_pods_service_account(
    kube: Kube, node_agent: NodeAgent, kube_namespace: str
) -> None:
    ns = kube_namespace
    rbac = [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "worker"}},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "visible"}, "data": {"k": "v"}},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": "read-visible"},
            "rules": [{"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["visible"], "verbs": ["get"]}],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": "read-visible"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "read-visible"},
            "subjects": [{"kind": "ServiceAccount", "name": "worker", "namespace": ns}],
        },
    ]
    kube.kubectl("apply", "-n", ns, "-f", "-", input={"apiVersion": "v1", "kind": "List", "items": rbac})
    script = (
        "from kubernetes import client, config\n"
        "from kubernetes.client.exceptions import ApiException\n"
        "try:\n"
        "    config.load_incluster_config()\n"
        "    print('in-cluster=yes')\n"
        "except config.ConfigException:\n"
        "    print('in-cluster=no')\n"
        "config.load_kube_config()\n"
        "review = client.AuthenticationV1Api().create_self_subject_review("
        "{'apiVersion': 'authentication.k8s.io/v1', 'kind': 'SelfSubjectReview'})\n"
        "print('user=' + review.status.user_info.username)\n"
        "ns = open('/var/run/secrets/kubernetes.io/serviceaccount/namespace').read()\n"
        "print('configmap=' + client.CoreV1Api().read_namespaced_config_map('visible', ns).data['k'])\n"
        "try:\n"
        "    client.CoreV1Api().list_namespaced_secret(ns)\n"
        "    print('secrets=allowed')\n"
        "except ApiException as err:\n"
        "    print(f'secrets={err.status}')\n"
    )
    manifest = pod(node_agent, "whoami", python_container(script), serviceAccountName="worker")
    kube.kubectl("apply", "-n", ns, "-f", "-", input=manifest)

    wait_until("the pod to finish", lambda: _phase(kube, ns, "whoami") in ("Succeeded", "Failed"), timeout=90)

    log = node_agent.log_of(ns, "whoami")
    assert _phase(kube, ns, "whoami") == "Succeeded", log
    assert "in-cluster=no" in log
    assert f"user=system:serviceaccount:{ns}:worker" in log
    assert "configmap=v" in log  # allowed by the Role
    assert "secrets=403" in log  # RBAC really applies: no client certificate, no admin
    kubeconfig = yaml.safe_load((node_agent.pod_dir(ns, "whoami") / "kubeconfig").read_text())
    assert set(kubeconfig["users"][0]["user"]) == {"token"}


@pytest.mark.cluster
def test_torchrun_pods_rendezvous_through_pod_0_on_the_jobs_own_port(
    kube: Kube, node_agent: NodeAgent, kube_namespace: str
) -> None:
    ns = kube_namespace
    allreduce = (
        "import os\n"
        "import torch\n"
        "import torch.distributed as dist\n"
        "dist.init_process_group('gloo')\n"
        "t = torch.tensor([dist.get_rank() + 1.0])\n"
        "dist.all_reduce(t)\n"
        'print(f"rank={dist.get_rank()} world={dist.get_world_size()} sum={t.item()}", flush=True)\n'
        "dist.destroy_process_group()\n"
    )
    kube.kubectl("create", "configmap", "script", "-n", ns, f"--from-literal=allreduce.py={allreduce}")
    container = {
        "name": "main",
        "image": "local/trainer",
        # As builders.launcher_args: pod 0 through the headless Service, the operator's fixed port.
        "command": ["torchrun"],
        "args": [
            "--nnodes=2",
            "--nproc-per-node=1",
            "--master-addr=ddp-0.ddp",
            "--master-port=29500",
            "--max-restarts=0",
            "/etc/script/allreduce.py",
        ],
        "env": [
            {"name": "PET_NODE_RANK", "valueFrom": {"fieldRef": {"fieldPath": COMPLETION_INDEX}}},
            {"name": "OMP_NUM_THREADS", "value": "1"},
        ],
        "volumeMounts": [{"name": "script", "mountPath": "/etc/script"}],
    }
    manifest = job(
        node_agent,
        "ddp",
        container,
        completions=2,
        pod={"subdomain": "ddp", "volumes": [{"name": "script", "configMap": {"name": "script"}}]},
    )
    kube.kubectl("apply", "-n", ns, "-f", "-", input=manifest)

    done = wait_job(kube, ns, "ddp", "Complete", timeout=240)

    log = node_agent.log_of(ns, "ddp-")
    for rank in (0, 1):
        assert f"rank={rank} world=2 sum=3.0" in log, log
    port = node_agent.master_port(done["metadata"]["uid"])
    for p in job_pods(kube, ns, "ddp"):
        argv = json.loads((node_agent.pod_dir(ns, p["metadata"]["name"]) / "command.json").read_text())["argv"]
        assert argv[0].endswith("/torchrun")
        assert "--master-addr=127.0.0.1" in argv
        assert f"--master-port={port}" in argv


@pytest.mark.cluster
def test_missing_secret_keeps_the_pod_waiting_until_it_exists(
    kube: Kube, node_agent: NodeAgent, kube_namespace: str
) -> None:
    ns = kube_namespace
    env = [{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "late", "key": "token"}}}]
    container = python_container("import os; print('token=' + os.environ['TOKEN'])", env=env)
    kube.kubectl("apply", "-n", ns, "-f", "-", input=pod(node_agent, "patient", container))

    def waiting_reason() -> str | None:
        statuses = kube.kubectl_json("get", "pod", "patient", "-n", ns)["status"].get("containerStatuses") or []
        return statuses[0]["state"].get("waiting", {}).get("reason") if statuses else None

    wait_until("CreateContainerConfigError", lambda: waiting_reason() == "CreateContainerConfigError")
    assert _phase(kube, ns, "patient") == "Pending"
    kube.kubectl("create", "secret", "generic", "late", "-n", ns, "--from-literal=token=finally")

    wait_until("the pod to succeed", lambda: _phase(kube, ns, "patient") == "Succeeded", timeout=60)
    assert "token=finally" in node_agent.log_of(ns, "patient")


@pytest.mark.cluster
def test_stopping_an_agent_fails_its_pods_as_disrupted_and_removes_its_node(
    kube: Kube, kube_namespace: str, tmp_path: Path
) -> None:
    ns = kube_namespace
    agent = NodeAgent(kube.kubeconfig, tmp_path, f"local-agent-{uuid.uuid4().hex[:6]}", stop_grace_seconds=2)
    agent.start()
    try:
        container = python_container("import time; print('up', flush=True); time.sleep(600)")
        kube.kubectl("apply", "-n", ns, "-f", "-", input=pod(agent, "doomed", container))
        proc = agent.wait_for_process(ns, "doomed")
    finally:
        agent.stop()

    assert not process_alive(proc.pid)
    doomed = kube.kubectl_json("get", "pod", "doomed", "-n", ns)
    assert doomed["status"]["phase"] == "Failed"
    assert terminated(doomed)["exitCode"] == 143  # SIGTERM, Python's default action
    disruption = next(c for c in doomed["status"]["conditions"] if c["type"] == "DisruptionTarget")
    assert disruption["status"] == "True"
    assert kube.kubectl("get", "node", agent.node_name, check=False).returncode != 0


@pytest.mark.cluster
def test_node_is_registered_ready_and_kept_alive(kube: Kube, node_agent: NodeAgent) -> None:
    node = kube.kubectl_json("get", "node", node_agent.node_name)
    assert "kwok.x-k8s.io/node" not in node["metadata"].get("annotations", {})
    assert node["metadata"]["labels"]["finetune.dev/test-node"] == "local"
    assert node["status"]["allocatable"]["nvidia.com/gpu"] == "0"
    ready = next(c for c in node["status"]["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True"
    assert {t["key"] for t in node["spec"].get("taints", [])} == {"finetune.dev/test-node"}  # no not-ready taint

    def renew_time() -> str:
        lease = kube.kubectl_json("get", "lease", node_agent.node_name, "-n", "kube-node-lease")
        assert lease["spec"]["holderIdentity"] == node_agent.node_name
        return str(lease["spec"]["renewTime"])

    before = renew_time()
    wait_until(
        "the node lease to be renewed", lambda: renew_time() != before, timeout=node_agent.heartbeat_seconds + 10
    )


def _phase(kube: Kube, namespace: str, name: str) -> str | None:
    result = kube.kubectl("get", "pod", name, "-n", namespace, "-o", "jsonpath={.status.phase}", check=False)
    return result.stdout if result.returncode == 0 else None
