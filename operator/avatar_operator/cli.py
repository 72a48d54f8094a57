"""The `avatar-operator` command: `run`, `crd`, `validate`, `view` and `gateway`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, TextIO

import yaml

from avatar_operator.api import crd, names, rules, validation


class _KubectlLoader(yaml.SafeLoader):
    """YAML as kubectl reads it: a timestamp-looking scalar stays a string."""


_KubectlLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


class InputError(Exception):
    """A file that can't be read as YAML; its message is one line."""


def _documents(name: str, stream: TextIO) -> list[Any]:
    try:
        return list(yaml.load_all(stream, Loader=_KubectlLoader))
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        raise InputError(f"{name}: invalid YAML: {e.problem or e.context}{where}") from e
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise InputError(f"{name}: invalid YAML: {' '.join(str(e).split())}") from e
    except RecursionError as e:
        raise InputError(f"{name}: invalid YAML: nested too deeply") from e


def _objects(docs: Sequence[Any]) -> Iterator[tuple[int, Any]]:
    """(document number, object) for every object, `kind: List` items included."""
    for number, doc in enumerate(docs, start=1):
        if isinstance(doc, Mapping) and doc.get("kind") == "List" and isinstance(doc.get("items"), list):
            for item in doc["items"]:
                yield number, item
        elif doc is not None:
            yield number, doc


# The kinds `validate` checks, and how.
_VALIDATORS = {names.KIND: validation.validate, names.POOL_KIND: validation.validate_pool}


def _is_ours(obj: Mapping[str, Any]) -> bool:
    api_version = obj.get("apiVersion")
    return obj.get("kind") in _VALIDATORS and isinstance(api_version, str) and api_version.startswith(f"{names.GROUP}/")


def _label(obj: Mapping[str, Any], number: int) -> str:
    meta = obj.get("metadata")
    meta = meta if isinstance(meta, Mapping) else {}
    name = meta.get("name") or (f"{meta['generateName']}*" if meta.get("generateName") else f"(document {number})")
    namespace = meta.get("namespace")
    kind = obj.get("kind")
    return f"{kind} {namespace}/{name}" if namespace else f"{kind} {name}"


def _problems(obj: Mapping[str, Any]) -> list[rules.Problem]:
    problems = []
    if obj.get("apiVersion") != f"{names.GROUP}/{names.VERSION}":
        problems.append(rules.Problem("apiVersion", f"{obj.get('apiVersion')} is not served: use {names.GROUP}/{names.VERSION}"))
    meta = obj.get("metadata")
    if not isinstance(meta, Mapping) or not (meta.get("name") or meta.get("generateName")):
        problems.append(rules.Problem("metadata.name", "required field is missing"))
    return problems + _VALIDATORS[str(obj.get("kind"))](obj)


def validate_files(paths: Sequence[str], out: TextIO, err: TextIO) -> int:
    """Checks every AvatarSession and AvatarPool in `paths` ("-" is stdin); prints one line per problem."""
    checked = invalid = 0
    failed = False
    for path in paths:
        name = "<stdin>" if path == "-" else path
        try:
            if path == "-":
                docs = _documents(name, sys.stdin)
            else:
                with open(path, encoding="utf-8") as f:
                    docs = _documents(name, f)
        except OSError as e:
            print(f"{name}: cannot read: {e.strerror}", file=out)
            failed = True
            continue
        except InputError as e:
            print(e, file=out)
            failed = True
            continue
        for number, obj in _objects(docs):
            if not isinstance(obj, Mapping):
                print(f"{name}: document {number}: not a Kubernetes object", file=out)
                failed = True
                continue
            if not _is_ours(obj):
                continue
            checked += 1
            try:
                problems = _problems(obj)
            except RecursionError:  # a YAML alias that contains itself
                problems = [rules.Problem("spec", "nested too deeply (a self-referencing YAML alias?)")]
            invalid += bool(problems)
            for problem in problems:
                # One line per problem, whatever the keys hold (a newline in a
                # key must not forge a second problem line).
                line = f"{name}: {_label(obj, number)}: {problem}"
                print(line.encode("unicode_escape").decode("ascii"), file=out)
    print(f"{checked} object(s) checked, {invalid} invalid", file=err)
    return 1 if failed or invalid else 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="avatar-operator", description="Talking-avatar sessions for LiveKit rooms.")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run the operator")
    run.add_argument("--namespace", "-n", action="append", help="watch this namespace (repeatable)")
    run.add_argument("--all-namespaces", "-A", action="store_true", help="watch every namespace")
    run.add_argument("--standalone", action="store_true", help="no peering: assume no other operator instance runs")
    run.add_argument("--peering", help="the peering object's name (default: avatar-operator)")
    run.add_argument(
        "--priority",
        type=int,
        help="peering priority; the highest live replica works, the rest wait (default: random, so replicas differ)",
    )
    run.add_argument("--liveness", default="http://0.0.0.0:8080/healthz", help="liveness endpoint URL (default: %(default)s)")
    run.add_argument("--metrics-port", type=int, default=0, help="serve Prometheus metrics on this port (0: off)")
    run.add_argument("--log-format", choices=("plain", "json"), default="plain", help="log line format")
    run.add_argument("--verbose", "-v", action="store_true", help="debug logging")

    commands.add_parser("crd", help="print the AvatarSession CustomResourceDefinition")

    validate = commands.add_parser(
        "validate",
        help="check AvatarSession and AvatarPool manifests offline",
        description="Checks the AvatarSessions and AvatarPools in YAML files against the CRD's rules and the API "
        "server's name rules, without a cluster; every problem of a manifest in one run, and the spec's name for "
        "a plugin argument name. Other objects are skipped. Exit status 0 when all are valid, else 1, with one "
        "line per problem.",
    )
    validate.add_argument("files", nargs="+", metavar="FILE", help="a YAML file, or - for stdin")

    # argparse only: the viewer's server loads in main, when `view` is the command.
    from avatar_operator.viewer import arguments as viewer_arguments

    viewer_arguments.add_arguments(commands.add_parser("view", help="watch a session's avatar in a browser"))
    # argparse only here too: the gateway's server loads in main.
    from avatar_operator.gateway import arguments as gateway_arguments

    gateway_arguments.add_arguments(
        commands.add_parser("gateway", help="serve the plugin's and LiveKit inference's avatar protocols (settings: AVATAR_GATEWAY_*)")
    )
    return parser


def hide_kubernetes_library() -> None:
    """Keeps kopf from importing the kubernetes library in the operator's process.

    kopf imports `kubernetes.client` (every model class, about 15 MB of RSS)
    whenever the library is importable, for isinstance checks and a login the
    operator never uses: clients.kube_login reads the config for both kopf and
    our client. Only before kopf or the library is loaded: a process that
    already has them (a test importing the operator in-process) keeps them."""
    if "kopf" not in sys.modules and "kubernetes" not in sys.modules:
        sys.modules["kubernetes"] = None  # type: ignore[assignment]  # `import kubernetes` now raises ImportError


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "crd":
        sys.stdout.write(crd.render_all())
        return 0
    if args.command == "validate":
        return validate_files(args.files, sys.stdout, sys.stderr)
    if args.command == "view":
        from avatar_operator.viewer import command as viewer_command

        return viewer_command.main(args)
    if args.command == "gateway":
        from avatar_operator.gateway import command as gateway_command

        return gateway_command.main(args)
    hide_kubernetes_library()
    # Imported here: kopf and the handlers load only for the operator itself.
    from avatar_operator import run as run_mod

    return run_mod.main(args)
