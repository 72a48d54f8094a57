"""The gateway on the real stack, smallest round: operator + warm pool + tenant + `avatar-operator gateway`;
the plugin's JSON /launch with a token minted as the plugin mints it gets 200 once the session holds a
slot, the session has the expected spec, a retry finds it, and /tasks/{id}/stop deletes it.

The wider proof (the real plugin and inference.AvatarSession in a livekit-agents job, refusals,
concurrency, TTL) is in tests/e2e/test_gateway_*.py and tests/integration/test_gateway_*.py.
"""

from __future__ import annotations

import json
import pathlib
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from livekit import api

from tests.conftest import Stack
from tests.harness.gateway_bed import POOL, TENANT, BedConfig, GatewayBed, condition

AVATAR_ID = "A91SMOKE"


@pytest.fixture
def bed(stack: Stack, tmp_path: pathlib.Path) -> Iterator[GatewayBed]:
    b = GatewayBed(stack, tmp_path / "bed", BedConfig(runners=1, slots=2))
    try:
        b.up()
        yield b
    finally:
        b.down()


def plugin_token(stack: Stack, room: str) -> str:
    """livekit.plugins.bithuman.avatar._start_cloud's token."""
    return (
        api.AccessToken(api_key=stack.livekit_api_key, api_secret=stack.livekit_api_secret)
        .with_kind("agent")
        .with_identity("bithuman-avatar-agent")
        .with_name("bitHuman Avatar")
        .with_grants(api.VideoGrants(room_join=True, room=room))
        .with_attributes({"lk.publish_on_behalf": "agent-smoke"})
        .to_jwt()
    )


def post(url: str, body: dict[str, Any] | None, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method="POST", headers={"Content-Type": "application/json", **headers})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_a_json_launch_makes_the_session(stack: Stack, bed: GatewayBed) -> None:
    room = "gw-smoke-room"
    body = {
        "livekit_url": stack.livekit_url,
        "livekit_token": plugin_token(stack, room),
        "room_name": room,
        "mode": "cpu",
        "agent_id": AVATAR_ID,
    }
    status, answer = post(f"{bed.gateway_url}/launch", body, {"api-secret": bed.api_key})
    assert status == 200, (answer, bed.logs().get("gateway.log", "")[-3000:])
    assert answer["status"] == "pending"
    namespace, name = answer["task_id"].split("/")
    assert namespace == bed.namespace and name.startswith("gw-")

    session = bed.get("avs", name)
    assert session is not None
    assert condition(session, "RunnerScheduled")["status"] == "True"
    spec = session["spec"]
    assert (spec["room"], spec["agentIdentity"], spec["poolRef"], spec["livekit"]) == (
        room,
        "agent-smoke",
        {"name": POOL},
        {"url": stack.livekit_url, "secretRef": {"name": TENANT}},
    )
    assert (spec["avatarParticipant"]["identity"], spec["avatarParticipant"]["name"]) == ("bithuman-avatar-agent", "bitHuman Avatar")
    assert spec["ttlSecondsAfterFinished"] == 300
    labels = session["metadata"]["labels"]
    assert labels["avatar-operator.bithuman.ai/gateway-tenant"] == TENANT
    assert labels["avatar-operator.bithuman.ai/gateway-protocol"] == "plugin"

    # The plugin retries a launch whose answer it lost: same task, still one session.
    again, answer2 = post(f"{bed.gateway_url}/launch", body, {"api-secret": bed.api_key})
    assert (again, answer2["task_id"]) == (200, answer["task_id"])
    assert [s["metadata"]["name"] for s in bed.sessions()] == [name]

    # A key no tenant registered: 401, naming no key.
    status, refused = post(f"{bed.gateway_url}/launch", body, {"api-secret": "not-a-key"})
    assert status == 401 and refused["error"]["code"] == "unauthorized" and "not-a-key" not in json.dumps(refused)

    with urllib.request.urlopen(f"{bed.gateway_url}/metrics", timeout=10) as r:
        metrics = r.read().decode()
    assert 'avatar_gateway_requests_total{outcome="ok",protocol="plugin"} 2.0' in metrics
    assert 'avatar_gateway_requests_total{outcome="unauthorized",protocol="plugin"} 1.0' in metrics

    status, stopped = post(f"{bed.gateway_url}/tasks/{answer['task_id']}/stop", None, {"Authorization": f"Bearer {bed.api_key}"})
    assert (status, stopped["status"]) == (200, "stopped")
    bed.wait_gone(name)
    assert not bed.leaked(bed.api_key, body["livekit_token"], stack.livekit_api_secret)
