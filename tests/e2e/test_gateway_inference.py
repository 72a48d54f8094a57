"""livekit-agents' own `inference.AvatarSession("bithuman/<avatar id>", base_url=<gateway>)`,
in a real livekit-agents job, served by the gateway.

A bed like test_gateway_plugin's (operator, a one-runner warm pool, a tenant,
the gateway), the pool named by the tenant's DEFAULT_POOL this time. The job starts the inference avatar (a
JWT signed by the agent's LiveKit key, an Idempotency-Key), speaks a WAV, then
calls aclose(), which terminates the session at the gateway: measured from the
aclose() call to the session object gone and the avatar gone from the room,
with the agent still in it. The figures are printed (-s).
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

AVATAR = "bithuman-inference-avatar"  # inference.AvatarSession's default identity for provider bithuman
SPEECH_S = 3.0
TERMINATE_BOUND_S = 2.0


@pytest.fixture(scope="module")
def bed_and_worker(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GatewayBed, AgentWorker]]:
    bed = GatewayBed(stack, tmp_path_factory.mktemp("gateway-inference"), BedConfig(runners=1, slots=2))
    # inference.AvatarSession signs its JWT with LIVEKIT_API_KEY/SECRET: the stack's, which the tenant registered.
    worker = AgentWorker(stack.process_env(), bed.work / "agent.log")
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


def inference_session(bed: GatewayBed, room: str) -> dict[str, Any] | None:
    """The one session the gateway made for `room`; None before it exists."""
    found = [s for s in bed.sessions() if s["spec"]["room"] == room]
    assert len(found) <= 1, [s["metadata"]["name"] for s in found]
    return found[0] if found else None


@pytest.mark.stack
async def test_inference_avatar_session_through_the_gateway(
    stack: Stack, bed: GatewayBed, worker: AgentWorker, tmp_path: pathlib.Path
) -> None:
    room = f"{bed.namespace}-inf-{uuid.uuid4().hex[:4]}"
    wav = agent_job.write_speech_wav(tmp_path / "speech.wav", SPEECH_S)
    viewer = Viewer()
    key, secret = stack.livekit_api_key, stack.livekit_api_secret
    await viewer.join(stack.livekit_url, harness_viewer.participant_token(key, secret, room, "viewer"))
    try:
        asked = time.time()
        job = await worker.dispatch(room, {
            "avatar": "inference", "base_url": bed.gateway_url, "avatar_id": gateway_bed.AVATAR_ID, "wav": str(wav),
        }, tmp_path)
        agent = (await job.wait_for("joined", 60))["identity"]
        started = await job.wait_for("avatar_started", 60)
        joined = await job.wait_for("avatar_joined", 60)
        session = await asyncio.to_thread(wait_until, f"a session for room {room}", lambda: inference_session(bed, room), 10, 0.2)
        name = session["metadata"]["name"]
        session = await asyncio.to_thread(bed.wait_session, name, "Ready", 60)
        ready_at = time.time()
        listed = await agent_job.participants(stack.env, room)

        def watching() -> bool:
            return bool(viewer.video) and time.time() - viewer.video[0][0] > agent_job.SETTLE_S

        await asyncio.to_thread(wait_until, "the viewer to receive the avatar's video", watching, 30, 0.1)
        await viewer.room.local_participant.publish_data(b"speak", topic=agent_job.TOPIC)
        speaking = (await job.wait_for("speaking", 10))["t"]
        spoke = (await job.wait_for("spoke", 30))["t"]
        mouth = agent_job.mouth_figures(viewer.video, speaking, spoke)

        # -- aclose(): the terminate call, the agent staying in the room --------
        await viewer.room.local_participant.publish_data(b"close-avatar", topic=agent_job.TOPIC)
        closing = (await job.wait_for("avatar_closing", 10))["t"]

        def avatar_left() -> float | None:
            return time.time() if AVATAR not in viewer.room.remote_participants else None

        left_task = asyncio.create_task(asyncio.to_thread(wait_until, "the avatar to leave", avatar_left, 10, 0.05))
        gone_at = await asyncio.to_thread(bed.wait_gone, name, 10)
        left_at = await left_task
        closed = (await job.wait_for("avatar_closed", 10))["t"]
        agent_still_in = agent in viewer.room.remote_participants
        await viewer.room.local_participant.publish_data(b"leave", topic=agent_job.TOPIC)
        await job.wait_for("left", 20)
    finally:
        await viewer.leave()

    print(
        f"\ninference: dispatch to avatar_started (the create answered) {started['t'] - asked:.2f} s,"
        f" to avatar joined {joined['t'] - asked:.2f} s, to session Ready {ready_at - asked:.2f} s;"
        f" mouth idle max {mouth['idle_max']:.3f}, speaking max {mouth['speech_max']:.3f},"
        f" open in {mouth['open_share']:.0%} of {mouth['fps']:.1f} fps frames;"
        f" aclose(): returned in {closed - closing:.2f} s, session gone {gone_at - closing:.2f} s"
        f" and avatar gone from the room {left_at - closing:.2f} s after it was called"
    )
    meta, spec = session["metadata"], session["spec"]
    assert meta["labels"][names.GATEWAY_PROTOCOL_LABEL] == "inference"
    assert spec["agentIdentity"] == agent
    assert spec["avatarParticipant"]["identity"] == AVATAR
    assert spec["poolRef"]["name"] == gateway_bed.POOL
    assert spec["ttlSecondsAfterFinished"] > 0  # the tenant's default: finished sessions do not pile up
    attributes = dict(listed[AVATAR].attributes)
    assert attributes.get("lk.avatar_provider") == "bithuman"
    assert attributes.get("lk.publish_on_behalf") == agent
    assert viewer.publishers == {AVATAR}
    assert mouth["idle_max"] < 0.02, mouth
    assert mouth["speech_max"] > 0.1 and mouth["open_share"] > 0.3, mouth
    # The terminate ended it, not the agent leaving: the agent was still in the room.
    assert agent_still_in
    assert "/avatar/sessions/terminate -> 200" in bed.logs()["gateway.log"]
    assert gone_at - closing < TERMINATE_BOUND_S
    assert left_at - closing < TERMINATE_BOUND_S
