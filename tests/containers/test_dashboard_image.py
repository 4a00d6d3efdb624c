"""The dashboard ships in the operator image: its command, its page and its bundled script are there."""

from __future__ import annotations

import hashlib

import pytest

from tests.containers.conftest import ROOT
from tests.containers.test_operator_image import run_in

pytestmark = pytest.mark.containers


def test_operator_image_carries_the_dashboard(operator_image: str) -> None:
    rc, out, err = run_in(operator_image, "--help", entrypoint="finetune-dashboard")
    assert rc == 0 and "--all-namespaces" in out, out + err
    code = (
        "import hashlib; from finetune_dashboard.server import STATIC;"
        "print(*(hashlib.sha256((STATIC / n).read_bytes()).hexdigest() for n in ('index.html', 'app.js')))"
    )
    rc, out, err = run_in(operator_image, "-c", code, entrypoint="python")
    assert rc == 0, err[-3000:]
    static = ROOT / "operator" / "finetune_dashboard" / "static"
    expected = [hashlib.sha256((static / n).read_bytes()).hexdigest() for n in ("index.html", "app.js")]
    assert out.split() == expected
