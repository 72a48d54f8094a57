"""kopf keeps watched bodies without managedFields, and the seam it is done at is where kopf still looks."""

from __future__ import annotations

import inspect
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from kopf._cogs.clients import watching
from kopf._core.reactor import queueing

from avatar_operator.controller import lean_bodies


def _session(name: str) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "uid": f"uid-{name}",
            "managedFields": [{"manager": "kubectl", "operation": "Update", "fieldsV1": {"f:spec": {}}}],
            "annotations": {"kubectl.kubernetes.io/last-applied-configuration": '{"spec": {"room": "r"}}', "keep": "me"},
        },
        "spec": {"room": "r"},
    }


async def test_listed_and_watched_objects_lose_managed_fields_and_nothing_else() -> None:
    events: list[Any] = [{"type": None, "object": _session("a")}, watching.Bookmark.LISTED, {"type": "MODIFIED", "object": _session("b")}]

    async def watch(**kwargs: Any) -> AsyncIterator[Any]:
        assert kwargs == {"namespace": "ns"}
        for event in events:
            yield event

    seen = [e async for e in lean_bodies.lean(watch)(namespace="ns")]
    assert seen[1] is watching.Bookmark.LISTED
    assert [e["object"]["metadata"] for e in (seen[0], seen[2])] == [
        {"name": "a", "uid": "uid-a", "annotations": {"keep": "me"}},
        {"name": "b", "uid": "uid-b", "annotations": {"keep": "me"}},
    ]
    assert seen[2]["object"]["spec"] == {"room": "r"}


def test_an_error_object_passes_as_it_came() -> None:
    status = {"type": "ERROR", "object": {"kind": "Status", "code": 410}}
    assert lean_bodies.strip(status) == {"type": "ERROR", "object": {"kind": "Status", "code": 410}}


def test_install_wraps_kopf_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(watching, "infinite_watch", watching.infinite_watch)
    lean_bodies.install()
    wrapped = watching.infinite_watch
    lean_bodies.install()
    assert watching.infinite_watch is wrapped
    assert getattr(wrapped, lean_bodies._MARK)


def test_kopf_queueing_still_takes_its_events_from_the_wrapped_function() -> None:
    """The guard for a kopf upgrade: its watcher must call infinite_watch through the module at run
    time (so the wrapped one), not a name imported before the operator wrapped it."""
    assert queueing.watching is watching
    assert "watching.infinite_watch(" in inspect.getsource(queueing.watcher)


def test_bodies_decoded_apart_share_their_keys_and_common_values() -> None:
    wire = '{"type": "MODIFIED", "object": {"metadata": {"name": "%s", "namespace": "ns"}, "status": {"conditions": [{"type": "Ready", "reason": "WaitingForAvatar", "message": "%s"}]}}}'
    long = "x" * (lean_bodies.INTERN_MAX + 1)
    a, b = (lean_bodies.strip(json.loads(wire % (name, long))) for name in ("a", "b"))
    ca, cb = a["object"]["status"]["conditions"][0], b["object"]["status"]["conditions"][0]
    assert ca == cb == {"type": "Ready", "reason": "WaitingForAvatar", "message": long}
    assert all(ka is kb for ka, kb in zip(ca, cb, strict=True))  # the keys
    assert ca["reason"] is cb["reason"] and a["object"]["metadata"]["namespace"] is b["object"]["metadata"]["namespace"]
    assert ca["message"] is not cb["message"]  # too long to be worth a lookup
    assert a["object"]["metadata"]["name"] == "a" and b["object"]["metadata"]["name"] == "b"


def test_sharing_keeps_every_json_value_as_it_was() -> None:
    obj = {"metadata": {"name": "a", "generation": 2}, "spec": {"n": 1.5, "on": True, "off": None, "list": [1, "two", {"k": [False]}]}}
    raw = json.loads(json.dumps({"type": "ADDED", "object": obj}))
    assert lean_bodies.strip(raw) == {"type": "ADDED", "object": obj}
