"""Evaluating the rules: every problem of a manifest that needs no cluster to see.

`rules` holds the table (each rule's check, CEL and message); this module runs
it on an object, as `avatar-operator validate`, the worker and the tests do.

Every problem is reported in one run: shape problems (types, unknown fields,
missing fields) and rule problems together. The rules need a well-formed
spec, so the parts pydantic refused are cut out of a copy and the rules run
on the rest, except a rule that reads a part that was cut (what it reads is
taken from its CEL, so the two cannot drift apart).
"""

from __future__ import annotations

import dataclasses
import re
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Generic, TypeVar

import pydantic

from avatar_operator.api import names, object_meta, plugin_args, rules
from avatar_operator.api import pool as pool_mod
from avatar_operator.api import spec as spec_mod
from avatar_operator.api.spec import AvatarSessionSpec, KubeModel, parse_spec

Problem = rules.Problem
S = TypeVar("S")
# A place in a spec, relative to `spec`: ("connection", "maxRetry").
Path = tuple[str | int, ...]


_TOP_LEVEL = frozenset({"apiVersion", "kind", "metadata", "spec", "status"})


def _field_path(loc: Sequence[int | str]) -> str:
    path = "spec"
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path


def _explain_path(loc: Sequence[int | str], kind: str = names.KIND) -> str:
    return ".".join([kind.lower(), "spec", *(str(p) for p in loc if isinstance(p, str))])


def _model_in(annotation: Any) -> type[pydantic.BaseModel] | None:
    """The model an annotation holds (through Optional, Annotated and lists), if any."""
    if isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _wire_fields(model: type[pydantic.BaseModel]) -> dict[str, Any]:
    """Wire name -> annotation of each field of a model."""
    return {(f.alias or name): f.annotation for name, f in model.model_fields.items()}


def _model_at(model: type[pydantic.BaseModel], loc: Sequence[int | str]) -> type[pydantic.BaseModel] | None:
    """The model of the object at `loc` (list indices pass through to the item's model)."""
    current: type[pydantic.BaseModel] | None = model
    for step in loc:
        if isinstance(step, int):
            continue
        if current is None or step not in _wire_fields(current):
            return None
        current = _model_in(_wire_fields(current)[step])
    return current


def _unknown_field(loc: Sequence[int | str], model: type[pydantic.BaseModel], kind: str) -> str:
    """The message for an unknown field: in a session, the spec's name for it
    when it is a plugin argument or a misspelling; else where the fields are listed."""
    parent = _model_at(model, loc[:-1])
    found = None
    if parent is not None and kind == names.KIND:  # a pool has no plugin counterpart
        found = plugin_args.hint(str(loc[-1]), frozenset(_wire_fields(parent)), top_level=len(loc) == 1)
    if found is None:
        return f"unknown field: remove it (`kubectl explain {_explain_path(loc[:-1], kind)}` lists the fields)"
    if found.field is None:
        return f"unknown field: {found.why}; remove it"
    return f"unknown field: did you mean `{found.field}`? ({found.why})"


def _shape_problems(error: pydantic.ValidationError, model: type[pydantic.BaseModel], kind: str) -> list[Problem]:
    problems = []
    for e in error.errors():
        loc = tuple(e["loc"])
        if e["type"] == "missing":
            message = "required field is missing"
        elif e["type"] == "extra_forbidden":
            message = _unknown_field(loc, model, kind)
        elif e["type"] == "model_type":
            message = "must be an object"
        else:
            message = str(e["msg"]).removeprefix("Value error, ")
        problems.append(Problem(_field_path(loc), message))
    return problems


def _null_unknown_fields(
    value: Any, model: type[pydantic.BaseModel], kind: str, root: type[pydantic.BaseModel], loc: Path = ()
) -> list[Problem]:
    """Unknown fields whose value is null. parse_spec drops null fields (the
    apiserver drops a known one before it validates), but the apiserver's
    strict decoding refuses an unknown field whatever its value."""
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _null_unknown_fields(v, model, kind, root, (*loc, i))]
    if not isinstance(value, Mapping):
        return []
    fields = _wire_fields(model)
    problems = []
    for key, v in value.items():
        if key not in fields:
            if v is None:
                problems.append(Problem(_field_path((*loc, key)), _unknown_field((*loc, key), root, kind)))
            continue
        inner = _model_in(fields[key])
        if inner is not None:
            problems.extend(_null_unknown_fields(v, inner, kind, root, (*loc, key)))
    return problems


# --- running the rules on what is well-formed ------------------------------------

# `self.a.b` in a rule's CEL, up to a method call (`self.modelPath.matches(...)` reads modelPath).
_SELF_PATH = re.compile(r"\bself((?:\.[A-Za-z_]\w*(?![\w(]))*)")
_REPAIR_ROUNDS = 8


def reads(cel: str, scope: str) -> dict[Path, bool]:
    """What a rule reads, relative to spec: path -> True when only its presence (`has()`)."""
    base: Path = tuple(scope.split("."))[1:]
    found: dict[Path, bool] = {base: True} if base else {}  # a rule at a field runs only when it is there
    for m in _SELF_PATH.finditer(cel):
        path = (*base, *(p for p in m.group(1).split(".") if p))
        presence = cel[: m.start()].endswith("has(") and cel[m.end() :].startswith(")")
        found[path] = found.get(path, True) and presence
    return found


def untouched(read: Mapping[Path, bool], cut: Sequence[Path]) -> bool:
    """True when nothing a rule reads was cut: not inside a cut part, and (for
    a value read) no part of it cut either."""
    for path, presence in read.items():
        for c in cut:
            if path[: len(c)] == c or (not presence and c[: len(path)] == path):
                return False
    return True


