"""The runner as a process against a real livekit-server.

A demo agent speaks into the room through the LiveKit Agents avatar protocol,
the runner (built-in portrait renderer) renders it, and a third participant
watches: frame rate, the mouth on the received pixels, the publish-on-behalf
attribution, the interruption and the runner's exit are measured on what
really crossed the server. The figures are printed (run with -s).

The bitHuman refusals need no LiveKit: the SDK refuses before the runner
joins a room, and those tests run everywhere.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import math
import pathlib
import sys
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from avatar_operator.build.token import ATTRIBUTE_PUBLISH_ON_BEHALF, avatar_token
from avatar_runner.exits import ExitCode
from avatar_runner.launcher import ProcessStatus, RunnerLauncher
from livekit import api, rtc

from tests.conftest import Stack
from tests.harness import viewer as harness_viewer
from tests.harness.net import free_port, http_get, metric, wait_healthy
from tests.harness.viewer import Viewer

AGENT = "agent-1"
AVATAR = "bithuman-avatar-agent"
FPS = 25.0
SPEECH_S = 4.0
INTERRUPT_AFTER_S = 1.5
SILENCE_DBFS = -50.0  # quieter than this, a received 10 ms audio frame counts as silent
MOUTH_OPEN = 0.05  # share of dark pixels in the mouth region of an open mouth
STARTUP_TIMEOUT_S = 90.0  # the runner imports its media stack on a shared CPU


def participant_token(stack: Stack, room: str, identity: str, *, agent: bool = False) -> str:
    return harness_viewer.participant_token(stack.livekit_api_key, stack.livekit_api_secret, room, identity, agent=agent)


def runner_token(stack: Stack, room: str, *, secret: str | None = None) -> str:
    return avatar_token(
        api_key=stack.livekit_api_key,
        api_secret=secret or stack.livekit_api_secret,
        room=room,
        identity=AVATAR,
        name="Avatar",
        agent_identity=AGENT,
        ttl=datetime.timedelta(minutes=10),
    )


async def agent_events(process: asyncio.subprocess.Process) -> AsyncIterator[dict[str, Any]]:
    assert process.stdout is not None
    async for line in process.stdout:
        yield json.loads(line)


async def wait_exit(launcher: RunnerLauncher, key: str, timeout: float) -> ProcessStatus:
    deadline = time.monotonic() + timeout
    while True:
        status = launcher.status(key)
        assert status is not None
        if not status.running or time.monotonic() > deadline:
            return status
        await asyncio.sleep(0.1)


@pytest.mark.stack
async def test_avatar_renders_the_agents_speech(stack: Stack, tmp_path: pathlib.Path) -> None:
    room = f"e2e-{uuid.uuid4().hex[:8]}"
    token_file = tmp_path / "avatar-token"
    token_file.write_text(runner_token(stack, room))
    port = free_port()
    launcher = RunnerLauncher(tmp_path / "runners")
    launched_at = time.time()
    launcher.start(
        "session",
        {
            "LIVEKIT_URL": stack.livekit_url,
            "LIVEKIT_TOKEN_FILE": str(token_file),
            "AGENT_IDENTITY": AGENT,
            "AVATAR_RENDERER": "portrait",
            "HEALTH_PORT": str(port),
        },
    )
    viewer = Viewer()
    agent: asyncio.subprocess.Process | None = None
    try:
        await viewer.join(stack.livekit_url, participant_token(stack, room, "viewer"))
        await wait_healthy(f"http://127.0.0.1:{port}/healthz", launcher, "session", STARTUP_TIMEOUT_S)
        # Alive but not ready: no agent, so no frame yet.
        assert (await http_get(f"http://127.0.0.1:{port}/readyz"))[0] == 503

        agent = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "avatar_runner.demo_agent",
            "--url", stack.livekit_url,
            "--token", participant_token(stack, room, AGENT, agent=True),
            "--avatar-identity", AVATAR,
            "--seconds", str(SPEECH_S),
            "--repeat", "2",
            "--interrupt-last-after", str(INTERRUPT_AFTER_S),
            # Speech once the viewer's stream has settled, so the frame rate
            # measured over it is the steady one, not the stream's start.
            "--lead-in", "1.5",
            "--linger", "1.5",
            stdout=asyncio.subprocess.PIPE,
        )
        events: list[dict[str, Any]] = []
        metrics_page = ""
        ready = 0
        avatar: rtc.RemoteParticipant | None = None
        avatar_tracks: set[tuple[int, int]] = set()

        async def follow_agent() -> None:
            nonlocal metrics_page, ready, avatar, avatar_tracks
            assert agent is not None
            async for event in agent_events(agent):
                events.append(event)
                if event["event"] == "playback_finished" and event["interrupted"]:
                    # Look while the runner still runs: it leaves with the agent.
                    ready = (await http_get(f"http://127.0.0.1:{port}/readyz"))[0]
                    metrics_page = (await http_get(f"http://127.0.0.1:{port}/metrics"))[1]
                    avatar = viewer.room.remote_participants.get(AVATAR)
                    if avatar is not None:
                        avatar_tracks = {(pub.kind, pub.source) for pub in avatar.track_publications.values()}
            assert await agent.wait() == 0

        await asyncio.wait_for(follow_agent(), 120)
        status = await wait_exit(launcher, "session", timeout=15)
    finally:
        if agent is not None and agent.returncode is None:
            agent.kill()
        launcher.stop("session")
        await viewer.leave()

    def at(name: str, utterance: int) -> float:
        return float(next(e["t"] for e in events if e["event"] == name and e.get("utterance") == utterance))

    joined = next(e["t"] for e in events if e["event"] == "joined")
    started, finished = at("playback_started", 0), at("playback_finished", 0)
    cleared = at("clear_buffer", 1)
    outcomes = [e for e in events if e["event"] == "playback_finished"]

    # -- the protocol: playback started/finished came from the avatar -----
    assert [o["interrupted"] for o in outcomes] == [False, True]
    assert outcomes[0]["position"] == pytest.approx(SPEECH_S, abs=0.05)
    assert outcomes[1]["position"] < SPEECH_S - 1

    # -- published on behalf of the agent ---------------------------------
    assert avatar is not None
    assert avatar.kind == rtc.ParticipantKind.PARTICIPANT_KIND_AGENT
    assert avatar.attributes.get(ATTRIBUTE_PUBLISH_ON_BEHALF) == AGENT
    assert avatar_tracks == {
        (rtc.TrackKind.KIND_VIDEO, rtc.TrackSource.SOURCE_CAMERA),
        (rtc.TrackKind.KIND_AUDIO, rtc.TrackSource.SOURCE_MICROPHONE),
    }
    assert viewer.publishers == {AVATAR}

    # -- frame rate for the length of the speech ---------------------------
    speech_frames = viewer.frames_between(started, finished)
    fps = len(speech_frames) / (finished - started)
    drop_ratio = max(0.0, 1 - len(speech_frames) / ((finished - started) * FPS))

    # -- the mouth follows the audio ---------------------------------------
    first_frame = viewer.video[0][0]
    # Silence: between the utterances (the frames before the first one may
    # not have reached the viewer yet when the agent starts speaking).
    silence = viewer.frames_between(finished + 0.2, at("playback_started", 1))
    idle = [m for _, _, m in silence if not math.isnan(m)]
    spoken = [m for _, _, m in speech_frames if not math.isnan(m)]
    open_share = sum(m > MOUTH_OPEN for m in spoken) / len(spoken)

    # -- the interruption ----------------------------------------------------
    loud_after = [t for t, db, _ in viewer.audio if t >= cleared and db > SILENCE_DBFS]
    audio_stop = (max(loud_after) - cleared) if loud_after else 0.0
    left = next(e["t"] for e in events if e["event"] == "leaving")
    # Until the agent leaves: the runner leaves too, and a track's end can
    # show as a black frame.
    open_after = [t for t, _, m in viewer.frames_between(cleared, left) if m > MOUTH_OPEN]
    mouth_close = (max(open_after) - cleared) if open_after else 0.0
    speech_before_clear = [db for t, db, _ in viewer.audio if cleared - 1.0 <= t < cleared]

    latency_sum = metric(metrics_page, "avatar_audio_to_video_latency_seconds_sum")
    segments = metric(metrics_page, "avatar_audio_to_video_latency_seconds_count")
    print(
        "\nrunner e2e figures (portrait renderer, real livekit-server):"
        f"\n  time to first frame: {metric(metrics_page, 'avatar_time_to_first_frame_seconds'):.2f} s from runner start"
        f" (agent joined {joined - launched_at:.2f} s after launch);"
        f" first frame at the viewer {first_frame - joined:.2f} s after the agent joined"
        f"\n  received fps during speech: {fps:.2f} ({len(speech_frames)} frames in {finished - started:.2f} s),"
        f" drop ratio {drop_ratio:.1%}; runner: fps gauge {metric(metrics_page, 'avatar_video_fps'):.2f},"
        f" {metric(metrics_page, 'avatar_video_frames_dropped_total'):.0f} dropped of"
        f" {metric(metrics_page, 'avatar_video_frames_published_total'):.0f} published"
        f"\n  audio-to-video latency (segment start, runner): mean {1000 * latency_sum / max(1, segments):.0f} ms"
        f" over {segments:.0f} segments"
        f"\n  mouth: idle max darkness {max(idle, default=0):.3f}, speech open in {open_share:.0%} of frames"
        f" (max {max(spoken):.3f})"
        f"\n  interruption: last audible audio {1000 * audio_stop:.0f} ms, last open mouth {1000 * mouth_close:.0f} ms"
        f" after lk.clear_buffer"
        f"\n  runner exit: {status.exit_code} ({status.reason})"
    )

    assert FPS * 0.9 <= fps <= FPS * 1.1
    assert idle and max(idle) < 0.02  # silent: mouth shut
    assert max(spoken) > 0.1 and open_share > 0.3  # speaking: it opens, and often
    assert max(speech_before_clear) > SILENCE_DBFS  # it was speaking when interrupted
    # The mouth is drawn from the same queue the speech plays from, so when it
    # closes is when the runner stopped the speech: within 200 ms. The last
    # audible audio at the viewer comes later by the receiver's jitter buffer
    # (100-180 ms measured here), which the runner does not control.
    assert mouth_close < 0.2
    assert audio_stop < 0.35
    assert ready == 200
    assert metric(metrics_page, "avatar_interruptions_total") == 1
    assert segments == 2

    assert status.exit_code == ExitCode.OK
    assert status.reason == f"agent {AGENT!r} left the room"


@pytest.mark.stack
async def test_runner_ends_on_rejected_token_sigterm_room_deletion_and_max_duration(
    stack: Stack, tmp_path: pathlib.Path
) -> None:
    """No agent ever comes: something else ends each runner, in parallel."""
    prefix = f"e2e-{uuid.uuid4().hex[:8]}"
    launcher = RunnerLauncher(tmp_path)
    base = {
        "LIVEKIT_URL": stack.livekit_url,
        "AGENT_IDENTITY": AGENT,
        "AVATAR_RENDERER": "portrait",
        "HEALTH_PORT": "0",
    }
    forged = runner_token(stack, f"{prefix}-forged", secret="not-the-server-secret-not-the-server-secret")
    launcher.start("forged", {**base, "LIVEKIT_TOKEN": forged})
    for key in ("sigterm", "deleted"):
        launcher.start(key, {**base, "LIVEKIT_TOKEN": runner_token(stack, f"{prefix}-{key}")})
    launcher.start(
        "limited",
        {**base, "LIVEKIT_TOKEN": runner_token(stack, f"{prefix}-limited"), "AVATAR_MAX_DURATION": "2"},
    )
    rooms = api.LiveKitAPI(stack.livekit_url.replace("ws", "http", 1), stack.livekit_api_key, stack.livekit_api_secret)

    async def in_room(key: str) -> None:
        """Until the runner is in its room, media connected: where it spends its life."""
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        request = api.ListParticipantsRequest(room=f"{prefix}-{key}")
        while not any(
            p.state == api.ParticipantInfo.State.ACTIVE
            for p in (await rooms.room.list_participants(request)).participants
        ):
            assert time.monotonic() < deadline, f"{key}: the runner never joined"
            assert launcher.is_running(key), launcher.status(key)
            await asyncio.sleep(0.2)

    try:
        await asyncio.gather(in_room("sigterm"), in_room("deleted"))
        asked = time.monotonic()
        sigterm_code = await asyncio.to_thread(launcher.stop, "sigterm", 10.0)
        stop_s = time.monotonic() - asked
        await rooms.room.delete_room(api.DeleteRoomRequest(room=f"{prefix}-deleted"))
        statuses = {
            key: await wait_exit(launcher, key, timeout=STARTUP_TIMEOUT_S) for key in ("forged", "deleted", "limited")
        }
    finally:
        for key in ("forged", "sigterm", "deleted", "limited"):
            launcher.stop(key)
        await rooms.aclose()

    print(f"\nSIGTERM to exit: {stop_s:.2f} s")
    assert sigterm_code == ExitCode.OK and stop_s < 5
    stopped = launcher.status("sigterm")
    assert stopped is not None
    assert (stopped.running, stopped.exit_code, stopped.reason) == (False, 0, "stopped by SIGTERM")
    assert (statuses["deleted"].exit_code, statuses["deleted"].reason) == (0, "the room was deleted")
    assert (statuses["limited"].exit_code, statuses["limited"].reason) == (0, "AVATAR_MAX_DURATION of 2 s reached")
    rejected = statuses["forged"]
    assert rejected.exit_code == ExitCode.TOKEN_REJECTED
    assert rejected.reason is not None
    assert rejected.reason.startswith("LiveKit rejected the room token: ")
    assert forged not in rejected.reason and "eyJ" not in rejected.reason
    assert launcher.last_stderr_line("forged") == rejected.reason


async def test_bithuman_refusals_end_the_runner_with_a_reason(tmp_path: pathlib.Path) -> None:
    """The real SDK, refusing for real: each refusal is one line and its own exit code."""
    bogus = tmp_path / "bogus.imx"
    bogus.write_bytes(b"not an avatar model " * 64)
    base = {
        # Never reached: the renderer is loaded before joining the room.
        "LIVEKIT_URL": "ws://127.0.0.1:9",
        "LIVEKIT_TOKEN": "unused",
        "AGENT_IDENTITY": AGENT,
        "AVATAR_RENDERER": "bithuman",
        "HEALTH_PORT": "0",
        # The SDK authenticates before it reads the model: make its service
        # unreachable (libcurl honours the proxy variables), as it is here.
        "https_proxy": "http://127.0.0.1:9",
        "HTTPS_PROXY": "http://127.0.0.1:9",
    }
    cases = {
        "missing-model": (
            {"BITHUMAN_MODEL_PATH": str(tmp_path / "absent.imx"), "BITHUMAN_API_SECRET": "bogus-secret"},
            ExitCode.AVATAR_INVALID,
            "bitHuman refused the avatar model: [model_not_found]",
        ),
        "unreachable": (
            {"BITHUMAN_MODEL_PATH": str(bogus), "BITHUMAN_API_SECRET": "bogus-secret"},
            ExitCode.RENDERER_UNAVAILABLE,
            "bitHuman authentication service unreachable: ",
        ),
        "token-only": (
            {"BITHUMAN_MODEL_PATH": str(bogus), "BITHUMAN_API_TOKEN": "bogus-token"},
            ExitCode.RENDERER_NOT_AUTHORISED,
            "bitHuman refused the credential: ",
        ),
    }
    launcher = RunnerLauncher(tmp_path / "runners")
    for key, (env, _, _) in cases.items():
        launcher.start(key, {**base, **env})
    try:
        for key, (_, code, reason_start) in cases.items():
            status = await wait_exit(launcher, key, timeout=STARTUP_TIMEOUT_S)
            stderr = (tmp_path / "runners" / f"{key}.stderr").read_text()
            print(f"\n{key}: exit {status.exit_code}: {status.reason}")
            assert status.exit_code == code, (key, status)
            assert status.reason is not None and status.reason.startswith(reason_start), (key, status)
            assert stderr.splitlines() == [status.reason]  # one line, the reason
            for secret in ("bogus-secret", "bogus-token"):
                assert secret not in stderr
            launcher.forget(key)
            assert launcher.status(key) is None
            assert not list((tmp_path / "runners").glob(f"{key}.*"))
    finally:
        for key in cases:
            launcher.stop(key)
