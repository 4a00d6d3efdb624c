"""The API reference (Markdown) generated from the typed models, for the README.

``python -m finetune_api.reference --write`` replaces the README's section between the
markers below; a unit test fails when that section is stale.
"""

from __future__ import annotations

import json
import sys
import types
import typing
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from finetune_api.changes import changes_markdown
from finetune_api.matrix import matrix_markdown
from finetune_api.rules import RULES
from finetune_api.spec import FineTuneJobSpec
from finetune_api.status import FineTuneJobStatus

README = Path(__file__).resolve().parents[2] / "README.md"
BEGIN = "<!-- BEGIN GENERATED API REFERENCE -->"
END = "<!-- END GENERATED API REFERENCE -->"


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " \\| ".join(f"`{a}`" for a in get_args(tp))
    if origin in (types.UnionType, typing.Union):
        return " or ".join(_type_name(a) for a in get_args(tp) if a is not type(None))
    if origin is typing.Annotated:
        return _type_name(get_args(tp)[0])
    if origin is list:
        return f"list of {_type_name(get_args(tp)[0])}"
    if origin is dict:
        return f"map of {_type_name(get_args(tp)[1])}"
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return f"[{tp.__name__}](#{tp.__name__.lower()})"
    return getattr(tp, "__name__", str(tp))


def _default(info: Any) -> str:
    if info.default_factory is not None:
        value = info.default_factory()
        return "" if isinstance(value, BaseModel) else f"`{json.dumps(value)}`"
    if info.default is PydanticUndefined:
        return "required"
    return "" if info.default is None else f"`{json.dumps(info.default)}`"


def _models(root: type[BaseModel]) -> list[type[BaseModel]]:
    seen: list[type[BaseModel]] = []

    def visit(cls: type[BaseModel]) -> None:
        if cls in seen:
            return
        seen.append(cls)
        for info in cls.model_fields.values():
            stack = [info.annotation]
            while stack:
                tp = stack.pop()
                if isinstance(tp, type) and issubclass(tp, BaseModel):
                    visit(tp)
                stack.extend(get_args(tp))

    visit(root)
    return seen


def _table(cls: type[BaseModel]) -> str:
    lines = [f"#### {cls.__name__}", "", " ".join((cls.__doc__ or "").split()), ""]
    lines += ["| field | type | default | description |", "|---|---|---|---|"]
    for name, info in cls.model_fields.items():
        alias = info.alias or name
        desc = (info.description or "").replace("|", "\\|")
        lines.append(f"| `{alias}` | {_type_name(info.annotation)} | {_default(info)} | {desc} |")
    rules = [r for r in RULES if r.scope is cls]
    if rules:
        lines += ["", "Rules checked by the API server (CEL) and the trainer:", ""]
        lines += [f"- `{r.field or '.'}`: {r.message}" for r in rules]
    return "\n".join(lines)


def render() -> str:
    """The whole generated reference section, markers included."""
    parts = [BEGIN, "", "### Supported task × method pairs", "", matrix_markdown(), ""]
    parts += ["### Changing a job's spec", "", changes_markdown(), ""]
    parts += ["### Spec", ""]
    parts += [_table(m) + "\n" for m in _models(FineTuneJobSpec)]
    parts += ["### Status", ""]
    parts += [_table(m) + "\n" for m in _models(FineTuneJobStatus)]
    parts.append(END)
    return "\n".join(parts)


def updated_readme(text: str) -> str:
    """README text with the generated section replaced (or appended when missing)."""
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        return head + render() + tail
    return text.rstrip() + "\n\n" + render() + "\n"


def main(argv: list[str]) -> int:
    if "--write" in argv:
        README.write_text(updated_readme(README.read_text()))
        print(f"updated {README}")
    else:
        sys.stdout.write(render() + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