def _target(spec: Mapping[str, Any], loc: Sequence[int | str], missing: bool) -> tuple[Path, bool] | None:
    """Where to cut for one pydantic error: (path, fill) where fill means put a
    placeholder in a missing top-level field. None: nothing can be cut."""
    node: Any = spec
    reached: list[str | int] = []
    for step in loc:
        if isinstance(node, list):
            break  # a list goes whole: cutting an item would shift the others' indices
        if not isinstance(node, Mapping) or step not in node:
            break
        node = node[step]
        reached.append(step)
    if reached:
        return tuple(reached), False
    if missing and len(loc) == 1:
        return tuple(loc), True
    return None


def _cut(spec: dict[str, Any], error: pydantic.ValidationError) -> list[Path] | None:
    """Cuts what `error` refused out of `spec` (in place); the paths cut, or None."""
    targets = []
    for e in error.errors():
        target = _target(spec, tuple(e["loc"]), e["type"] == "missing")
        if target is None:
            return None
        targets.append(target)
    done: list[Path] = []
    for path, fill in sorted(set(targets), key=lambda t: len(t[0])):
        if any(path[: len(d)] == d for d in done):
            continue  # inside a part cut already
        parent: Any = spec
        for step in path[:-1]:
            parent = parent[step]
        if fill:
            parent[path[-1]] = ""  # a required string (room, agentIdentity) that no rule will read
        else:
            del parent[path[-1]]
        done.append(path)
    return done


def _repaired(
    spec: Any, parse: Callable[[Mapping[str, Any]], S], error: pydantic.ValidationError
) -> tuple[S, list[Path]] | None:
    """The spec with every refused part cut out, parsed, and the paths cut; None when that fails."""
    copy = spec_mod.plain(spec)
    if not isinstance(copy, dict):
        return None
    cut: list[Path] = []
    for _ in range(_REPAIR_ROUNDS):
        more = _cut(copy, error)
        if more is None:
            return None
        cut += more
        try:
            return parse({"spec": copy}), cut
        except pydantic.ValidationError as e:
            error = e  # a cut can leave a parent missing a required field: cut again
    return None


# --- the verdict -------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Kind(Generic[S]):
    """What validating one kind takes: its model, parser and rule tables."""

    kind: str
    model: type[KubeModel]
    parse: Callable[[Mapping[str, Any]], S]
    # The tables are read at each call, so a test can take a rule out of rules.py's.
    table: Callable[[], Sequence[rules.Rule[S]]]
    transitions: Callable[[], Sequence[rules.TransitionRule[S]]]
    # False: the rules run only on an object without shape problems.
    together: bool = True


SESSION: Kind[AvatarSessionSpec] = Kind(
    names.KIND, AvatarSessionSpec, parse_spec, lambda: rules.RULES, lambda: rules.TRANSITION_RULES
)
POOL: Kind[pool_mod.AvatarPoolSpec] = Kind(
    names.POOL_KIND,
    pool_mod.AvatarPoolSpec,
    pool_mod.parse_pool,
    lambda: rules.POOL_RULES,
    lambda: rules.POOL_TRANSITION_RULES,
)


def _transition_problems(k: Kind[S], old: Mapping[str, Any], new: S, cut: Sequence[Path]) -> list[Problem]:
    try:
        old_spec = k.parse(old)
    except pydantic.ValidationError:
        return []  # nothing valid was stored, so nothing is running to protect
    return [
        Problem(r.field, r.message)
        for r in k.transitions()
        if (not cut or untouched(reads(r.cel, r.scope), cut)) and not r.check(old_spec, new)
    ]


def check(k: Kind[S], obj: Mapping[str, Any], old: Mapping[str, Any] | None = None) -> list[Problem]:
    """Every problem of `obj` of kind `k`; with `old` (the stored object), the changes it may not make too."""
    unknown = [Problem(key, "unknown field: remove it") for key in obj if key not in _TOP_LEVEL]
    problems = unknown + object_meta.problems(obj, k.kind)
    if obj.get("spec") is None:
        return [*problems, Problem("spec", f"required field is missing: an {k.kind} needs a spec")]
    nulls = _null_unknown_fields(obj["spec"], k.model, k.kind, k.model)
    problems += nulls
    cut: list[Path] = []
    try:
        spec = k.parse(obj)
    except pydantic.ValidationError as e:
        problems += _shape_problems(e, k.model, k.kind)
        repaired = _repaired(obj["spec"], k.parse, e) if k.together else None
        if repaired is None:
            return problems
        spec, cut = repaired
    if not k.together and (nulls or unknown):
        return problems
    problems += [
        # Nothing cut (the common case): every rule runs, and what each reads need not be worked out.
        Problem(r.field, r.message) for r in k.table() if (not cut or untouched(reads(r.cel, r.scope), cut)) and not r.check(spec)
    ]
    if old is None or (problems and not k.together):
        return problems
    return problems + _transition_problems(k, old, spec, cut)


def validate(obj: Mapping[str, Any]) -> list[Problem]:
    """Every problem of an AvatarSession object that needs no cluster to see.

    Empty when the object is valid. Shape problems (types, unknown fields)
    come first, then the rules' (those whose fields are well-formed).
    """
    return check(SESSION, obj)


def validate_pool(obj: Mapping[str, Any]) -> list[Problem]:
    """The same for an AvatarPool: its own rules, and the local-mode rules on its renderer fields."""
    return check(POOL, obj)


def validate_update(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[Problem]:
    """validate(new), plus the fields that may not change from `old` (the stored object)."""
    return check(SESSION, new, old)


def validate_pool_update(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[Problem]:
    """validate_pool(new), plus the pool's fields that may not change from `old`."""
    return check(POOL, new, old)
