"""kubectl finetune's pure parts: tables, bars, charts, comparisons, log prefixes, the command line."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tomllib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubectl_finetune.compare import compare, render_compare
from kubectl_finetune.formatting import duration, progress_bar, strip_ansi
from kubectl_finetune.jobs import list_row, render_list, render_status, status_summary
from kubectl_finetune.kube import CommandError
from kubectl_finetune.logs import choose_pods, pod_rank, prefix_lines, split_stream
from kubectl_finetune.main import build_parser, main
from kubectl_finetune.plot import curves, render_chart

NOW = datetime(2026, 12, 4, 12, 0, 0, tzinfo=UTC)


def job(name: str, lr: float = 2e-5, *, phase: str = "Running", **status: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": "team-a", "creationTimestamp": "2026-12-04T10:55:00Z", "uid": "u"},
        "spec": {
            "model": {"name": "bert-base-uncased"},
            "task": {"type": "sequence-classification", "labels": ["neg", "pos"]},
            "method": {"type": "lora", "lora": {"r": 8}},
            "training": {"epochs": 3, "learningRate": lr},
            "output": {"s3": {"bucket": "models"}},
        },
        "status": {"phase": phase, **status},
    }


def test_progress_bar_and_durations() -> None:
    assert progress_bar(46.7, width=10) == "[#####.....]  47%"
    assert progress_bar(None, width=4) == "[    ]    -"
    assert progress_bar(130, width=4) == "[####] 100%"
    assert [duration(s) for s in (5, 125, 3600 * 3 + 300, 86400 * 2 + 3600 * 4)] == ["5s", "2m5s", "3h5m", "2d4h"]


def test_the_list_shows_phase_progress_step_loss_eta_and_age() -> None:
    running = job("a", progress={"step": 420, "totalSteps": 900, "percent": 46.7, "loss": 0.31234, "etaSeconds": 610})
    done = job("b", phase="Succeeded", progress={"step": 900, "totalSteps": 900, "percent": 100.0, "etaSeconds": 0})
    rows = [list_row(running, NOW), list_row(done, NOW)]
    assert rows[0]["age"] == "1h5m" and rows[1]["etaSeconds"] is None  # no ETA once finished
    text = render_list(rows, all_namespaces=True, tty=False)
    header, first, second = text.splitlines()
    assert header.split() == ["NAMESPACE", "NAME", "PHASE", "PROGRESS", "STEP", "LOSS", "ETA", "AGE"]
    assert first.split() == [
        "team-a",
        "a",
        "Running",
        "[#########...........]",
        "47%",
        "420/900",
        "0.3123",
        "10m",
        "1h5m",
    ]
    assert "100%" in second and "900/900" in second
    coloured = render_list(rows, all_namespaces=False, tty=True)
    assert "\033[36mRunning\033[0m" in coloured
    # Colour codes do not shift the columns.
    assert [len(line) for line in strip_ansi(coloured).splitlines()][1:] == [
        len(line) for line in render_list(rows, all_namespaces=False, tty=False).splitlines()
    ][1:]


def test_status_shows_conditions_events_topology_estimate_and_artifacts() -> None:
    j = job(
        "a",
        topology="2x8",
        conditions=[
            {"type": "Running", "status": "True", "reason": "PodsRunning", "lastTransitionTime": "2026-12-04T11:58:00Z"}
        ],
        memoryEstimate={"verdict": "FitsGPU", "message": "31.2 GiB of 80 GiB per GPU"},
        artifacts={"model": "s3://models/team-a/a/final/"},
        parameters={"trainable": 1000, "total": 110000},
    )
    events = [
        {"type": "Normal", "reason": "Created", "message": "Job a created", "lastTimestamp": "2026-12-04T11:59:00Z"}
    ]
    summary = status_summary(j, events)
    text = render_status(summary, tty=False, now=NOW)
    assert "2x8" in text and "FitsGPU: 31.2 GiB of 80 GiB per GPU" in text
    assert "model: s3://models/team-a/a/final/" in text and "1,000 trainable of 110,000" in text
    assert any(line.split()[:4] == ["Running", "True", "PodsRunning", "2m"] for line in text.splitlines())
    assert any(line.split()[:3] == ["Normal", "Created", "1m"] for line in text.splitlines())


def test_compare_shows_only_what_differs_and_the_final_metrics() -> None:
    a = job("a", 2e-5, phase="Succeeded", metrics={"eval_accuracy": 0.91}, progress={"step": 30, "loss": 0.2})
    b = job("b", 1e-4, phase="Succeeded", metrics={"eval_accuracy": 0.87}, progress={"step": 30, "loss": 0.3})
    b["spec"]["method"]["lora"]["alpha"] = 32
    result = compare([a, b])
    assert result["parameters"] == {
        "method.lora.alpha": {"a": None, "b": 32},
        "training.learningRate": {"a": 2e-5, "b": 1e-4},
    }
    assert result["metrics"]["eval_accuracy"] == {"a": 0.91, "b": 0.87}
    text = render_compare(result)
    rows = [line.split() for line in text.splitlines()]
    assert ["training.learningRate", "2e-05", "0.0001"] in rows and ["eval_accuracy", "0.91", "0.87"] in rows


def test_the_chart_puts_each_point_where_its_value_is() -> None:
    lines = render_chart("loss", [("a", [(0, 1.0), (10, 0.0)]), ("b", [(5, 0.5)])], width=11, height=5)
    grid = [line.split("|", 1)[1] for line in lines[1:6]]
    assert grid[0][0] == "*" and grid[4][10] == "*" and grid[2][5] == "o"
    assert lines[1].split("|")[0].strip() == "1" and lines[5].split("|")[0].strip() == "0"
    assert "* a" in lines[-1] and "o b" in lines[-1]


def test_curves_come_from_status_history() -> None:
    j = job(
        "a",
        history={
            "train": [{"step": 1, "firstStep": 1, "loss": 0.9, "learningRate": 1e-5}],
            "eval": [{"step": 4, "loss": 0.7, "metrics": {"accuracy": 0.8}}],
        },
    )
    assert curves(j) == {
        "train loss": [(1, 0.9)],
        "learning rate": [(1, 1e-5)],
        "eval loss": [(4, 0.7)],
        "eval accuracy": [(4, 0.8)],
    }


def pod(name: str, rank: int | None, created: str = "2026-12-04T11:00:00Z") -> dict[str, Any]:
    annotations = {} if rank is None else {"batch.kubernetes.io/job-completion-index": str(rank)}
    return {"metadata": {"name": name, "annotations": annotations, "creationTimestamp": created}}


def test_logs_pick_the_newest_pod_of_each_rank_and_prefix_lines() -> None:
    pods = [pod("j-0-a", 0), pod("j-1-a", 1), pod("j-1-b", 1, "2026-12-04T11:30:00Z"), pod("other", None)]
    assert pod_rank(pods[1]) == 1 and pod_rank(pods[3]) is None
    assert [(r, p["metadata"]["name"]) for r, p in choose_pods(pods, None, every=True)] == [(0, "j-0-a"), (1, "j-1-b")]
    assert [p["metadata"]["name"] for _, p in choose_pods(pods, 1, every=False)] == ["j-1-b"]
    assert [p["metadata"]["name"] for _, p in choose_pods(pods, None, every=False)] == ["j-0-a"]
    with pytest.raises(CommandError, match="no pod of rank 3 \\(ranks with pods: 0, 1\\)"):
        choose_pods(pods, 3, every=False)
    assert prefix_lines(1, "step 1\nstep 2\n") == ["[rank 1] step 1", "[rank 1] step 2"]
    assert list(split_stream([b"one\ntw", b"o\nthr", b"ee"])) == ["one", "two", "three"]


def test_usage_errors_exit_2_and_command_errors_exit_1(capsys: pytest.CaptureFixture[str], tmp_path: Any) -> None:
    with pytest.raises(SystemExit) as usage:
        main(["list", "-o", "xml"])
    assert usage.value.code == 2 and "'xml' is not supported" in capsys.readouterr().err
    with pytest.raises(SystemExit) as missing:
        main(["logs", "job", "--rank", "1", "--all"])
    assert missing.value.code == 2
    assert main(["--kubeconfig", str(tmp_path / "none"), "list"]) == 1
    assert "error: cannot load the kubeconfig" in capsys.readouterr().err


def test_flags_go_before_or_after_the_command() -> None:
    parser = build_parser()
    before = parser.parse_args(["-n", "x", "--context", "c", "status", "job"])
    after = parser.parse_args(["status", "job", "-n", "y"])
    assert (before.namespace, before.context, after.namespace, after.context) == ("x", "c", "y", None)


def test_the_krew_manifest_matches_its_archive_and_kubectl_finds_the_plugin(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[2]
    manifest = yaml.safe_load((root / "krew/finetune.yaml").read_text())
    version = tomllib.loads((root / "pyproject.toml").read_text())["project"]["version"]
    assert manifest["metadata"]["name"] == "finetune" and manifest["spec"]["version"] == f"v{version}"
    check = subprocess.run([sys.executable, "krew/archive.py", "--out", str(tmp_path)], cwd=root, check=False)
    assert check.returncode == 0, "krew/finetune.yaml's sha256 is not the archive's: run python krew/archive.py --write"
    with tarfile.open(tmp_path / "kubectl-finetune.tar.gz") as tar:
        assert tar.getmember(manifest["spec"]["platforms"][0]["bin"]).mode == 0o755
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("no kubectl on PATH")
    env = {
        **os.environ,
        "PATH": f"{root / 'krew'}:{os.environ['PATH']}",
        "KUBECTL_FINETUNE_PYTHON": sys.executable,
        "PYTHONPATH": os.pathsep.join(sys.path),
    }
    shown = subprocess.run(
        [kubectl, "finetune", "list", "--help"], env=env, capture_output=True, text=True, check=False
    )
    assert shown.returncode == 0 and "usage: kubectl finetune list" in shown.stdout
    bad = subprocess.run([kubectl, "finetune", "plot"], env=env, capture_output=True, text=True, check=False)
    assert bad.returncode == 2 and "the following arguments are required: NAME" in bad.stderr
