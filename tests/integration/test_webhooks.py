"""LiveKit's webhooks on the real stack: livekit-server posts them signed, the operator's receiver wakes the session.

The operator here polls LiveKit once at the watch's start and then only every
600 s (AVATAR_WEBHOOK_FALLBACK_POLL), so an avatar that joins after the first
poll is seen Ready in time only through a webhook.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from livekit import api

from tests.conftest import Stack
from tests.harness import stand_in_avatar
from tests.harness.net import free_port, metric
from tests.harness.operator_process import OperatorProcess, operator_env
from tests.integration.conftest import (
    BITHUMAN_SECRET,
    FakeAPI,
    apply_crds,
    get_json,
    secret_manifest,
    wait_for,
)

pytestmark = pytest.mark.stack

PREFIX = f"whk{uuid.uuid4().hex[:4]}-"


@pytest.fixture(scope="module")
def receiver(stack: Stack, fake_api: FakeAPI) -> Iterator[tuple[OperatorProcess, str, int]]:
    """An operator with the receiver on; (it, the receiver's URL, its metrics port)."""
    apply_crds(stack)
    env = operator_env(
        stack.process_env(), livekit_url=stack.livekit_url, fake_urls=fake_api.urls, runner_image="registry.invalid/avatar-runner:test",
        extra={"AVATAR_WEBHOOK_FALLBACK_POLL": "600", "AVATAR_ABSENCE_GRACE": "2"},
    )
    assert env.get("AVATAR_WEBHOOK_PORT"), "the stack's env names no webhook port (AVATAR_STACK_WEBHOOK_PORTS): run `make stack-up`"
    url = f"http://127.0.0.1:{env['AVATAR_WEBHOOK_PORT']}/webhook"
    metrics_port = free_port()
    op = OperatorProcess(env, stack.dir / "test-artifacts" / "operator-webhooks.log", [f"{PREFIX}*"], extra_args=("--metrics-port", str(metrics_port)), stop_grace=20.0)
    op.start()
    try:
        wait_for("the webhook receiver listening", lambda: _post(url, "{}", None) == 401 or not op.alive(), timeout=60)
        assert op.alive(), op.logs()[-3000:]
        yield op, url, metrics_port
    finally:
        op.stop()


@pytest.fixture
def ns(stack: Stack) -> Iterator[str]:
    name = f"{PREFIX}{uuid.uuid4().hex[:8]}"
    stack.kubectl("create", "namespace", name)
    stack.kubectl("label", "namespace", name, "pod-security.kubernetes.io/enforce=restricted", "avatar-operator.dev/test=true")
    stack.kubectl(
        "apply", "-n", name, "-f", "-",
        input=secret_manifest("livekit-credentials", {"LIVEKIT_API_KEY": stack.livekit_api_key, "LIVEKIT_API_SECRET": stack.livekit_api_secret}),
    )
    stack.kubectl("apply", "-n", name, "-f", "-", input=secret_manifest("bithuman-credentials", {"BITHUMAN_API_SECRET": BITHUMAN_SECRET}))
    yield name
    stack.kubectl("delete", "avatarsessions", "--all", "-n", name, "--timeout=60s", check=False)
    stack.kubectl("delete", "namespace", name, "--wait=false", check=False)


def _post(url: str, body: str, auth: str | None) -> int:
    req = urllib.request.Request(url, data=body.encode(), method="POST", headers={"Content-Type": "application/webhook+json"})
    if auth is not None:
        req.add_header("Authorization", auth)
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as e:
        return int(e.code)
    except OSError:
        return 0  # not listening yet


def _signed(body: str, key: str, secret: str) -> str:
    digest = base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()
    return api.AccessToken(key, secret).with_sha256(digest).to_jwt()


def _cloud(stack: Stack, ns: str, name: str) -> None:
    spec = {"room": f"room-{name}", "agentIdentity": "agent-1", "avatarId": f"A-{name}", "connection": {"maxRetry": 3, "retryInterval": 0.2, "timeout": 2}}
    manifest = {"apiVersion": "avatar-operator.dev/v1alpha1", "kind": "AvatarSession", "metadata": {"name": name}, "spec": spec}
    stack.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(manifest))


