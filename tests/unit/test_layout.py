"""The house rules, read off the source: layers, no import cycle, small modules, short functions."""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
PACKAGES = {"avatar_operator": ROOT / "operator" / "avatar_operator", "avatar_runner": ROOT / "runner" / "avatar_runner"}

# A layer may import the layers before it in this order, and itself.
LAYERS = ("api", "build", "clients", "launchers", "controller")
# Modules beside the layers, and what they may import.
BESIDE = {
    "settings": {"api"},
    "metrics": {"api"},
    "heap": set(),  # the process's malloc; started by the controller's handlers
    "cli": {"api", "run", "viewer", "gateway"},  # `run`, `viewer`, `gateway` only when their command is run: kopf loads for the operator alone
    "viewer": {"api", "build", "clients", "controller", "settings"},  # `avatar-operator view`; `run` never imports it
    "gateway": {"api", "clients", "settings"},  # `avatar-operator gateway`: makes sessions, never runs them
    "run": {"api", "build", "clients", "launchers", "controller", "settings", "metrics"},
    "__main__": {"cli"},
}
# Declarative models: long because every field has its description.
LONG_ALLOWED = {"avatar_operator/api/spec.py", "avatar_operator/api/rules.py"}
MODULE_MAX = 350
FUNCTION_MAX = 60


def _modules() -> dict[str, pathlib.Path]:
    found = {}
    for package, root in PACKAGES.items():
        for path in root.rglob("*.py"):
            parts = path.relative_to(root).with_suffix("").parts
            parts = parts[:-1] if parts[-1] == "__init__" else parts
            found[".".join((package, *parts))] = path
    return found


MODULES = _modules()


def _imports(path: pathlib.Path, module: str) -> set[str]:
    """Every project module `path` imports, at any depth, TYPE_CHECKING blocks and function bodies included."""
    is_package = path.name == "__init__.py"
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")[: len(module.split(".")) - node.level + (1 if is_package else 0)]
                base = ".".join([*anchor, *([base] if base else [])])
            names = [f"{base}.{a.name}" for a in node.names] + [base]
        else:
            continue
        out |= {n for n in names if n in MODULES}
    return out - {module}


GRAPH = {m: _imports(p, m) for m, p in MODULES.items()}


def _place(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith("avatar_operator.")))
def test_a_layer_imports_only_the_layers_before_it(module: str) -> None:
    place = _place(module)
    if place in LAYERS:
        allowed = set(LAYERS[: LAYERS.index(place) + 1]) | {"settings", "metrics", "heap"}
    else:
        allowed = BESIDE.get(place, set()) | {place}
    wrong = sorted(
        i for i in GRAPH[module]
        if i.startswith("avatar_operator.") and _place(i) not in allowed and i != "avatar_operator"
    )
    assert not wrong, f"{module} ({place or 'package'}) imports {wrong}; allowed: {sorted(allowed)}"


def test_the_operator_takes_only_the_contract_from_the_runner() -> None:
    for module, imports in GRAPH.items():
        # The two development launchers run runner processes with the runner's own launcher.
        if module.startswith("avatar_operator.") and module not in {"avatar_operator.launchers.process", "avatar_operator.launchers.pool_process"}:
            runner = {i for i in imports if i.startswith("avatar_runner")}
            assert runner <= {"avatar_runner", "avatar_runner.contract"}, (module, runner)


def test_no_import_cycle() -> None:
    visiting: list[str] = []
    done: set[str] = set()

    def visit(module: str) -> None:
        if module in done:
            return
        assert module not in visiting, "import cycle: " + " -> ".join([*visiting[visiting.index(module):], module])
        visiting.append(module)
        for imported in sorted(GRAPH[module]):
            # A package's __init__ imported for its submodule is not a cycle by itself.
            if not module.startswith(imported + "."):
                visit(imported)
        visiting.pop()
        done.add(module)

    for module in sorted(GRAPH):
        visit(module)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_modules_are_small_and_functions_short(module: str) -> None:
    path = MODULES[module]
    package = module.split(".")[0]
    rel = f"{package}/{path.relative_to(PACKAGES[package])}"
    source = path.read_text()
    lines = len(source.splitlines())
    if rel not in LONG_ALLOWED:
        assert lines <= MODULE_MAX, f"{rel}: {lines} lines; split it by job"
    long = [
        f"{node.name} ({node.end_lineno - node.lineno + 1} lines)"  # type: ignore[operator]
        for node in ast.walk(ast.parse(source))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > FUNCTION_MAX  # type: ignore[operator]
    ]
    assert not long, f"{rel}: {long}"
