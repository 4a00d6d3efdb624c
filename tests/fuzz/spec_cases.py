"""Generated FineTuneJob specs around valid ones, each with what it must do (:class:`Expect`).

The fields, their types and bounds are read from the typed models in ``finetune_api.spec``, so a new
field is fuzzed without a change here. Mutations: a wrong type, a number just out of range, a value
outside a fixed set, a misspelt or unknown field, a required field removed, a refused task x method
pair, and in-range values (which may pass or be refused by a cross-field rule, but cleanly).
"""

from __future__ import annotations

import copy
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal, Union, get_args, get_origin

from annotated_types import Ge, Gt, Le, Lt
from hypothesis import strategies as st
from pydantic import BaseModel

from finetune_api.matrix import UNSUPPORTED
from finetune_api.spec import FineTuneJobSpec
from tests.fuzz.oracle import Expect

MUTATIONS = ("wrong-type", "out-of-range", "bad-choice", "misspelt-field", "unknown-field", "missing", "in-range")


@dataclass(frozen=True)
class Leaf:
    """One field of the spec: its camelCase path, Python type and bounds."""

    path: tuple[str, ...]
    kind: str  # int, float, bool, str, list, dict, model, literal
    required: bool
    choices: tuple[Any, ...] = ()
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None

    @property
    def dotted(self) -> str:
        return "spec." + ".".join(self.path)


def _unwrap(annotation: Any) -> Any:
    """The type inside Optional[...] and Annotated[...]."""
    while True:
        origin = get_origin(annotation)
        if origin is typing.Annotated:
            annotation = get_args(annotation)[0]
        elif origin in (Union, types.UnionType):
            inner = [a for a in get_args(annotation) if a is not type(None)]
            annotation = inner[0]
        else:
            return annotation


def _kind(annotation: Any) -> str:
    origin = get_origin(annotation)
    if origin is Literal:
        return "literal"
    if origin is list:
        return "list"
    if origin is dict:
        return "dict"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "model"
    return {int: "int", float: "float", bool: "bool", str: "str"}.get(annotation, "str")


def leaves(model: type[BaseModel] = FineTuneJobSpec, prefix: tuple[str, ...] = ()) -> list[Leaf]:
    """Every field of the spec (models too, and the fields inside them), with types and bounds."""
    found = []
    for name, info in model.model_fields.items():
        alias = info.alias or name
        annotation = _unwrap(info.annotation)
        kind = _kind(annotation)
        bounds: dict[str, Any] = {}
        for meta in info.metadata:
            for attr, cls in (("ge", Ge), ("gt", Gt), ("le", Le), ("lt", Lt)):
                if isinstance(meta, cls):
                    bounds[attr] = getattr(meta, attr)
        choices = get_args(annotation) if kind == "literal" else ()
        leaf = Leaf((*prefix, alias), kind, info.is_required(), choices, **bounds)
        found.append(leaf)
        if kind == "model":
            found += leaves(annotation, leaf.path)
    return found


LEAVES = leaves()


