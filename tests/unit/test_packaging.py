"""Packaging: the Dockerfile's build context, what each image can import, the Helm chart's values and CRDs.

No Docker engine here, so the images are checked through what they are made
of: the files the Dockerfile copies (the wheel is built from exactly that
context), the imports each image must survive without the other's
dependencies, and the command lines the chart and the runner pod hand them.
"""

from __future__ import annotations

import fnmatch
import json
import os
import pathlib
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import textwrap
import tomllib
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
import yaml
from avatar_operator.api import names

from tests.conftest import ROOT, STACK_DIR

CHART = ROOT / "charts" / "avatar-operator"
DOCKERFILE = ROOT / "Dockerfile"

# The runner's media stack: the operator image does not have it.
# The runner's media stack. The operator may import avatar_runner.contract (the
# names both sides share, standard library only) and nothing else of the runner.
RUNNER_ONLY = ("livekit.rtc", "livekit.agents", "bithuman", "numpy")
SHARED_WITH_THE_RUNNER = ["avatar_runner", "avatar_runner.contract"]
# The operator's control-plane stack: the runner image does not have it.
OPERATOR_ONLY = ("kopf", "kubernetes")


# --- the Dockerfile ---------------------------------------------------------


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per Dockerfile instruction, continuation lines joined."""
    joined = re.sub(r"\\\n", " ", text)
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _stages(text: str) -> dict[str, list[tuple[str, str]]]:
    """Stage name -> its instructions (FROM excluded)."""
    stages: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    for word, rest in _instructions(text):
        if word == "FROM":
            match = re.search(r"\bAS\s+(\S+)", rest, re.IGNORECASE)
            assert match, f"every stage is named: FROM {rest}"
            current = stages.setdefault(match.group(1), [])
        elif current is not None:
            current.append((word, rest))
    return stages


def _copy_sources() -> list[str]:
    """Sources of every COPY from the build context (not --from another stage)."""
    sources = []
    for word, rest in _instructions(DOCKERFILE.read_text()):
        if word != "COPY":
            continue
        args = shlex.split(rest)
        if any(a.startswith("--from") for a in args):
            continue
        paths = [a for a in args if not a.startswith("--")]
        sources.extend(paths[:-1])
    return sources


def _ignore_patterns() -> list[tuple[bool, str]]:
    """(.dockerignore) -> [(is_exception, pattern)] in file order."""
    patterns = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            negated = line.startswith("!")
            patterns.append((negated, line.lstrip("!").strip("/")))
    return patterns


def _excluded(rel: str, patterns: Sequence[tuple[bool, str]]) -> bool:
    """Docker's rule: the last matching pattern wins; a pattern matching a directory covers its contents."""
    parts = rel.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for negated, pattern in patterns:
        regex = fnmatch.translate(pattern).replace(".*.*/", "(.*/)?")  # "**/" spans zero or more directories
        if any(re.match(regex, p) for p in prefixes):
            excluded = not negated
    return excluded


def _build_context() -> Iterator[pathlib.Path]:
    """The files `docker build .` sends, as .dockerignore filters the tree."""
    patterns = _ignore_patterns()
    for dirpath, dirnames, filenames in os.walk(ROOT):
        rel_dir = pathlib.Path(dirpath).relative_to(ROOT)
        # Local state the allowlist leaves out anyway; skipping it keeps the walk fast.
        dirnames[:] = [d for d in dirnames if d not in (".git", ".venv", ".stack", "node_modules")]
        for name in filenames:
            rel = (rel_dir / name).as_posix()
            if not _excluded(rel, patterns):
                yield ROOT / rel


def test_every_path_the_dockerfile_copies_exists_and_is_in_the_build_context() -> None:
    sources = _copy_sources()
    assert sources, "the Dockerfile copies the project in"
    patterns = _ignore_patterns()
    for source in sources:
        path = ROOT / source
        assert path.exists(), f"COPY {source}: no such file in the repository"
        assert not _excluded(source.rstrip("/"), patterns), f"COPY {source}: .dockerignore leaves it out of the context"


def test_the_build_context_holds_no_secrets_or_local_state() -> None:
    context = [p.relative_to(ROOT).as_posix() for p in _build_context()]
    assert context, "the build context is not empty"
    leaked = [p for p in context if re.search(r"(^|/)(\.stack|\.venv|\.git|tests|__pycache__)(/|$)|\.(whl|pem|key)$|kubeconfig", p)]
    assert not leaked


