"""Run the trainer's CLI on a generated case and record its :class:`Outcome`.

In-process (``finetune_trainer.cli.main``) for speed; an exception that escapes ``main`` is recorded as
the traceback a process would print. A sample also goes through a real subprocess, where a traceback
from anywhere (an import, a thread, interpreter exit) shows up.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import traceback
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import yaml

from finetune_trainer.cli import main
from tests.fuzz.oracle import Outcome

REPO = Path(__file__).resolve().parents[2]


def listing(directory: Path | None) -> frozenset[str]:
    """Every file under directory, relative to it (empty when it does not exist)."""
    if directory is None or not directory.exists():
        return frozenset()
    return frozenset(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file())


def write_config(path: Path, spec: Any) -> Path:
    """A FineTuneJob manifest around spec (any value: generated specs need not be mappings)."""
    doc = {"apiVersion": "finetune.dev/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": "fuzz"}, "spec": spec}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(doc, allow_unicode=True))
    return path


def cli_in_process(argv: list[str], output_dir: Path | None = None) -> Outcome:
    """Run ``finetune_trainer.cli.main(argv)`` here, capturing what it prints."""
    before = listing(output_dir)
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 1
        except Exception:
            traceback.print_exc()
            code = 1
    return Outcome(code, err.getvalue(), out.getvalue(), before, listing(output_dir))


def cli_subprocess(argv: list[str], output_dir: Path | None = None, timeout: float = 300) -> Outcome:
    """Run ``python -m finetune_trainer argv`` as a process, offline."""
    before = listing(output_dir)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(
        [sys.executable, "-m", "finetune_trainer", *argv],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return Outcome(done.returncode, done.stderr, done.stdout, before, listing(output_dir))


def validate(config: Path) -> Outcome:
    """``finetune_trainer validate --config config``, in process."""
    return cli_in_process(["validate", "--config", str(config)])


def run(config: Path, output_dir: Path, *, subprocess_: bool = False) -> Outcome:
    """``finetune_trainer run --config config --output-dir output_dir``."""
    argv = ["run", "--config", str(config), "--output-dir", str(output_dir)]
    return cli_subprocess(argv, output_dir) if subprocess_ else cli_in_process(argv, output_dir)
