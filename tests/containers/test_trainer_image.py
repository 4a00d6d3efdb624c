"""The trainer image, built here from trainer_image/Dockerfile: its stack, and a real run as the chart runs it.

The run mirrors the trainer pod the operator renders: non-root uid 1000, read-only root
filesystem with no /tmp, a writable /workspace (the pod's emptyDir) and /dev/shm, no network.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import yaml

from tests.containers.conftest import ROOT, ULIMITS, podman
from tests.trainer import tiny

pytestmark = pytest.mark.containers

STACK = ["torch", "transformers", "peft", "trl", "accelerate", "bitsandbytes", "deepspeed"]


def pinned_versions() -> dict[str, str]:
    """The versions the image must hold: constraints.txt, and the Dockerfile's DeepSpeed pin."""
    pins = dict(line.split("==", 1) for line in (ROOT / "constraints.txt").read_text().splitlines() if "==" in line)
    wanted = {name: pins[name] for name in STACK if name in pins}
    match = re.search(r'"deepspeed==([^"]+)"', (ROOT / "trainer_image" / "Dockerfile").read_text())
    assert match, "trainer_image/Dockerfile no longer pins deepspeed"
    wanted["deepspeed"] = match.group(1)
    return wanted


def run_in(
    image: str,
    *args: str,
    volumes: dict[Path, str] | None = None,
    entrypoint: str | None = None,
    timeout: float = 600,
) -> subprocess.CompletedProcess[str]:
    """podman run IMAGE ARGS... as the trainer pod runs: uid 1000, read-only root without /tmp, offline,
    /workspace (the pod's emptyDir: a fresh host folder) and /dev/shm writable, VOLUMES bind-mounted."""
    workspace = Path(tempfile.mkdtemp(prefix="ftj-workspace-"))
    workspace.chmod(0o777)  # an emptyDir is writable by the pod's fsGroup; here by anyone
    options = ["--network=none", "--read-only", "--read-only-tmpfs=false", "--user", "1000:1000"]
    options += ["-v", f"{workspace}:/workspace:rw", "--shm-size=1g", *ULIMITS]
    options += ["-e", "HF_HUB_OFFLINE=1", "-e", "HF_DATASETS_OFFLINE=1"]
    options += [arg for host, where in (volumes or {}).items() for arg in ("-v", f"{host}:{where}")]
    if entrypoint:
        options += ["--entrypoint", entrypoint]
    try:
        return podman("run", "--rm", *options, image, *args, timeout=timeout)
    finally:
        shutil.rmtree(workspace, ignore_errors=True)


def test_image_holds_the_pinned_stack(trainer_image: str) -> None:
    code = f"import importlib, json; print(json.dumps({{m: importlib.import_module(m).__version__ for m in {STACK}}}))"
    done = run_in(trainer_image, "--help")  # the entry point answers (torchrun's usage)
    assert done.returncode == 0 and "--nproc-per-node" in done.stdout, done.stderr[-2000:]
    done = run_in(trainer_image, "-c", code, entrypoint="python")
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert {name: version.split("+")[0] for name, version in found.items()} == pinned_versions()


def test_pip_check_finds_no_broken_requirement(trainer_image: str) -> None:
    done = run_in(trainer_image, "check", entrypoint="pip")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "No broken requirements found" in done.stdout
    # DeepSpeed's own dependencies are pinned too: in the Dockerfile where constraints.txt cannot.
    dockerfile = (ROOT / "trainer_image" / "Dockerfile").read_text()
    pins = dict(re.findall(r'"([A-Za-z0-9_.-]+)==([^"]+)"', dockerfile))
    assert {"deepspeed", "hjson", "ninja", "py-cpuinfo", "msgpack", "einops"} <= set(pins)
    frozen = run_in(trainer_image, "freeze", "--all", entrypoint="pip")  # --all: pip itself is pinned too
    installed = dict(line.split("==", 1) for line in frozen.stdout.splitlines() if "==" in line)
    assert {name: installed.get(name) for name in pins} == pins


def test_runs_as_non_root_on_a_read_only_root(trainer_image: str) -> None:
    probe = "import os, pathlib; print(os.getuid()); pathlib.Path('/opt/venv/probe').touch()"
    done = run_in(trainer_image, "-c", probe, entrypoint="python")
    assert done.stdout.strip() == "1000"
    assert done.returncode != 0 and "Read-only file system" in done.stderr


@pytest.mark.slow
def test_validate_and_a_tiny_training_run_inside_the_image(trainer_image: str, tmp_path: Path) -> None:
    job = tmp_path / "job"
    tiny.build_tiny_bert(job / "model")
    tiny.write_jsonl(job / "train.jsonl", tiny.sentiment_rows(48))
    spec = tiny.spec_dict(
        Path("/job/model"),
        {"type": "sequence-classification", "labels": ["neg", "pos"]},
        {"train": "/job/train.jsonl"},
        maxSteps=6,
        learningRate=5e-3,
        evalStrategy="no",
        saveStrategy="no",
        loadBestModelAtEnd=False,
    )
    manifest = {"apiVersion": "finetune.dev/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": "t"}, "spec": spec}
    (job / "job.yaml").write_text(yaml.safe_dump(manifest))
    for path in job.rglob("*"):  # safetensors writes 0600: let the image's uid read it
        path.chmod(0o755 if path.is_dir() else 0o644)
    out = tmp_path / "out"
    out.mkdir(mode=0o777)
    out.chmod(0o777)  # the image's uid 1000 writes here
    volumes = {job: "/job:ro", out: "/out:rw"}

    validate = run_in(trainer_image, "-m", "finetune_trainer", "validate", "--config", "/job/job.yaml",
                      volumes=volumes, entrypoint="python")  # fmt: skip
    assert validate.returncode == 0, validate.stderr[-3000:]
    assert validate.stdout.startswith("OK: sequence-classification with full; train 48 rows")

    # The pod's command: torchrun through the image's entry point, one process, gloo on CPU.
    run = run_in(
        trainer_image, "--standalone", "--nproc-per-node=1", "-m", "finetune_trainer", "run",
        "--config", "/job/job.yaml", "--output-dir", "/out/run", volumes=volumes, timeout=900,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-5000:]
    printed = json.loads(run.stdout.strip().splitlines()[-1])
    assert printed["global_step"] == 6
    assert json.loads((out / "run" / "metrics.json").read_text()) == printed
    assert any((out / "run").rglob("*.safetensors")), sorted(p.name for p in (out / "run").iterdir())
