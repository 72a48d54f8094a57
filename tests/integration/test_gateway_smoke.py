"""The gateway on the real stack, smallest round: operator + warm pool + tenant + `avatar-operator gateway`;
the plugin's JSON /launch with a token minted as the plugin mints it gets 200 once the session holds a
slot, the session has the expected spec (the pool picked by its spec.avatarIds), a retry finds it; a
multipart form with an image file makes a session whose image is a Secret it owns; the tenant's
MAX_SESSIONS answers the next one 403; /tasks/{id}/stop deletes them.

The wider proof (the real plugin and inference.AvatarSession in a livekit-agents job, refusals,
concurrency, TTL) is in tests/e2e/test_gateway_*.py and tests/integration/test_gateway_*.py.
"""

from __future__ import annotations

import io
import json
import pathlib
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from livekit import api
from PIL import Image

from tests.conftest import Stack
from tests.harness.gateway_bed import POOL, TENANT, BedConfig, GatewayBed, condition
from tests.harness.polling import wait_until

AVATAR_ID = "A91SMOKE"


@pytest.fixture
def bed(stack: Stack, tmp_path: pathlib.Path) -> Iterator[GatewayBed]:
    cfg = BedConfig(runners=1, slots=3, avatar_ids=(AVATAR_ID,), tenant_extra={"MAX_SESSIONS": "2"})
    b = GatewayBed(stack, tmp_path / "bed", cfg)
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


def post(url: str, body: dict[str, Any] | bytes | None, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
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
    assert session["metadata"]["annotations"]["avatar-operator.bithuman.ai/gateway-avatar-id"] == AVATAR_ID

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

    # The form the plugin sends a custom endpoint, with a file: the image goes into a Secret the session owns.
    room2 = "gw-smoke-form"
    form, content_type = multipart(
        {"livekit_url": stack.livekit_url, "livekit_token": plugin_token(stack, room2), "room_name": room2, "avatar_id": AVATAR_ID},
        jpeg(),
    )
    status, answer2 = post(f"{bed.gateway_url}/launch", form, {"Authorization": f"Bearer {bed.api_key}", "Content-Type": content_type})
    assert status == 200, answer2
    name2 = answer2["task_id"].split("/")[1]
    session2 = bed.get("avs", name2)
    assert session2 is not None
    ref = session2["spec"]["avatarImageFrom"]["secretKeyRef"]
    assert ref == {"name": f"{name2}-image", "key": "avatar-image"}
    image_secret = bed.get("secret", ref["name"])
    assert image_secret is not None
    assert [o["uid"] for o in image_secret["metadata"]["ownerReferences"]] == [session2["metadata"]["uid"]]

    # MAX_SESSIONS is 2: a third room is refused, and nothing is made for it.
    room3 = "gw-smoke-third"
    third = {**body, "livekit_token": plugin_token(stack, room3), "room_name": room3}
    status, refused = post(f"{bed.gateway_url}/launch", third, {"api-secret": bed.api_key})
    assert (status, refused["error"]["code"]) == (403, "session_limit"), refused
    assert sorted(s["metadata"]["name"] for s in bed.sessions()) == sorted([name, name2])

    for task_id, session_name in ((answer["task_id"], name), (answer2["task_id"], name2)):
        status, stopped = post(f"{bed.gateway_url}/tasks/{task_id}/stop", None, {"Authorization": f"Bearer {bed.api_key}"})
        assert (status, stopped["status"]) == (200, "stopped")
        bed.wait_gone(session_name)
    # Owned by the session: the garbage collector takes the image with it.
    wait_until("the image Secret collected", lambda: bed.get("secret", ref["name"]) is None, 30, 0.2)
    assert not bed.leaked(bed.api_key, body["livekit_token"], stack.livekit_api_secret)


def jpeg() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 120, 90)).save(out, format="JPEG")
    return out.getvalue()


def multipart(fields: dict[str, str], image: bytes) -> tuple[bytes, str]:
    """A multipart body as aiohttp.FormData writes the plugin's (text fields, then avatar_image as a file)."""
    boundary = uuid.uuid4().hex
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode() for k, v in fields.items()]
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="avatar_image"; filename="avatar.jpg"\r\n'
        "Content-Type: image/jpeg\r\n\r\n".encode() + image + b"\r\n"
    )
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"