def test_the_project_builds_from_the_build_context_alone(tmp_path: pathlib.Path) -> None:
    """What the builder stage starts from: only the files the Dockerfile copies make a distribution.

    The builder runs `pip wheel`; here setuptools' PEP 517 backend builds an
    sdist from the same context instead, which needs neither the network
    (build isolation) nor the `wheel` package, and reads the same
    configuration: pyproject.toml, its readme, package discovery and the
    console script."""
    context = tmp_path / "context"
    for source in _copy_sources():
        src = ROOT / source
        if src.is_dir():
            shutil.copytree(src, context / source, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
        else:
            (context / source).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, context / source)
    dist = tmp_path / "dist"
    proc = subprocess.run(
        [sys.executable, "-c", f"from setuptools import build_meta; print(build_meta.build_sdist({str(dist)!r}))"],
        cwd=context,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    sdist = dist / proc.stdout.strip().splitlines()[-1]
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
        entry_points = next(m for m in tar.getmembers() if m.name.endswith(".egg-info/entry_points.txt"))
        scripts = tar.extractfile(entry_points).read().decode()  # type: ignore[union-attr]
    for module in ("avatar_operator/cli.py", "avatar_operator/controller/handlers.py", "avatar_operator/run.py", "avatar_runner/__main__.py"):
        assert any(n.endswith(module) for n in names), f"{module} missing from the distribution"
    assert not [n for n in names if n.startswith("tests/")]
    assert "avatar-operator = avatar_operator.cli:main" in scripts


def _requirement_names(requirements: Sequence[str]) -> set[str]:
    return {re.split(r"[\s<>=!~\[;]", r, maxsplit=1)[0].lower().replace("_", "-") for r in requirements}


def test_operator_dependencies_leave_out_the_runner_stack_and_the_runner_extra_leaves_out_kopf() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    operator_deps = _requirement_names(project["dependencies"])
    runner_deps = _requirement_names(project["optional-dependencies"]["runner"])
    assert {"kopf", "kubernetes"} <= operator_deps
    assert not operator_deps & {"livekit", "livekit-agents", "bithuman", "numpy"}
    assert {"livekit", "livekit-agents", "bithuman"} <= runner_deps
    assert not runner_deps & {"kopf", "kubernetes"}


def _import_blocking(blocked: Sequence[str], modules: Sequence[str]) -> subprocess.CompletedProcess[str]:
    """Imports `modules` in a fresh interpreter where `blocked` (and their submodules) raise ImportError."""
    code = textwrap.dedent(
        f"""
        import importlib, sys
        BLOCKED = {tuple(blocked)!r}

        class Block:
            # A meta path finder consulted before the real ones: the image lacks these.
            def find_spec(self, name, path=None, target=None):
                if any(name == b or name.startswith(b + ".") for b in BLOCKED):
                    raise ImportError(f"{{name}} is not installed in this image")
                return None

        sys.meta_path.insert(0, Block())
        for name in {tuple(modules)!r}:
            importlib.import_module(name)
        leaked = sorted(m for m in sys.modules if any(m == b or m.startswith(b + ".") for b in BLOCKED))
        assert not leaked, leaked
        print("ok")
        print(sorted(m for m in sys.modules if m == "avatar_runner" or m.startswith("avatar_runner.")))
        """
    )
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_the_operator_imports_without_the_runner_dependencies() -> None:
    proc = _import_blocking(
        RUNNER_ONLY,
        ["avatar_operator.controller.handlers", "avatar_operator.controller.worker", "avatar_operator.cli", "avatar_operator.run"],
    )
    assert proc.returncode == 0 and proc.stdout.splitlines()[0] == "ok", proc.stderr
    assert proc.stdout.splitlines()[1] == repr(SHARED_WITH_THE_RUNNER)


def test_the_blocker_does_block() -> None:
    """The import check above could pass vacuously if the finder blocked nothing."""
    proc = _import_blocking(("numpy",), ["numpy"])
    assert proc.returncode != 0 and "not installed in this image" in proc.stderr


def test_the_runner_imports_without_kopf_or_the_kubernetes_client() -> None:
    proc = _import_blocking(OPERATOR_ONLY, ["avatar_runner", "avatar_runner.main"])
    assert proc.returncode == 0 and proc.stdout.splitlines()[0] == "ok", proc.stderr


def _effective_command(stage: Sequence[tuple[str, str]], command: Sequence[str] | None, args: Sequence[str] | None) -> list[str]:
    """What a container runs: Kubernetes' command replaces ENTRYPOINT, its args replace CMD."""
    entrypoint: list[str] = []
    cmd: list[str] = []
    for word, rest in stage:
        if word == "ENTRYPOINT":
            entrypoint, cmd = json.loads(rest), []  # a new ENTRYPOINT resets CMD
        elif word == "CMD":
            cmd = json.loads(rest)
    if command is not None:
        return [*command, *(args or [])]
    return [*entrypoint, *(cmd if args is None else args)]


def test_the_runner_pod_runs_the_runner_module_in_the_runner_image() -> None:
    from avatar_operator.api import spec
    from avatar_operator.build import pod as manifests

    body = {"spec": {"room": "r", "agentIdentity": "agent", "modelPath": "/models/a.imx"}}
    pod = manifests.runner_pod(
        names.SessionRef(name="s", namespace="ns", uid="u"),
        spec.parse_spec(body),
        livekit_url="ws://livekit",
        bithuman_secret="bithuman-credentials",
        defaults=manifests.RunnerDefaults(image="runner:test", renderer="portrait", cpu="1", memory="1Gi"),
    )
    container = pod["spec"]["containers"][0]
    stage = _stages(DOCKERFILE.read_text())["runner"]
    argv = _effective_command(stage, container.get("command"), container.get("args"))
    assert argv == ["python", "-m", "avatar_runner"]
    # And `docker run <runner image>` alone does the same.
    assert _effective_command(stage, None, None) == ["python", "-m", "avatar_runner"]


def test_final_images_run_as_uid_10001_and_carry_no_compilers() -> None:
    text = DOCKERFILE.read_text()
    stages = _stages(text)
    parents = {stage: base for base, stage in re.findall(r"^FROM\s+(\S+)\s+AS\s+(\S+)", text, re.MULTILINE | re.IGNORECASE)}
    for target in ("operator", "runner"):
        chain, name = [], target
        while name in stages:  # FROM <stage> back to the base image
            chain.append(name)
            name = parents[name]
        assert name.startswith("${PYTHON_IMAGE}"), f"{target} starts from the pinned base image"
        assert "builder" not in chain, f"{target} is built FROM the builder"
        instructions = [i for stage in reversed(chain) for i in stages[stage]]
        users = [rest for word, rest in instructions if word == "USER"]
        assert users and users[-1].split(":")[0] == "10001", f"{target}: USER 10001"
        runs = " ".join(rest for word, rest in instructions if word == "RUN")
        assert not re.search(r"build-essential|\bgcc\b|\bg\+\+|\bclang\b", runs), f"{target} installs a compiler"
    base_images = re.findall(r"^ARG\s+PYTHON_IMAGE=(\S+)", text, re.MULTILINE)
    assert base_images and re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+", base_images[0]), "pinned to an exact tag"


# --- the chart --------------------------------------------------------------


def test_chart_crds_are_the_generated_ones_plus_kopfs_peering() -> None:
    generated = {p.name: p.read_bytes() for p in (ROOT / "crds").glob("*.yaml")}
    in_chart = {p.name: p.read_bytes() for p in (CHART / "crds").glob("*.yaml")}
    assert generated, "crds/ holds the generated CRD"
    for name, content in generated.items():
        assert in_chart.get(name) == content, f"charts/avatar-operator/crds/{name} differs from crds/{name}: run hack/sync-chart-crds.sh"
    extra = set(in_chart) - set(generated)
    assert extra == {"kopfpeerings.kopf.dev.yaml", "clusterkopfpeerings.kopf.dev.yaml"}, f"stale chart CRDs: {extra}"
    for name in extra:
        crd = yaml.safe_load(in_chart[name])
        assert crd["spec"]["group"] == "kopf.dev" and crd["metadata"]["name"] == name.removesuffix(".yaml")
        schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        # kopf writes keep-alives into .status; nothing else may be free-form.
        assert schema["properties"]["status"]["x-kubernetes-preserve-unknown-fields"] is True
        assert "x-kubernetes-preserve-unknown-fields" not in schema


def _strictness_gaps(schema: Any, path: str = "$") -> Iterator[str]:
    if isinstance(schema, dict):
        if "properties" in schema and schema.get("additionalProperties") is not False:
            yield path
        for key, value in schema.items():
            yield from _strictness_gaps(value, f"{path}.{key}")
    elif isinstance(schema, list):
        for i, value in enumerate(schema):
            yield from _strictness_gaps(value, f"{path}[{i}]")


def test_values_schema_closes_every_object_it_describes() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    # if/then clauses only add constraints to objects closed elsewhere.
    gaps = [g for g in _strictness_gaps({k: v for k, v in schema.items() if k != "allOf"}) if ".extraEnv" not in g]
    assert not gaps, f"objects open to misspelt keys: {gaps}"
    assert set(values) == set(schema["properties"]) == set(schema["required"])


def _helm() -> str:
    candidates = [os.environ.get("AVATAR_STACK_BIN", ""), str(STACK_DIR / "bin")]
    for directory in candidates:
        if directory and (pathlib.Path(directory) / "helm").is_file():
            return str(pathlib.Path(directory) / "helm")
    found = shutil.which("helm")
    if found:
        return found
    message = "helm not found (run `make binaries`)"
    if os.environ.get("AVATAR_REQUIRE_STACK") == "1":
        pytest.fail(message)
    pytest.skip(message)


def _helm_run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([_helm(), *args], capture_output=True, text=True, timeout=120)


def test_values_yaml_passes_the_values_schema() -> None:
    """helm applies values.schema.json on lint; values.yaml (the defaults) must pass it."""
    proc = _helm_run("lint", "--strict", str(CHART))
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize(
    ("override", "complaint"),
    [
        ("replicas=2", "additional properties 'replicas' not allowed"),
        ("replicaCount=0", "/replicaCount"),
        ("logging.format=yaml", "/logging/format"),
        ("watchNamespaces[0]=Not_A_Namespace", "/watchNamespaces/0"),
        ("runner.renderer=fake", "/runner/renderer"),
        ("livekit.operatorCredentials.secretName=UPPER", "/livekit/operatorCredentials/secretName"),
    ],
)
def test_values_schema_refuses_bad_values(override: str, complaint: str) -> None:
    proc = _helm_run("lint", "--strict", str(CHART), "--set", override)
    assert proc.returncode != 0
    assert complaint in proc.stdout + proc.stderr


def test_cluster_mode_refuses_a_namespace_list() -> None:
    proc = _helm_run("template", "t", str(CHART), "--set", "clusterWide=true", "--set", "watchNamespaces={a}")
    assert proc.returncode != 0 and "/watchNamespaces" in proc.stderr
    # The template refuses it too when the schema is skipped.
    proc = _helm_run("template", "t", str(CHART), "--skip-schema-validation", "--set", "clusterWide=true", "--set", "watchNamespaces={a}")
    assert proc.returncode != 0 and "leave watchNamespaces empty" in proc.stderr


def _rendered(*sets: str) -> list[dict[str, Any]]:
    args = [a for s in sets for a in ("--set", s)]
    proc = _helm_run("template", "rel", str(CHART), "--namespace", "avatar-system", *args)
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def _settings_env_names() -> set[str]:
    """Every variable Settings.from_env reads (settings.py is the source of truth)."""
    source = (ROOT / "operator" / "avatar_operator" / "settings.py").read_text()
    return set(re.findall(r'"((?:AVATAR|LIVEKIT)_[A-Z_]+)"', source))


@pytest.mark.parametrize(
    "sets",
    [
        (),
        ("watchNamespaces={a,b}", "replicaCount=2", "livekit.operatorCredentials.secretName=lk", "logging.verbose=true"),
        ("clusterWide=true", "metrics.enabled=false"),
    ],
    ids=["default", "namespaced-peering", "cluster"],
)
def test_the_deployment_command_line_and_environment_are_the_operators(sets: tuple[str, ...]) -> None:
    from avatar_operator import cli

    (deployment,) = [d for d in _rendered(*sets) if d["kind"] == "Deployment"]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    stage = _stages(DOCKERFILE.read_text())["operator"]
    argv = _effective_command(stage, container.get("command"), container.get("args"))
    assert argv[0] == "avatar-operator"
    args = cli._parser().parse_args(argv[1:])  # exits (fails the test) on an argument the CLI lacks
    assert args.command == "run"
    env = {e["name"] for e in container["env"]}
    unknown = env - _settings_env_names() - {"POD_ID"}  # POD_ID: kopf's peering identity
    assert not unknown, f"the chart sets variables the operator never reads: {unknown}"
    if "clusterWide=true" in sets:
        assert args.all_namespaces and not args.namespace
    else:
        assert args.namespace == (["a", "b"] if "watchNamespaces={a,b}" in sets else ["avatar-system"])
    if "replicaCount=2" in sets:
        assert args.peering == "rel-avatar-operator" and not args.standalone
        assert {"LIVEKIT_API_KEY", "LIVEKIT_API_SECRET"} <= env
    else:
        assert args.standalone and deployment["spec"]["strategy"]["type"] == "Recreate"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert args.liveness == f"http://0.0.0.0:{ports['health']}/healthz"
    assert args.metrics_port == ports.get("metrics", 0)


def test_the_operator_pod_is_restricted() -> None:
    (deployment,) = [d for d in _rendered() if d["kind"] == "Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 10001
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is True
    sc = container["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}


def _rules(docs: Sequence[dict[str, Any]]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(d["kind"], d["metadata"].get("namespace", ""), r) for d in docs if d["kind"] in ("Role", "ClusterRole") for r in d["rules"]]


@pytest.mark.parametrize("sets", [(), ("watchNamespaces={a,b}", "replicaCount=3"), ("clusterWide=true",), ("clusterWide=true", "replicaCount=2")])
def test_rbac_names_each_verb_and_never_lists_secrets(sets: tuple[str, ...]) -> None:
    docs = _rendered(*sets)
    rules = _rules(docs)
    assert rules
    for kind, _, rule in rules:
        assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"], rule
        if "secrets" in rule["resources"]:
            assert not {"list", "watch"} & set(rule["verbs"]), rule
            assert kind == "ClusterRole" if "clusterWide=true" in sets else kind == "Role"
    cluster = [r for kind, _, r in rules if kind == "ClusterRole"]
    if "clusterWide=true" not in sets:
        # Namespaced mode: nothing about sessions, pods or secrets cluster-wide.
        assert {res for r in cluster for res in r["resources"]} == {"customresourcedefinitions", "namespaces"}
        namespaces = {ns for kind, ns, _ in rules if kind == "Role"}
        assert namespaces == ({"a", "b"} if sets else {"avatar-system"})
    peering = [d for d in docs if d["kind"] in ("KopfPeering", "ClusterKopfPeering")]
    if any(s.startswith("replicaCount=") for s in sets):
        assert peering and all(d["metadata"]["name"] == "rel-avatar-operator" for d in peering)
        patch = [r for _, _, r in rules if "patch" in r["verbs"] and r["apiGroups"] == ["kopf.dev"]]
        assert patch and all(r.get("resourceNames") == ["rel-avatar-operator"] for r in patch)
    else:
        assert not peering and not [r for _, _, r in rules if r["apiGroups"] == ["kopf.dev"]]


def test_service_monitor_is_rendered_only_when_enabled() -> None:
    assert not [d for d in _rendered() if d["kind"] == "ServiceMonitor"]
    (monitor,) = [d for d in _rendered("serviceMonitor.enabled=true") if d["kind"] == "ServiceMonitor"]
    (service,) = [d for d in _rendered() if d["kind"] == "Service"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]


def test_every_library_the_operator_imports_is_one_of_its_dependencies() -> None:
    """The image installs [project] dependencies only: a library the dev venv has through
    another's dependencies (pydantic-settings came with livekit-agents) would crash it at start."""
    import ast
    import importlib.metadata

    imported: set[str] = set()
    for path in (ROOT / "operator" / "avatar_operator").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                imported.add(node.module.split(".")[0])
    third_party = imported - set(sys.stdlib_module_names) - {"avatar_operator", "avatar_runner", "__future__"}
    provided = importlib.metadata.packages_distributions()
    declared = _requirement_names(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"])
    missing = {m: provided.get(m) for m in third_party if not {d.lower().replace("_", "-") for d in provided.get(m, [])} & declared}
    assert not missing, f"imported by the operator but not in [project] dependencies: {missing}"
