"""The operator image, built here from operator/Dockerfile: no torch, its pins, non-root on a read-only root."""

from __future__ import annotations

import json

import pytest

from tests.containers.conftest import ROOT, ULIMITS, podman

pytestmark = pytest.mark.containers


def run_in(image: str, *args: str, entrypoint: str | None = None) -> tuple[int, str, str]:
    """As the chart runs it: uid 65532, read-only root, no network."""
    options = ["--network=none", "--read-only", "--user", "65532:65532", *ULIMITS]
    if entrypoint:
        options += ["--entrypoint", entrypoint]
    done = podman("run", "--rm", *options, image, *args)
    return done.returncode, done.stdout, done.stderr


def test_operator_image_holds_its_pins_and_no_torch(operator_image: str) -> None:
    pins = dict(line.split("==", 1) for line in (ROOT / "constraints.txt").read_text().splitlines() if "==" in line)
    names = ["kopf", "kubernetes", "prometheus_client", "pydantic", "PyYAML"]
    code = (
        "import importlib.metadata as m, importlib.util as u, json, finetune_operator;"
        f"print(json.dumps({{'torch': u.find_spec('torch') is not None, **{{n: m.version(n) for n in {names}}}}}))"
    )
    rc, out, err = run_in(operator_image, "-c", code, entrypoint="python")
    assert rc == 0, err[-3000:]
    found = json.loads(out.strip().splitlines()[-1])
    assert found.pop("torch") is False
    assert found == {name: pins[name] for name in names}


def test_operator_image_pip_check_and_entry_point(operator_image: str) -> None:
    rc, out, err = run_in(operator_image, "check", entrypoint="pip")
    assert rc == 0 and "No broken requirements found" in out, out + err
    rc, out, err = run_in(operator_image, "--help")
    assert rc == 0 and "--all-namespaces" in out, out + err
