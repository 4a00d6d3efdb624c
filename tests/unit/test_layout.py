"""The layout a newcomer follows: the README's path of one job, and modules small enough to read."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TRAINER = ROOT / "trainer_image" / "finetune_trainer"
MAX_LINES = 440  # "about 400"
# Modules allowed over the limit, each named here so that no new one grows past it unnoticed.
OVERSIZED: set[str] = set()


def _path_of_one_job() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = text.split("## Layout", 1)[1].split("```", 2)[1]
    return [m.group(1) for m in re.finditer(r"^(\S+)\s+\d+ ", block, re.M)]


def test_the_readme_follows_one_job_through_at_most_twelve_files_that_exist() -> None:
    files = _path_of_one_job()
    assert 0 < len(files) <= 12
    for name in files:
        if "<" in name:  # tasks/<t>.py: a unit folder
            assert (ROOT / name.split("<", 1)[0]).is_dir(), name
        else:
            assert (ROOT / name).is_file(), name


def test_no_trainer_module_is_over_about_400_lines() -> None:
    sizes = {
        str(p.relative_to(TRAINER)): len(p.read_text().splitlines())
        for p in TRAINER.rglob("*.py")
        if str(p.relative_to(TRAINER)) not in OVERSIZED
    }
    assert {name: n for name, n in sizes.items() if n > MAX_LINES} == {}
