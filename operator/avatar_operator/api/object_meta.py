"""An object's metadata as the API server checks it, and the names the operator derives from it.

The API server checks a custom resource's name as a DNS-1123 subdomain;
`avatar-operator validate` does the same offline, and the worker checks the
names it will give what it makes (`names.py`). Pure: no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from avatar_operator.api import names, rules
from avatar_operator.api import spec as spec_mod

Problem = rules.Problem

_SUBDOMAIN = re.compile(spec_mod.DNS_SUBDOMAIN)
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
NAMESPACE_MAX = 63
_RUNNER_SUFFIX = "0" * 6  # pool_worker names a pool's runner with secrets.token_hex(3)
# The names the operator gives what it makes for an object of each kind (names.py).
DERIVED: dict[str, tuple[tuple[str, Callable[[str], str]], ...]] = {
    names.KIND: (("runner pod", names.runner_pod_name), ("token Secret", names.token_secret_name)),
    names.POOL_KIND: (
        ("token Secret", names.pool_token_secret_name),
        ("runner pods", lambda pool: names.pool_runner_name(pool, _RUNNER_SUFFIX)),
    ),
}
_SUBDOMAIN_RULE = (
    f"at most {names.NAME_MAX} characters of lowercase letters, digits, '-' and '.', each '.'-separated part "
    "starting and ending with a letter or digit (e.g. lobby-avatar)"
)


def is_subdomain(name: str) -> bool:
    """The API server's test for a custom resource's name (DNS-1123 subdomain)."""
    return len(name) <= names.NAME_MAX and _SUBDOMAIN.fullmatch(name) is not None


def _derived_problems(kind: str, name: str) -> list[Problem]:
    problems = []
    for what, derive in DERIVED.get(kind, ()):
        child = derive(name)
        if not is_subdomain(child):
            longest = names.NAME_MAX - (len(derive("a")) - 1)
            problems.append(
                Problem(
                    "metadata.name",
                    f"the operator names the {kind}'s {what} after it, and {child!r} is not a valid object "
                    f"name: use a name of at most {longest} characters",
                )
            )
    return problems


def problems(obj: Mapping[str, Any], kind: str) -> list[Problem]:
    """metadata.name, generateName and namespace as the API server checks them,
    and the names the operator derives from the name."""
    meta = obj.get("metadata")
    if not isinstance(meta, Mapping):
        return [] if meta is None else [Problem("metadata", "must be an object")]
    problems = []
    for field in ("name", "generateName", "namespace"):
        value = meta.get(field)
        if value is not None and not isinstance(value, str):
            problems.append(Problem(f"metadata.{field}", "must be a string"))
    name, prefix, namespace = (meta.get(f) for f in ("name", "generateName", "namespace"))
    if isinstance(name, str) and name:
        if not is_subdomain(name):
            problems.append(Problem("metadata.name", f"{name!r} is not a valid {kind} name: {_SUBDOMAIN_RULE}"))
        else:
            problems += _derived_problems(kind, name)
    # The API server checks a generateName as a name, a trailing '-' allowed.
    if isinstance(prefix, str) and prefix and not is_subdomain(prefix[:-1] + "a" if prefix.endswith("-") else prefix):
        problems.append(Problem("metadata.generateName", f"{prefix!r} is not a valid name prefix: {_SUBDOMAIN_RULE}"))
    if isinstance(namespace, str) and namespace and not (len(namespace) <= NAMESPACE_MAX and _DNS_LABEL.fullmatch(namespace)):
        problems.append(
            Problem(
                "metadata.namespace",
                f"{namespace!r} is not a namespace name: at most {NAMESPACE_MAX} lowercase letters, digits and "
                "'-', starting and ending with a letter or digit",
            )
        )
    return problems
