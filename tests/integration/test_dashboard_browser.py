"""The web dashboard in a real headless Chromium, against the local API server.

The dashboard runs as a host process with the test's kubeconfig; Chromium (Debian's ``chromium``
and ``chromium-driver``, driven by selenium; scripts/setup.sh installs them) loads its page. One
browser session walks through: the job list shows the running jobs, the curve of one job gains
points while its page stays open, and the comparison overlays two runs.

The training is simulated by patching ``status.history`` and ``status.progress`` through the status
subresource with merge patches, as the trainer's status reporter writes them (no operator watches
this namespace, so the status is the test's alone). Screenshots land in the test's tmp dir; with
``FTJ_UPDATE_SCREENSHOT=1`` the job page's one is also copied to docs/dashboard.png for the README.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cluster.fixture import Kube
from tests.integration.operator_process import ROOT, free_port, wait_for

pytestmark = pytest.mark.cluster
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
DEMO = ROOT / "examples" / "demo" / "finetunejob.yaml"
TOTAL_STEPS = 40
GIB = 1024**3
ESTIMATE: dict[str, Any] = {
    "verdict": "FitsGPU",
    "gpuMemoryBytes": 80 * GIB,
    "perGpu": {
        "weights": GIB // 2,
        "gradients": GIB // 4,
        "optimizerStates": GIB // 2,
        "activations": 3 * GIB // 2,
        "overhead": GIB // 4,
        "total": 3 * GIB,
    },
    "message": "3.0 GiB of 80 GiB per GPU",
}


def train_point(step: int, lr0: float) -> dict[str, Any]:
    """A history point as the trainer writes it: a loss falling faster with a higher rate, which decays linearly."""
    return {
        "step": step,
        "firstStep": step,
        "loss": round(0.7 * math.exp(-step * lr0 / 0.015) + 0.05, 6),
        "learningRate": lr0 * (1 - step / TOTAL_STEPS),
        "tokensPerSecond": 5000.0 + step,
        "samplesPerSecond": 40.0 + step / 10,
    }


def report(kube: Kube, ns: str, name: str, lr0: float, steps: list[int], evals: list[int]) -> dict[str, Any]:
    """Patch the status as the trainer's reporter does; return the history written."""
    history: dict[str, Any] = {
        "maxPoints": 256,
        "train": [train_point(s, lr0) for s in steps],
        "eval": [
            {"step": s, "epoch": s / 20, "loss": 0.6 - s * lr0 * 10, "metrics": {"accuracy": 0.5 + s * lr0 * 10}}
            for s in evals
        ],
    }
    last = history["train"][-1]
    status = {
        "phase": "Running",
        "progress": {
            "step": last["step"],
            "totalSteps": TOTAL_STEPS,
            "percent": 100 * last["step"] / TOTAL_STEPS,
            "loss": last["loss"],
            "learningRate": last["learningRate"],
        },
        "history": history,
        "memoryEstimate": ESTIMATE,
        "artifacts": {"latestCheckpoint": f"s3://models/runs/{ns}/{name}/checkpoints/checkpoint-{last['step']}/"},
    }
    kube.kubectl(
        "patch", "ftj", name, "-n", ns, "--subresource=status", "--type=merge", "-p", json.dumps({"status": status})
    )
    return history


def event(ns: str, name: str, reason: str, message: str) -> dict[str, Any]:
    """A core/v1 Event about the FineTuneJob, as the operator's kopf.info makes them."""
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": f"{name}.{uuid.uuid4().hex[:8]}", "namespace": ns},
        "involvedObject": {"apiVersion": "finetune.dev/v1alpha1", "kind": "FineTuneJob", "name": name, "namespace": ns},
        "reason": reason,
        "message": message,
        "type": "Normal",
        "source": {"component": "test"},
    }


@pytest.fixture(scope="module")
def namespace(crds: Kube) -> Iterator[str]:
    # Not test-*: the session's operator (watching test-*) must leave these jobs' status alone.
    name = f"dashboard-{uuid.uuid4().hex[:6]}"
    crds.kubectl("create", "namespace", name)
    yield name
    crds.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture(scope="module")
def dashboard(crds: Kube, namespace: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``finetune-dashboard`` as a host process watching the namespace; yields its base URL."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("dashboard") / "dashboard.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "finetune_dashboard", f"--namespace={namespace}", f"--port={port}"],
            env={**os.environ, **crds.env, "KUBECONFIG": str(crds.kubeconfig)},
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )

    def healthy() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"finetune-dashboard exited with {proc.returncode}:\n{log_path.read_text()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    try:
        wait_for("the dashboard's /healthz", healthy, timeout=30)
        yield f"http://127.0.0.1:{port}/"
    finally:
        proc.terminate()
        proc.wait(15)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    for path in (CHROMIUM, CHROMEDRIVER):
        assert Path(path).exists(), f"{path} is missing: scripts/setup.sh installs chromium and chromium-driver"
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    options.add_argument("--window-size=1400,1100")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def _points(driver: Any, canvas: str, what: str = "points") -> dict[str, Any]:
    raw = driver.execute_script(f"const c = document.getElementById('{canvas}'); return c && c.dataset.{what};")
    return dict(json.loads(raw)) if raw else {}


def _row(driver: Any, key: str) -> dict[str, str] | None:
    return driver.execute_script(
        "const r = document.querySelector(`tr[data-key='${arguments[0]}']`);"
        "return r && {phase: r.dataset.phase, step: r.dataset.step, text: r.innerText};",
        key,
    )


