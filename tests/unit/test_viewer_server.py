"""`avatar-operator view` without a cluster: what the page is shown of a session, the Host
check, the page's files, and the message when the bundle is not built."""

from __future__ import annotations

import pathlib
from typing import Any

import pytest
from aiohttp import test_utils
from avatar_operator import settings as settings_mod
from avatar_operator.viewer import access as access_mod
from avatar_operator.viewer import assets, command, server, session_view

SESSION: dict[str, Any] = {
    "metadata": {"name": "demo", "namespace": "avatar-sessions", "annotations": {"note": "not for the page"}},
    "spec": {"room": "demo-room", "agentIdentity": "a", "livekit": {"secretRef": {"name": "lk-creds"}}},
    "status": {
        "phase": "Running",
        "mode": "local",
        "avatarIdentity": "bithuman-avatar-agent",
        "conditions": [
            {"type": "Ready", "status": "True", "reason": "AvatarPublishing", "message": "in the room", "observedGeneration": 1},
        ],
    },
}


def test_summary_and_detail_carry_status_only() -> None:
    assert session_view.summary(SESSION) == {"name": "demo", "room": "demo-room", "phase": "Running", "mode": "local", "ready": True}
    detail = session_view.detail(SESSION)
    assert detail["conditions"] == [
        {"type": "Ready", "status": "True", "reason": "AvatarPublishing", "message": "in the room", "lastTransitionTime": None}
    ]
    assert "lk-creds" not in repr(detail) and "not for the page" not in repr(detail)


def test_a_new_session_shows_pending_not_ready() -> None:
    fresh = {"metadata": {"name": "new"}, "spec": {"room": "r"}}
    assert session_view.summary(fresh) == {"name": "new", "room": "r", "phase": "Pending", "mode": None, "ready": False}


def test_loopback_hosts_are_checked_and_others_are_not() -> None:
    assert server.allowed_hosts("127.0.0.1", 8080) == {"127.0.0.1:8080", "localhost:8080"}
    assert server.allowed_hosts("::1", 9) == {"[::1]:9", "localhost:9"}
    assert server.allowed_hosts("0.0.0.0", 8080) == frozenset()


def test_page_url_names_the_session() -> None:
    assert command.page_url("127.0.0.1", 8080, "demo x") == "http://127.0.0.1:8080/?session=demo+x"
    assert command.page_url("127.0.0.1", 8080, None) == "http://127.0.0.1:8080/"


def test_a_missing_bundle_says_to_run_make_viewer(monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path) -> None:
    monkeypatch.setattr(assets, "BUNDLE", tmp_path / "viewer.js")
    with pytest.raises(assets.AssetsMissing, match="run `make viewer`"):
        assets.check()


async def _client(tmp_path: pathlib.Path, hosts: frozenset[str]) -> test_utils.TestClient:  # type: ignore[type-arg]
    for name in assets.FILES:
        (tmp_path / name).write_text(f"/* {name} */")
    # No API server behind it: these requests never reach the cluster.
    access = access_mod.Access(kube=None, namespace="ns", settings=settings_mod.Settings())  # type: ignore[arg-type]
    client = test_utils.TestClient(test_utils.TestServer(server.app(access, tmp_path, hosts)))
    await client.start_server()
    return client


async def test_serves_the_page_with_a_policy_that_loads_nothing_from_elsewhere(tmp_path: pathlib.Path) -> None:
    client = await _client(tmp_path, frozenset())
    try:
        index = await client.get("/")
        text = await index.text()
        script = await client.get("/viewer.js")
        other = await client.get("/secrets.txt")
    finally:
        await client.close()
    assert index.status == 200 and text == "/* index.html */"
    assert "script-src 'self'" in index.headers["Content-Security-Policy"]
    assert script.headers["Content-Type"].startswith("text/javascript")
    assert other.status == 404


async def test_refuses_a_foreign_host_header(tmp_path: pathlib.Path) -> None:
    client = await _client(tmp_path, frozenset({"127.0.0.1:1"}))
    try:
        resp = await client.get("/api/sessions", headers={"Host": "attacker.example:1"})
        body = await resp.json()
    finally:
        await client.close()
    assert resp.status == 421
    assert body["error"] == "Host 'attacker.example:1' refused: open 127.0.0.1:1"