def _status(stack: Stack, ns: str, name: str) -> dict[str, Any]:
    return dict(get_json(stack, "avatarsession", name, "-n", ns).get("status") or {})


def _cond(st: dict[str, Any], ctype: str) -> dict[str, Any]:
    return next((c for c in st.get("conditions") or [] if c["type"] == ctype), {})


def _token(fake: FakeAPI, room: str) -> str:
    for r in reversed(fake.requests()):
        fields = r.get("json") or r.get("form") or {}
        if r.get("route") == "session" and fields.get("room_name") == room:
            return str(fields["livekit_token"])
    raise AssertionError(f"no request for room {room}")


def _woke(metrics_port: int) -> float:
    page = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    return metric(page, 'avatar_operator_webhooks_total{outcome="woke"}')


def _webhook_event(room: str, identity: str) -> str:
    return json.dumps({"event": "track_published", "room": {"name": room}, "participant": {"identity": identity}})


def test_forged_webhooks_are_refused_with_401_and_wake_nothing(
    stack: Stack, receiver: tuple[OperatorProcess, str, int], fake_api: FakeAPI, ns: str
) -> None:
    _, url, metrics_port = receiver
    _cloud(stack, ns, "forged")
    wait_for("accepted", lambda: _cond(_status(stack, ns, "forged"), "CloudRequestAccepted").get("status") == "True")
    woke = _woke(metrics_port)
    body = _webhook_event("room-forged", "bithuman-avatar-agent")
    assert _post(url, body, None) == 401  # unsigned
    assert _post(url, body, _signed(body, stack.livekit_api_key, "not-the-stacks-secret-" + uuid.uuid4().hex)) == 401
    assert _post(url, body, _signed(body, "another-key", stack.livekit_api_secret)) == 401
    assert _post(url, body.replace("forged", "forgeD"), _signed(body, stack.livekit_api_key, stack.livekit_api_secret)) == 401  # another body
    assert _woke(metrics_port) == woke
    page = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    assert metric(page, 'avatar_operator_webhooks_total{outcome="refused"}') >= 4
    assert _cond(_status(stack, ns, "forged"), "Ready").get("status") == "False"
    # Signed with the stack's key, the same note is taken: the receiver is not refusing everything.
    assert _post(url, body, _signed(body, stack.livekit_api_key, stack.livekit_api_secret)) == 200
    assert _woke(metrics_port) == woke + 1


def test_livekits_webhook_makes_the_session_ready_without_waiting_for_a_poll(
    stack: Stack, receiver: tuple[OperatorProcess, str, int], fake_api: FakeAPI, ns: str
) -> None:
    op, _, metrics_port = receiver
    _cloud(stack, ns, "live")
    wait_for("accepted", lambda: _cond(_status(stack, ns, "live"), "CloudRequestAccepted").get("status") == "True")
    token = _token(fake_api, "room-live")
    woke = _woke(metrics_port)

    async def cloud_worker() -> float:
        """Plays bitHuman's cloud worker; the seconds from its video published to Ready."""
        async with stand_in_avatar.publishing(stack.livekit_url, token) as send_frame:
            published = time.monotonic()
            deadline = published + 60  # far under the 600 s poll
            while time.monotonic() < deadline:
                send_frame()
                if _cond(await asyncio.to_thread(_status, stack, ns, "live"), "Ready").get("status") == "True":
                    return time.monotonic() - published
                await asyncio.sleep(0.1)
            raise AssertionError(f"not Ready 60 s after the avatar published; operator log: {op.logs()[-3000:]}")

    took = asyncio.run(cloud_worker())
    print(f"Ready {took:.2f} s after the avatar published")
    assert _woke(metrics_port) > woke
    st = _status(stack, ns, "live")
    assert _cond(st, "Ready")["reason"] == "AvatarPublishing" and st["readyTime"]
    # Leaving: participant_left wakes the worker too, and after the 2 s grace the session ends.
    wait_for("Succeeded after the avatar left", lambda: _status(stack, ns, "live").get("phase") == "Succeeded", timeout=60)