def _severe_logs(driver: Any) -> list[dict[str, Any]]:
    return [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def test_list_live_curve_and_comparison_in_chromium(
    crds: Kube, namespace: str, dashboard: str, browser: Any, tmp_path: Path
) -> None:
    kube = crds
    spec = yaml.safe_load(DEMO.read_text())
    runs = {"run-a": 1.0e-3, "run-b": 3.0e-4}
    for name, lr in runs.items():
        job = {**spec, "metadata": {"name": name, "namespace": namespace}}
        job["spec"] = {**spec["spec"], "training": {**spec["spec"]["training"], "learningRate": lr}}
        kube.kubectl("apply", "-f", "-", input=job)
    report(kube, namespace, "run-a", runs["run-a"], [5, 10], [])
    history_b = report(kube, namespace, "run-b", runs["run-b"], [5, 10, 15, 20, 25, 30], [20])

    # The list: both jobs, Running, and a later status change arrives without a reload.
    browser.get(dashboard)
    key_a, key_b = f"{namespace}/run-a", f"{namespace}/run-b"
    wait_for("run-a listed as Running", lambda: (_row(browser, key_a) or {}).get("phase") == "Running", timeout=20)
    row_b = wait_for("run-b listed", lambda: _row(browser, key_b), timeout=20)
    assert row_b["step"] == "30" and f"30/{TOTAL_STEPS}" in row_b["text"]
    # The loss column: the last point's loss (0.434168), to 4 significant digits.
    assert f"{history_b['train'][-1]['loss']:.4g}" in row_b["text"]
    report(kube, namespace, "run-a", runs["run-a"], [5, 10, 15], [])
    wait_for("run-a's new step in the list", lambda: (_row(browser, key_a) or {}).get("step") == "15", timeout=20)
    browser.save_screenshot(str(tmp_path / "dashboard-list.png"))

    # One job: the loss curve gains points as training goes, while the page stays open.
    kube.kubectl("apply", "-f", "-", input=event(namespace, "run-a", "CheckpointSaved", "checkpoint-10 uploaded"))
    browser.get(f"{dashboard}#/job/{key_a}")
    wait_for("run-a's 3 loss points", lambda: _points(browser, "chart-loss").get("train_loss") == 3, timeout=20)
    history_a = None
    for steps in ([5, 10, 15, 20], [5, 10, 15, 20, 25, 30, 35]):
        history_a = report(kube, namespace, "run-a", runs["run-a"], steps, [20, 35] if 35 in steps else [20])
        count = len(steps)
        wait_for(
            f"{count} loss points drawn",
            lambda n=count: _points(browser, "chart-loss").get("train_loss") == n,
            timeout=20,
        )
    assert history_a is not None
    last = _points(browser, "chart-loss", "last")
    assert last["train_loss"] == [35, history_a["train"][-1]["loss"]]
    assert last["eval_loss"] == [35, history_a["eval"][-1]["loss"]]
    assert _points(browser, "chart-lr", "last")["learning_rate"] == [35, history_a["train"][-1]["learningRate"]]
    assert _points(browser, "chart-metrics")["eval_accuracy"] == 2
    page = browser.find_element("id", "job").text
    assert "35/40" in page and "1x0" in page  # progress and topology cards
    # The estimate's bytes in binary units (3 GiB total, 1.5 GiB activations, 80 GiB GPU), the checkpoint URI.
    estimate = browser.find_element("id", "estimate").text
    assert "FitsGPU" in estimate
    assert f"{ESTIMATE['perGpu']['total'] / GIB:.1f} GiB" in estimate
    assert f"{ESTIMATE['perGpu']['activations'] / GIB:.1f} GiB" in estimate
    assert "80.0 GiB" in estimate
    assert f"s3://models/runs/{namespace}/run-a/checkpoints/checkpoint-35/" in page
    events = browser.find_element("id", "events").text
    assert "CheckpointSaved" in events and "checkpoint-10 uploaded" in events
    # No pod ran (nothing schedules these jobs): the log endpoint says so instead of failing.
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(f"{dashboard}api/jobs/{key_a}/log?rank=0", timeout=10)
    assert missing.value.code == 404 and b"no pod of rank 0" in missing.value.read()
    browser.save_screenshot(str(tmp_path / "dashboard-job.png"))
    if os.environ.get("FTJ_UPDATE_SCREENSHOT"):
        shutil.copy(tmp_path / "dashboard-job.png", ROOT / "docs" / "dashboard.png")

    # The comparison, reached as a person does: tick two jobs, press Compare.
    browser.get(dashboard)
    for key in (key_a, key_b):
        box = wait_for(
            f"{key}'s checkbox", lambda k=key: browser.find_element("css selector", f"tr[data-key='{k}'] input")
        )
        box.click()
    browser.find_element("id", "compare").click()
    overlay = wait_for(
        "both runs overlaid", lambda: (p := _points(browser, "chart-compare-train")) and len(p) == 2 and p, timeout=20
    )
    assert overlay == {key_a: 7, key_b: 6}
    assert _points(browser, "chart-compare-eval") == {key_a: 2, key_b: 1}
    differing = browser.find_element("id", "differing").text
    assert "training.learningRate" in differing and "0.001" in differing and "0.0003" in differing
    browser.save_screenshot(str(tmp_path / "dashboard-compare.png"))

    # A deleted job leaves the list without a reload.
    browser.get(dashboard)
    wait_for("run-b listed", lambda: _row(browser, key_b), timeout=20)
    kube.kubectl("delete", "ftj", "run-b", "-n", namespace)
    wait_for("run-b gone from the list", lambda: _row(browser, key_b) is None and _row(browser, key_a), timeout=20)
    assert _severe_logs(browser) == []
