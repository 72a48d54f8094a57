"""The chart's finalizer policy on the real kube-apiserver: the session is created with the
operator's finalizer, so the operator never patches it on, and kopf still releases it at deletion.

The same operator serves a namespace outside the policy's binding, where kopf adds the finalizer
itself, as it does on any cluster without the API."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from avatar_operator.api import names

from tests.conftest import RUN_PREFIX, Stack
from tests.harness import finalizer_policy
from tests.integration.conftest import Operator, get_json, wait_for

pytestmark = pytest.mark.stack

CREATOR = "kubectl-create"  # the manager kubectl create writes as


@pytest.fixture
def served(stack: Stack, credentials: str) -> Iterator[str]:
    """The test's namespace, inside the policy's binding."""
    finalizer_policy.install(stack, [credentials])
    yield credentials
    finalizer_policy.remove(stack)


@pytest.fixture
def outside(stack: Stack, credentials: str) -> Iterator[str]:
    """A second namespace the operator serves and the policy does not, with the same Secrets."""
    ns = f"{RUN_PREFIX}{uuid.uuid4().hex[:10]}"
    stack.kubectl("create", "namespace", ns)
    for name in ("livekit-credentials", "bithuman-credentials"):
        secret = get_json(stack, "secret", name, "-n", credentials)
        secret["metadata"] = {"name": name}
        stack.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(secret))
    yield ns
    stack.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def _create(stack: Stack, ns: str, name: str, finalizers: list[str] | None = None, *, dry_run: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, **({"finalizers": finalizers} if finalizers else {})}
    spec = {"room": f"room-{ns}-{name}", "agentIdentity": "agent-1", "avatarId": "A-policy"}
    manifest = {"apiVersion": names.API_VERSION, "kind": names.KIND, "metadata": meta, "spec": spec}
    return dict(json.loads(stack.kubectl("create", "-n", ns, "-o", "json", "--show-managed-fields", *(["--dry-run=server"] if dry_run else []), "-f", "-", input=json.dumps(manifest)).stdout))


def _finalizer_writers(obj: dict[str, Any]) -> set[str]:
    """The field managers that own metadata.finalizers."""
    return {e["manager"] for e in obj["metadata"].get("managedFields") or [] if "f:finalizers" in (e.get("fieldsV1") or {}).get("f:metadata", {})}


def _phase(stack: Stack, ns: str, name: str) -> str | None:
    return (get_json(stack, "avatarsession", name, "-n", ns).get("status") or {}).get("phase")


def test_the_session_is_created_with_the_finalizer_and_the_operator_never_patches_it(
    stack: Stack, operator: Operator, served: str, outside: str
) -> None:
    created = _create(stack, served, "admitted")
    assert created["metadata"]["finalizers"] == [names.FINALIZER]  # in the create's own answer
    _create(stack, outside, "patched")
    for ns, name in ((served, "admitted"), (outside, "patched")):
        wait_for(f"{name} Starting", lambda ns=ns, name=name: _phase(stack, ns, name) == "Starting")  # type: ignore[misc]
    admitted = get_json(stack, "avatarsession", "admitted", "-n", served, "--show-managed-fields")
    patched = get_json(stack, "avatarsession", "patched", "-n", outside, "--show-managed-fields")
    assert admitted["metadata"]["finalizers"] == patched["metadata"]["finalizers"] == [names.FINALIZER]
    # Admission's change is no manager's write; outside the binding kopf's patch owns the field.
    assert _finalizer_writers(admitted) == set(), admitted["metadata"]["managedFields"]
    assert _finalizer_writers(patched) - {CREATOR}, patched["metadata"]["managedFields"]

    for ns, name in ((served, "admitted"), (outside, "patched")):
        stack.kubectl("delete", "avatarsession", name, "-n", ns, "--wait=true", "--timeout=60s")
        assert stack.kubectl("get", "avatarsession", name, "-n", ns, check=False).returncode != 0


def test_the_policy_keeps_the_users_finalizers_and_adds_none_twice(stack: Stack, served: str, outside: str) -> None:
    theirs = "example.com/keep"
    # Server-side dry runs: admission runs in full, nothing is stored.
    got = _create(stack, served, "theirs", [theirs], dry_run=True)["metadata"]["finalizers"]
    assert sorted(got) == sorted([theirs, names.FINALIZER])
    assert _create(stack, served, "ours", [names.FINALIZER], dry_run=True)["metadata"]["finalizers"] == [names.FINALIZER]
    assert finalizer_policy.finalizers_at_create(stack, outside) == []  # another release's namespace is not touched