def get_at(spec: dict[str, Any], path: tuple[str, ...]) -> Any:
    node: Any = spec
    for part in path:
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def set_at(spec: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    """Set a value, creating the mappings above it."""
    node = spec
    for part in path[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[path[-1]] = value


def remove_at(spec: dict[str, Any], path: tuple[str, ...]) -> None:
    parent = get_at(spec, path[:-1]) if len(path) > 1 else spec
    if isinstance(parent, dict):
        parent.pop(path[-1], None)


def wrong_types(kind: str) -> st.SearchStrategy[Any]:
    """Values no lenient parser can take for a field of this kind."""
    not_number = st.sampled_from(["lots", "1e", "", "ten", "0x1G"]) | st.just([1]) | st.just({"value": 1})
    return {
        "int": not_number | st.just(1.5),
        "float": not_number,
        "bool": st.sampled_from(["maybe", "si", 2, -1, [True], {"on": True}]),
        "str": st.integers(-5, 10**6) | st.just(["a", "b"]) | st.just({"nested": "x"}),
        "list": st.sampled_from(["query", 7, {"a": "b"}]),
        "dict": st.sampled_from(["text", 7, ["a"]]),
        "model": st.sampled_from(["yes", 7, ["a"], True]),
        "literal": st.integers(0, 5) | st.just(["x"]) | st.just({"a": 1}),
    }[kind]


def out_of_range(leaf: Leaf) -> st.SearchStrategy[Any]:
    """A number just outside the field's bounds (or far outside)."""
    step = 1 if leaf.kind == "int" else 0.5
    options: list[Any] = []
    if leaf.ge is not None:
        options += [leaf.ge - step, leaf.ge - 1000]
    if leaf.gt is not None:
        options += [leaf.gt, leaf.gt - step]
    if leaf.le is not None:
        options += [leaf.le + step, leaf.le * 1000 + 7]
    if leaf.lt is not None:
        options += [leaf.lt, leaf.lt + step]
    return st.sampled_from([int(v) if leaf.kind == "int" else float(v) for v in options])


def in_range(leaf: Leaf) -> st.SearchStrategy[Any]:
    """A value of the right type within the field's bounds."""
    if leaf.kind == "literal":
        return st.sampled_from(leaf.choices)
    if leaf.kind == "bool":
        return st.booleans()
    low = leaf.ge if leaf.ge is not None else (leaf.gt if leaf.gt is not None else 0)
    high = leaf.le if leaf.le is not None else (leaf.lt if leaf.lt is not None else 10_000)
    if leaf.kind == "int":
        return st.integers(int(low) + (leaf.gt is not None), int(high) - (leaf.lt is not None))
    return st.floats(low, high, exclude_min=leaf.gt is not None, exclude_max=leaf.lt is not None, allow_nan=False)


def misspell(name: str, draw: Any) -> str:
    """A plausible typo of a field name: a letter dropped, snake_case, or the wrong case."""
    snake = "".join(f"_{c.lower()}" if c.isupper() else c for c in name)
    options = [name[:i] + name[i + 1 :] for i in range(len(name)) if len(name) > 2]
    options += [snake, name.capitalize(), name + "s", name.lower() + "_"]
    return draw(st.sampled_from([o for o in options if o and o != name]))


@dataclass
class SpecCase:
    """A generated spec, the mutations applied, and what it must do."""

    spec: dict[str, Any]
    mutations: list[str]
    expect: Expect


@st.composite
def mutated_specs(
    draw: Any, bases: list[dict[str, Any]], max_mutations: int = 3, kinds: tuple[str, ...] = MUTATIONS
) -> SpecCase:
    """A valid base spec with one to max_mutations mutations; must-refuse mutations name their paths.

    A later mutation that replaces or removes a section drops what the earlier ones expected inside it.
    """
    spec = copy.deepcopy(draw(st.sampled_from(bases)))
    expected: dict[tuple[str, ...], tuple[str, ...]] = {}  # mutated path -> fragments its refusal names
    done: list[str] = []

    def replace(path: tuple[str, ...], fragments: tuple[str, ...] | None) -> None:
        for old in [p for p in expected if p[: len(path)] == path or path[: len(p)] == p]:
            del expected[old]
        if fragments is not None:
            expected[path] = fragments

    for _ in range(draw(st.integers(1, max_mutations))):
        kind = draw(st.sampled_from(kinds))
        leaf = draw(st.sampled_from(_candidates(kind)))
        if not _settable(spec, leaf.path):
            continue
        if kind == "missing":
            if get_at(spec, leaf.path) is None:
                continue
            remove_at(spec, leaf.path)
            replace(leaf.path, (leaf.dotted,))
        elif kind in ("misspelt-field", "unknown-field"):
            name = misspell(leaf.path[-1], draw) if kind == "misspelt-field" else draw(st.sampled_from(["foo", "x1"]))
            path = (*leaf.path[:-1], name)
            if get_at(spec, path) is not None:
                continue
            set_at(spec, path, draw(in_range(leaf)) if leaf.kind != "model" else {})
            replace(path, ("spec." + ".".join(path),))
        else:
            strategy = {
                "wrong-type": wrong_types(leaf.kind),
                "out-of-range": out_of_range(leaf),
                "bad-choice": st.text(min_size=1, max_size=8),
            }.get(kind, in_range(leaf))
            value = draw(strategy)
            if leaf.kind == "literal" and kind != "in-range" and value in leaf.choices:
                continue
            set_at(spec, leaf.path, value)
            if kind == "in-range":
                replace(leaf.path, None)
            else:
                replace(leaf.path, (leaf.dotted, repr(value) if isinstance(value, str) else str(value)))
        done.append(f"{kind} {'.'.join(leaf.path)}")
    accept = True if not done else (False if expected else None)
    mentions = tuple(f for fragments in expected.values() for f in fragments)
    return SpecCase(spec, done, Expect(accept, mentions, why="; ".join(done)))


def _candidates(kind: str) -> list[Leaf]:
    """The fields a mutation of this kind can apply to."""
    if kind == "out-of-range":
        return [x for x in LEAVES if x.kind in ("int", "float") and (x.ge, x.gt, x.le, x.lt) != (None,) * 4]
    if kind == "bad-choice":
        return [x for x in LEAVES if x.kind == "literal"]
    if kind == "missing":
        return [x for x in LEAVES if x.required]
    if kind in ("misspelt-field", "unknown-field"):
        return [x for x in LEAVES if x.kind != "model" or len(x.path) == 1]
    if kind == "in-range":
        return [x for x in LEAVES if x.kind in ("int", "float", "bool", "literal")]
    return LEAVES


def _settable(spec: dict[str, Any], path: tuple[str, ...]) -> bool:
    """True when every mapping above path is a mapping or absent (an earlier mutation may have made it a list)."""
    node: Any = spec
    for part in path[:-1]:
        if not isinstance(node, dict):
            return False
        node = node.get(part, {})
    return isinstance(node, dict)


@st.composite
def refused_pairs(draw: Any, base: dict[str, Any]) -> SpecCase:
    """A base spec switched to one of the task x method pairs the trainer refuses."""
    task, method = draw(st.sampled_from(sorted(UNSUPPORTED)))
    spec = copy.deepcopy(base)
    spec["task"] = {"type": task}
    spec["method"] = {"type": method}
    return SpecCase(spec, [f"pair {task} x {method}"], Expect(False, ("spec.method.type", method), why="refused pair"))
