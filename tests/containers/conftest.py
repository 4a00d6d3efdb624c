"""Fixtures of the image tests: the images built by scripts/images.sh (cached; a code change rebuilds one layer)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
IMAGES = ROOT / "scripts" / "images.sh"
PODMAN_ENV = {**os.environ, "CONTAINERS_CONF": str(ROOT / "scripts" / "containers.conf")}
# This machine's rlimits (runc refuses more than its PID 1 has); the chart sets none.
ULIMITS = ["--ulimit", "nofile=20000:20000", "--ulimit", "nproc=32768:32768"]


def build(target: str) -> str:
    """Build one image with scripts/images.sh and return its reference."""
    done = subprocess.run([str(IMAGES), target], capture_output=True, text=True, timeout=3600, env=PODMAN_ENV)
    assert done.returncode == 0, f"scripts/images.sh {target} failed:\n{done.stderr[-5000:]}"
    return ref_of(done.stdout)


def ref_of(printed: str) -> str:
    """The image id from images.sh's "<name> <id> <size> <seconds>" line."""
    return printed.strip().splitlines()[-1].split()[1]


def podman(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout, env=PODMAN_ENV)


@pytest.fixture(scope="session")
def trainer_image() -> str:
    return build("trainer")


@pytest.fixture(scope="session")
def operator_image() -> str:
    return build("operator")
