"""kopf's own list and watch, against the real kube-apiserver, hand kopf sessions without
managedFields or kubectl's last-applied copy and with their strings shared
(controller/lean_bodies.py), while the API server keeps both."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import kopf
import pytest
from avatar_operator.api import names
from avatar_operator.clients import kube_login
from avatar_operator.controller import lean_bodies, login
from kopf._cogs.clients import auth, watching
from kopf._cogs.structs import credentials, references

from tests.conftest import Stack
from tests.integration.conftest import get_json

pytestmark = pytest.mark.stack

RESOURCE = references.Resource(
    group=names.GROUP, version=names.VERSION, plural=names.PLURAL, kind=names.KIND, namespaced=True, verbs=["list", "watch"]
)


def session(name: str) -> str:
    spec = {"room": f"room-{name}", "agentIdentity": "agent-1", "avatarImage": "https://example.invalid/a.jpg"}
    return json.dumps({"apiVersion": f"{names.GROUP}/{names.VERSION}", "kind": names.KIND, "metadata": {"name": name}, "spec": spec})


async def sessions_as_kopf_sees_them(namespace: str, wanted: set[str]) -> AsyncIterator[dict[str, Any]]:
    """Each wanted session's first event from kopf's infinite_watch, the operator's wrapper installed."""
    async for event in watching.infinite_watch(settings=kopf.OperatorSettings(), resource=RESOURCE, namespace=namespace):
        if isinstance(event, dict) and event["object"]["metadata"]["name"] in wanted:
            wanted.discard(event["object"]["metadata"]["name"])
            yield event
            if not wanted:
                return


async def test_kopf_lists_and_watches_sessions_without_managed_fields(
    crd_stack: Stack, ns: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    stack, namespace = crd_stack, ns  # no operator acts on this namespace: the sessions stay as applied
    monkeypatch.setattr(watching, "infinite_watch", watching.infinite_watch)  # put back after the test
    lean_bodies.install()
    vault = credentials.Vault()
    await vault.populate({"stack": login.connection_info(kube_login.load(stack.kubeconfig))})
    auth.vault_var.set(vault)

    stack.kubectl("apply", "-n", namespace, "-f", "-", input=session("listed"))  # there before the watch: listed
    seen: list[dict[str, Any]] = []

    async def follow() -> None:
        async for event in sessions_as_kopf_sees_them(namespace, {"listed", "watched"}):
            seen.append(event)

    task = asyncio.create_task(follow())
    while not seen:
        await asyncio.sleep(0.1)
    stack.kubectl("apply", "-n", namespace, "-f", "-", input=session("watched"))  # a watch event
    await asyncio.wait_for(task, 30)

    by_name = {e["object"]["metadata"]["name"]: e for e in seen}
    assert by_name["listed"]["type"] is None and by_name["watched"]["type"] == "ADDED"
    for name, event in by_name.items():
        assert "managedFields" not in event["object"]["metadata"], name
        assert lean_bodies.LAST_APPLIED not in (event["object"]["metadata"].get("annotations") or {}), name
        assert event["object"]["spec"]["room"] == f"room-{name}"
        stored = get_json(stack, "avatarsession", name, "-n", namespace, "--show-managed-fields")
        assert stored["metadata"]["managedFields"], "the API server keeps them"
        assert lean_bodies.LAST_APPLIED in stored["metadata"]["annotations"]
    one, other = (by_name[n]["object"]["spec"] for n in ("listed", "watched"))
    assert all(a is b for a, b in zip(one, other, strict=True)), "the keys are held once"
    assert one["avatarImage"] is other["avatarImage"]
