"""Tasks and methods are registered units: adding one is one module plus one registry line.

The registries are listed here; every other module must reach a task or a method through them,
never by spelling its name.
"""

from __future__ import annotations

import re
from pathlib import Path

from finetune_api import matrix
from finetune_trainer.methods import METHODS
from finetune_trainer.tasks import TASKS

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = [ROOT / "api" / "finetune_api", ROOT / "operator" / "finetune_operator", ROOT / "trainer_image"]

# The registries: the API's names and its one table, and the trainer's two maps.
REGISTRIES = {
    "api/finetune_api/spec.py",  # TaskType / MethodType: the names
    "api/finetune_api/matrix.py",  # the API's table: column roles per task, refused pairs
    "trainer_image/finetune_trainer/tasks/__init__.py",  # TASKS
    "trainer_image/finetune_trainer/methods/__init__.py",  # METHODS
}
# Modules that still name units, each for a reason written down (and to be folded into a unit or the table).
KNOWN_EXCEPTIONS = {
    # Cross-field rules: each is written once as CEL for the CRD and once in Python, and names the
    # task or method whose option it scopes (e.g. "task.format applies to causal-lm only").
    "api/finetune_api/rules.py",
    # The GPU-memory model counts each method's states, each task's head and activations its own way
    # (torch-free, so it cannot ask the trainer's units).
    "api/finetune_api/estimate.py",
    "api/finetune_api/model_shapes.py",
    "api/finetune_api/activations.py",
    "api/finetune_api/sizing.py",
}


def _names() -> list[str]:
    return [*matrix.TASKS, *matrix.METHODS]


def _unit_module(relative: str, name: str) -> bool:
    """A unit's own module may say its own name (``name = "lora"``)."""
    stem = name.replace("-", "_")
    return relative.endswith((f"/tasks/{stem}.py", f"/methods/{stem}.py"))


def test_each_registry_holds_every_name_of_the_api_once() -> None:
    assert list(TASKS) == list(matrix.TASKS)
    assert list(METHODS) == list(matrix.METHODS)
    assert list(matrix.TASK_COLUMN_ROLES) == list(matrix.TASKS)
    assert all(task in matrix.TASKS and method in matrix.METHODS for task, method in matrix.UNSUPPORTED)


def test_each_unit_answers_for_its_own_name() -> None:
    assert all(unit.name == name for name, unit in TASKS.items())
    assert all(unit.name == name for name, unit in METHODS.items())
    assert {unit.peft_task_type for unit in TASKS.values()} <= {
        "SEQ_CLS",
        "TOKEN_CLS",
        "QUESTION_ANS",
        "CAUSAL_LM",
        "SEQ_2_SEQ_LM",
    }


def test_no_other_module_names_a_task_or_a_method() -> None:
    offenders = []
    for package in PACKAGES:
        for path in sorted(package.rglob("*.py")):
            relative = str(path.relative_to(ROOT))
            if relative in REGISTRIES or relative in KNOWN_EXCEPTIONS:
                continue
            text = path.read_text()
            for name in _names():
                if re.search(rf"[\"']{re.escape(name)}[\"']", text) and not _unit_module(relative, name):
                    offenders.append(f"{relative}: {name!r}")
    assert offenders == [], "reach tasks and methods through their registries: " + ", ".join(offenders)
