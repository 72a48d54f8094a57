"""Evaluating the rules: every problem of a manifest that needs no cluster to see.

`rules` holds the table (each rule's check, CEL and message); this module runs
it on an object, as `avatar-operator validate`, the worker and the tests do.
"""

from __future__ import annotations

import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import pydantic

from avatar_operator.api import names, rules
from avatar_operator.api import pool as pool_mod
from avatar_operator.api.spec import AvatarSessionSpec, KubeModel, parse_spec

Problem = rules.Problem
S = TypeVar("S")


_TOP_LEVEL = frozenset({"apiVersion", "kind", "metadata", "spec", "status"})


def _field_path(loc: Sequence[int | str]) -> str:
    path = "spec"
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path


def _explain_path(loc: Sequence[int | str], kind: str = names.KIND) -> str:
    return ".".join([kind.lower(), "spec", *(str(p) for p in loc if isinstance(p, str))])


def _shape_problems(error: pydantic.ValidationError, kind: str) -> list[Problem]:
    problems = []
    for e in error.errors():
        loc = tuple(e["loc"])
        if e["type"] == "missing":
            message = "required field is missing"
        elif e["type"] == "extra_forbidden":
            message = f"unknown field: remove it (`kubectl explain {_explain_path(loc[:-1], kind)}` lists the fields)"
        elif e["type"] == "model_type":
            message = "must be an object"
        else:
            message = str(e["msg"]).removeprefix("Value error, ")
        problems.append(Problem(_field_path(loc), message))
    return problems


def _model_in(annotation: Any) -> type[pydantic.BaseModel] | None:
    """The model an annotation holds (through Optional, Annotated and lists), if any."""
    if isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _null_unknown_fields(
    value: Any, model: type[pydantic.BaseModel], kind: str, loc: tuple[int | str, ...] = ()
) -> list[Problem]:
    """Unknown fields whose value is null. parse_spec drops null fields (the
    apiserver drops a known one before it validates), but the apiserver's
    strict decoding refuses an unknown field whatever its value."""
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _null_unknown_fields(v, model, kind, (*loc, i))]
    if not isinstance(value, Mapping):
        return []
    fields = {(f.alias or name): f.annotation for name, f in model.model_fields.items()}
    problems = []
    for key, v in value.items():
        if key not in fields:
            if v is None:
                problems.append(Problem(_field_path((*loc, key)), f"unknown field: remove it (`kubectl explain {_explain_path(loc, kind)}` lists the fields)"))
            continue
        inner = _model_in(fields[key])
        if inner is not None:
            problems.extend(_null_unknown_fields(v, inner, kind, (*loc, key)))
    return problems


def _validate(
    obj: Mapping[str, Any],
    kind: str,
    model: type[KubeModel],
    parse: Callable[[Mapping[str, Any]], S],
    table: Sequence[rules.Rule[S]],
) -> list[Problem]:
    problems = [Problem(k, "unknown field: remove it") for k in obj if k not in _TOP_LEVEL]
    if obj.get("spec") is None:
        return [*problems, Problem("spec", f"required field is missing: an {kind} needs a spec")]
    try:
        spec = parse(obj)
    except pydantic.ValidationError as e:
        return [*problems, *_null_unknown_fields(obj["spec"], model, kind), *_shape_problems(e, kind)]
    problems += _null_unknown_fields(obj["spec"], model, kind)
    if problems:
        return problems
    return [Problem(r.field, r.message) for r in table if not r.check(spec)]


def validate(obj: Mapping[str, Any]) -> list[Problem]:
    """Every problem of an AvatarSession object that needs no cluster to see.

    Empty when the object is valid. Shape problems (types, unknown fields)
    come first and alone: the rules need a well-formed spec to run.
    """
    return _validate(obj, names.KIND, AvatarSessionSpec, parse_spec, rules.RULES)


def validate_pool(obj: Mapping[str, Any]) -> list[Problem]:
    """The same for an AvatarPool: its own rules, and the local-mode rules on its renderer fields."""
    return _validate(obj, names.POOL_KIND, pool_mod.AvatarPoolSpec, pool_mod.parse_pool, rules.POOL_RULES)


def validate_update(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[Problem]:
    """validate(new), plus the fields that may not change from `old` (the stored object)."""
    problems = validate(new)
    if problems:
        return problems
    try:
        old_spec = parse_spec(old)
    except pydantic.ValidationError:
        return []  # nothing valid was stored, so nothing is running to protect
    new_spec = parse_spec(new)
    return [Problem(r.field, r.message) for r in rules.TRANSITION_RULES if not r.check(old_spec, new_spec)]


def validate_pool_update(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[Problem]:
    """validate_pool(new), plus the pool's fields that may not change from `old`."""
    problems = validate_pool(new)
    if problems:
        return problems
    try:
        old_spec = pool_mod.parse_pool(old)
    except pydantic.ValidationError:
        return []
    new_spec = pool_mod.parse_pool(new)
    return [Problem(r.field, r.message) for r in rules.POOL_TRANSITION_RULES if not r.check(old_spec, new_spec)]
