"""The dashboard's committed browser bundle is what web/dashboard/build.sh makes from the sources and lockfile.

The page loads only from its own server: the HTML names no other origin, and the bundle has no
URL it would fetch from.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STATIC = ROOT / "operator" / "finetune_dashboard" / "static"
BUILD = ROOT / "web" / "dashboard" / "build.sh"


def test_the_committed_bundle_is_built_from_the_current_sources(tmp_path: Path) -> None:
    assert shutil.which("npm") and shutil.which("node"), "Node.js and npm are needed to rebuild the bundle"
    out = tmp_path / "app.js"
    subprocess.run([str(BUILD), str(out)], check=True, timeout=300, capture_output=True)
    assert out.read_bytes() == (STATIC / "app.js").read_bytes(), "stale bundle: run web/dashboard/build.sh"


def test_the_page_loads_nothing_from_elsewhere() -> None:
    html = (STATIC / "index.html").read_text()
    assert re.findall(r'(?:src|href)="([^"]+)"', html) == ["data:,", "static/style.css", "#/", "static/app.js"]
    bundle = (STATIC / "app.js").read_text()
    assert not re.search(r"""fetch\(\s*["'`]https?:""", bundle)
