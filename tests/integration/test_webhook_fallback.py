"""A lost webhook on the real stack: the receiver listens, livekit-server never posts to it, and the
session is Ready from the fallback poll, whose waits have grown by then but stay within their cap.

(tests/integration/test_webhooks.py has the webhooks delivered.)
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
import uuid
from collections.abc import Iterator

import pytest

from tests.conftest import Stack
from tests.harness import stand_in_avatar
from tests.harness.net import free_port, metric
from tests.harness.operator_process import OperatorProcess, operator_env
from tests.integration.conftest import BITHUMAN_SECRET, FakeAPI, apply_crds, get_json, secret_manifest, wait_for

pytestmark = pytest.mark.stack

PREFIX = f"whf{uuid.uuid4().hex[:4]}-"
FIRST_S, MAX_S = 1.0, 4.0


@pytest.fixture(scope="module")
def deaf(stack: Stack, fake_api: FakeAPI) -> Iterator[tuple[OperatorProcess, int, str]]:
    """An operator whose receiver listens where livekit-server posts nothing; (it, its metrics port, its namespace).

    The namespace exists before the operator starts. kopf lists namespaces once, then starts its
    namespace watch with a listing of its own whose items it takes as already known: one created
    between the two is not served until a restart (CI hit it once, 60 s without a request)."""
    apply_crds(stack)
    ns = f"{PREFIX}{uuid.uuid4().hex[:8]}"
    stack.kubectl("create", "namespace", ns)
    env = operator_env(
        stack.process_env(), livekit_url=stack.livekit_url, fake_urls=fake_api.urls, runner_image="registry.invalid/avatar-runner:test",
        extra={
            "AVATAR_WEBHOOK_PORT": str(free_port()),
            "AVATAR_WEBHOOK_FALLBACK_POLL": str(FIRST_S),
            "AVATAR_WEBHOOK_FALLBACK_POLL_MAX": str(MAX_S),
        },
    )
    assert env.get("AVATAR_WEBHOOK_API_KEY"), "the stack's env has no webhook key: run `make stack-up`"
    metrics_port = free_port()
    op = OperatorProcess(env, stack.dir / "test-artifacts" / "operator-webhook-fallback.log", [f"{PREFIX}*"], extra_args=("--metrics-port", str(metrics_port)))
    op.start()
    try:
        wait_for("the operator's metrics", lambda: _webhooks(metrics_port) is not None or not op.alive(), timeout=60)
        assert op.alive(), op.logs()[-3000:]
        yield op, metrics_port, ns
    finally:
        op.stop()  # the test has deleted its sessions while the operator ran
        stack.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def _webhooks(metrics_port: int) -> float | None:
    try:
        page = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    except OSError:
        return None
    return sum(metric(page, f'avatar_operator_webhooks_total{{outcome="{o}"}}') for o in ("woke", "refused", "ignored"))


def test_a_session_whose_webhooks_are_lost_is_ready_from_the_fallback_poll(
    stack: Stack, deaf: tuple[OperatorProcess, int, str], fake_api: FakeAPI
) -> None:
    op, metrics_port, ns = deaf
    try:
        lk = {"LIVEKIT_API_KEY": stack.livekit_api_key, "LIVEKIT_API_SECRET": stack.livekit_api_secret}
        stack.kubectl("apply", "-n", ns, "-f", "-", input=secret_manifest("livekit-credentials", lk))
        stack.kubectl("apply", "-n", ns, "-f", "-", input=secret_manifest("bithuman-credentials", {"BITHUMAN_API_SECRET": BITHUMAN_SECRET}))
        spec = {"room": f"room-{ns}", "agentIdentity": "agent-1", "avatarId": "A-fallback"}
        manifest = {"apiVersion": "avatar-operator.dev/v1alpha1", "kind": "AvatarSession", "metadata": {"name": "lost"}, "spec": spec}
        stack.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(manifest))
        wait_for("a request to the fake bitHuman API", lambda: _token(fake_api, spec["room"]) is not None)
        time.sleep(3 * MAX_S)  # the waits grow to their cap before the avatar comes
        took = asyncio.run(_publish_until_ready(stack, ns, str(_token(fake_api, spec["room"]))))
        print(f"Ready {took:.2f} s after the avatar published, with no webhook")
        assert took <= MAX_S + 3.0, f"{took:.1f} s: the fallback poll is past its {MAX_S} s cap; log: {op.logs()[-3000:]}"
        assert _webhooks(metrics_port) == 0  # none reached it: Ready came from a poll
    finally:
        stack.kubectl("delete", "avatarsessions", "--all", "-n", ns, "--timeout=60s", check=False)


def _token(fake: FakeAPI, room: str) -> str | None:
    for r in reversed(fake.requests()):
        fields = r.get("json") or r.get("form") or {}
        if r.get("route") == "session" and fields.get("room_name") == room:
            return str(fields["livekit_token"])
    return None


def _ready(stack: Stack, ns: str) -> bool:
    status = get_json(stack, "avatarsession", "lost", "-n", ns).get("status") or {}
    return any(c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions") or [])


async def _publish_until_ready(stack: Stack, ns: str, token: str) -> float:
    """Plays bitHuman's cloud worker; the seconds from its video published to Ready."""
    async with stand_in_avatar.publishing(stack.livekit_url, token) as send_frame:
        published = time.monotonic()
        while time.monotonic() < published + 60:
            send_frame()
            if await asyncio.to_thread(_ready, stack, ns):
                return time.monotonic() - published
            await asyncio.sleep(0.1)
    raise AssertionError("not Ready 60 s after the avatar published")
