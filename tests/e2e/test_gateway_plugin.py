"""The unmodified livekit-plugins-bithuman, in a real livekit-agents job, pointed at the gateway.

One namespace (tests/harness/gateway_bed.py): an operator, a warm pool of one
portrait runner listing the avatar id, a tenant, `avatar-operator gateway`.
A worker (tests/agents/avatar_agent.py) registered with the stack's
livekit-server is dispatched into a room; its job starts
`bithuman.AvatarSession(api_url=<gateway>/launch, model=..., api_secret=<tenant key>,
avatar_id=...)` (expression: a form with a Bearer key; essence: JSON with an
api-secret header), speaks a WAV and leaves. A viewer watches: the avatar joins,
its session is Ready, its mouth moves with the speech, its attributes carry no
key, and the session ends when the agent leaves. The figures are printed (-s).
"""

from __future__ import annotations

import asyncio
import pathlib
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from avatar_operator.api import names

from tests.conftest import Stack
from tests.harness import agent_job, gateway_bed
from tests.harness import viewer as harness_viewer
from tests.harness.agent_job import AgentWorker
from tests.harness.gateway_bed import BedConfig, GatewayBed
from tests.harness.polling import wait_until
from tests.harness.viewer import Viewer

AVATAR = "bithuman-avatar-agent"  # the plugin's avatar identity
SPEECH_S = 3.0
TTL_S = "600"


@pytest.fixture(scope="module")
def bed_and_worker(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GatewayBed, AgentWorker]]:
    bed = GatewayBed(
        stack, tmp_path_factory.mktemp("gateway-plugin"),
        BedConfig(runners=1, slots=2, avatar_ids=(gateway_bed.AVATAR_ID,), tenant_extra={"TTL_SECONDS_AFTER_FINISHED": TTL_S}),
    )
    worker = AgentWorker(stack.process_env(), bed.work / "agent.log", api_secret=bed.api_key)
    worker.start()  # it registers while the pool starts
    try:
        bed.up()
        worker.wait_registered()
        yield bed, worker
    finally:
        worker.stop()
        bed.down()


@pytest.fixture
def bed(bed_and_worker: tuple[GatewayBed, AgentWorker]) -> GatewayBed:
    return bed_and_worker[0]


@pytest.fixture
def worker(bed_and_worker: tuple[GatewayBed, AgentWorker]) -> AgentWorker:
    return bed_and_worker[1]


async def say(viewer: Viewer, command: str) -> None:
    await viewer.room.local_participant.publish_data(command.encode(), topic=agent_job.TOPIC)


@pytest.mark.stack
@pytest.mark.parametrize("model", ["expression", "essence"])
async def test_the_plugin_gets_an_avatar_from_the_gateway(
    stack: Stack, bed: GatewayBed, worker: AgentWorker, tmp_path: pathlib.Path, model: str
) -> None:
    room = f"{bed.namespace}-{model}-{uuid.uuid4().hex[:4]}"
    wav = agent_job.write_speech_wav(tmp_path / "speech.wav", SPEECH_S)
    viewer = Viewer()
    key, secret = stack.livekit_api_key, stack.livekit_api_secret
    await viewer.join(stack.livekit_url, harness_viewer.participant_token(key, secret, room, "viewer"))
    try:
        asked = time.time()
        job = await worker.dispatch(room, {
            "avatar": "plugin", "api_url": f"{bed.gateway_url}/launch", "model": model,
            "avatar_id": gateway_bed.AVATAR_ID, "wav": str(wav),
        }, tmp_path)
        agent = (await job.wait_for("joined", 60))["identity"]
        started = await job.wait_for("avatar_started", 60)
        joined = await job.wait_for("avatar_joined", 60)
        name = names.gateway_session_name(gateway_bed.TENANT, room, AVATAR)
        session = await asyncio.to_thread(bed.wait_session, name, "Ready", 60)
        ready_at = time.time()
        listed = await agent_job.participants(stack.env, room)

        def watching() -> bool:  # the viewer's stream settled
            return bool(viewer.video) and time.time() - viewer.video[0][0] > agent_job.SETTLE_S

        await asyncio.to_thread(wait_until, "the viewer to receive the avatar's video", watching, 30, 0.1)
        await say(viewer, "speak")
        speaking = (await job.wait_for("speaking", 10))["t"]
        spoke = (await job.wait_for("spoke", 30))["t"]
        mouth = agent_job.mouth_figures(viewer.video, speaking, spoke)

        await say(viewer, "leave")
        left = (await job.wait_for("left", 20))["t"]

        def ended() -> dict[str, Any] | None:
            obj = bed.get("avs", name)
            return obj if obj and obj["status"].get("phase") == "Succeeded" else None

        final = await asyncio.to_thread(wait_until, f"session {name} Succeeded after the agent left", ended, 30, 0.2)
        ended_at = time.time()
        how = gateway_bed.condition(final, "Reconciling")
        await asyncio.to_thread(
            wait_until, "the avatar to leave the room", lambda: AVATAR not in viewer.room.remote_participants, 20, 0.1
        )
    finally:
        await viewer.leave()

    print(
        f"\nplugin {model}: dispatch to avatar_started (the /launch answered) {started['t'] - asked:.2f} s,"
        f" to avatar joined {joined['t'] - asked:.2f} s, to session Ready {ready_at - asked:.2f} s;"
        f" mouth idle max {mouth['idle_max']:.3f}, speaking max {mouth['speech_max']:.3f},"
        f" open in {mouth['open_share']:.0%} of {mouth['fps']:.1f} fps frames;"
        f" Succeeded {ended_at - left:.2f} s after the agent left ({how['reason']}: {how['message']})"
    )
    # -- the session the gateway made ------------------------------------------
    meta, spec = session["metadata"], session["spec"]
    assert meta["labels"][names.GATEWAY_PROTOCOL_LABEL] == "plugin"
    assert meta["labels"][names.GATEWAY_TENANT_LABEL] == gateway_bed.TENANT
    assert spec["room"] == room and spec["agentIdentity"] == agent
    assert spec["poolRef"]["name"] == gateway_bed.POOL  # chosen by the avatar id: the tenant has no DEFAULT_POOL
    assert spec["livekit"]["secretRef"]["name"] == gateway_bed.TENANT
    assert spec["ttlSecondsAfterFinished"] == int(TTL_S)
    # -- the avatar in the room: on behalf of the agent, no key ----------------
    avatar = listed[AVATAR]
    attributes = dict(avatar.attributes)
    assert attributes.get("lk.publish_on_behalf") == agent
    assert not any(k.lower().replace("-", "_") in ("api_secret", "api_token") for k in attributes), attributes
    assert bed.api_key not in repr(attributes) and bed.api_key not in avatar.metadata
    assert viewer.publishers == {AVATAR}
    # -- its mouth moves with the speech ---------------------------------------
    assert mouth["idle_max"] < 0.02, mouth  # silent: shut
    assert mouth["speech_max"] > 0.1 and mouth["open_share"] > 0.3, mouth  # speaking: open, and often
    # -- it ended because the agent left ----------------------------------------
    assert f"agent {agent!r} left the room" in how["message"], how
    # -- the key in no log ------------------------------------------------------
    assert not bed.leaked(bed.api_key)
