"""`python -m avatar_runner serve` as a process against a real livekit-server.

One pool runner (portrait renderer, MAX_SESSIONS=2) takes two launches into
two rooms, each with a speaking demo agent and a viewer, then refuses a
third; a stop frees its slot and the avatar leaves its room. Then the
unmodified livekit-plugins-bithuman AvatarSession, pointed at the runner's
/launch, starts an avatar the way it starts bitHuman's self-hosted container.
The figures are printed (run with -s).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import datetime
import io
import json
import os
import pathlib
import secrets
import sys
import time
import types
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from avatar_operator.build.token import avatar_token
from avatar_runner.exits import ExitCode
from livekit import rtc
from PIL import Image

from tests.conftest import Stack
from tests.harness import viewer as harness_viewer
from tests.harness.net import free_port
from tests.harness.viewer import Viewer

AGENT = "agent-1"
AVATAR = "bithuman-avatar-agent"
FPS = 25.0
SPEECH_S = 3.0
LEAD_IN_S = 5.0
STARTUP_TIMEOUT_S = 60.0


def participant_token(stack: Stack, room: str, identity: str, *, agent: bool = False) -> str:
    return harness_viewer.participant_token(stack.livekit_api_key, stack.livekit_api_secret, room, identity, agent=agent)


def operator_token(stack: Stack, room: str) -> str:
    """The avatar's token as the operator mints it for a pool launch."""
    return avatar_token(
        api_key=stack.livekit_api_key,
        api_secret=stack.livekit_api_secret,
        room=room,
        identity=AVATAR,
        name="Avatar",
        agent_identity=AGENT,
        ttl=datetime.timedelta(minutes=10),
    )


def portrait_jpeg() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (360, 480), (150, 120, 100)).save(out, format="JPEG")
    return out.getvalue()


def iso_time(value: str) -> float:
    return datetime.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


@dataclasses.dataclass
class PoolRunner:
    process: asyncio.subprocess.Process
    url: str
    token: str
    log: pathlib.Path
    http: aiohttp.ClientSession

    async def call(self, method: str, path: str, data: Any = None, *, auth: bool = True) -> tuple[int, dict[str, Any]]:
        headers = {"Authorization": f"Bearer {self.token}"} if auth else {}
        async with self.http.request(method, self.url + path, data=data, headers=headers) as response:
            return response.status, await response.json()

    async def terminate(self, timeout: float = 15.0) -> int:
        self.process.terminate()
        return await asyncio.wait_for(self.process.wait(), timeout)


@contextlib.asynccontextmanager
async def pool_runner(tmp_path: pathlib.Path, max_sessions: int = 2) -> AsyncIterator[PoolRunner]:
    token = secrets.token_urlsafe(24)
    token_file = tmp_path / "pool-token"
    token_file.write_text(token + "\n")  # as a mounted Secret may hold it
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LIVEKIT_", "POOL_TOKEN", "AVATAR_"))}
    env.update(
        AVATAR_RENDERER="portrait",
        MAX_SESSIONS=str(max_sessions),
        POOL_TOKEN_FILE=str(token_file),
        SERVE_PORT=str(port),
    )
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "avatar_runner", "serve", env=env, stdout=out, stderr=asyncio.subprocess.STDOUT
        )
    async with aiohttp.ClientSession() as http:
        runner = PoolRunner(process, f"http://127.0.0.1:{port}", token, log, http)
        try:
            deadline = time.monotonic() + STARTUP_TIMEOUT_S
            while True:
                assert process.returncode is None, f"serve exited {process.returncode}:\n{log.read_text()}"
                assert time.monotonic() < deadline, f"serve never ready:\n{log.read_text()}"
                with contextlib.suppress(aiohttp.ClientConnectionError):
                    if (await runner.call("GET", "/ready", auth=False))[0] == 200:
                        break
                await asyncio.sleep(0.2)
            yield runner
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
            assert token not in log.read_text()  # no token in any log line
            assert "eyJ" not in log.read_text()


class DemoAgent:
    """`python -m avatar_runner.demo_agent` in a room, its events collected as they come."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.events: list[dict[str, Any]] = []
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def start(cls, stack: Stack, room: str, *, linger: float) -> DemoAgent:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "avatar_runner.demo_agent",
            "--url", stack.livekit_url,
            "--token", participant_token(stack, room, AGENT, agent=True),
            "--avatar-identity", AVATAR,
            "--seconds", str(SPEECH_S),
            # Speech once the viewer's stream has settled: its first frames
            # come ~3 s after the track's publication here, in a burst.
            "--lead-in", str(LEAD_IN_S),
            "--linger", str(linger),
            stdout=asyncio.subprocess.PIPE,
        )
        return cls(process)

    async def _read(self) -> None:
        assert self.process.stdout is not None
        async for line in self.process.stdout:
            self.events.append(json.loads(line))

    async def wait_for(self, event: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            found = next((e for e in self.events if e["event"] == event), None)
            if found is not None:
                return found
            assert self.process.returncode is None, f"the demo agent exited before {event}: {self.events}"
            assert time.monotonic() < deadline, f"no {event} in {timeout} s: {self.events}"
            await asyncio.sleep(0.05)

    async def close(self) -> None:
        if self.process.returncode is None:
            self.process.kill()
        await self.process.wait()
        self._reader.cancel()


def launch_form(stack: Stack, room: str, *, picture: bytes | None = None) -> aiohttp.FormData | dict[str, str]:
    fields = {"livekit_url": stack.livekit_url, "livekit_token": operator_token(stack, room), "room_name": room}
    if picture is None:
        return fields  # urlencoded
    multipart = aiohttp.FormData()
    for name, value in fields.items():
        multipart.add_field(name, value)
    multipart.add_field("avatar_image", io.BytesIO(picture), filename="avatar.jpg", content_type="image/jpeg")
    return multipart


async def wait_until(what: str, check: Any, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


@pytest.mark.stack
async def test_two_sessions_on_one_pool_runner(stack: Stack, tmp_path: pathlib.Path) -> None:
    prefix = f"pool-{uuid.uuid4().hex[:8]}"
    rooms = [f"{prefix}-1", f"{prefix}-2"]
    viewers = [Viewer(), Viewer()]
    agents: list[DemoAgent] = []
    async with pool_runner(tmp_path) as runner:
        try:
            for viewer, room in zip(viewers, rooms, strict=True):
                await viewer.join(stack.livekit_url, participant_token(stack, room, "viewer"))
            # The agents are in their rooms first: the launch's own latency is measured.
            # The second leaves 8 s after its speech; the first stays until its avatar is stopped.
            agents = [await DemoAgent.start(stack, rooms[0], linger=60), await DemoAgent.start(stack, rooms[1], linger=8)]
            for agent in agents:
                await agent.wait_for("joined", STARTUP_TIMEOUT_S)
            launched_at, tasks = [], []
            # One urlencoded, one multipart with its own picture.
            for room, picture in zip(rooms, (None, portrait_jpeg()), strict=True):
                launched_at.append(time.time())
                status, body = await runner.call("POST", "/launch", launch_form(stack, room, picture=picture))
                assert status == 200 and body["status"] == "pending", body
                tasks.append(body["task_id"])
            finished = [await agent.wait_for("playback_finished", 30) for agent in agents]

            # -- both in use: full ------------------------------------------------
            health = await runner.call("GET", "/health", auth=False)
            third = await runner.call("POST", "/launch", launch_form(stack, f"{prefix}-3"))
            ready = await runner.call("GET", "/ready", auth=False)
            states = [(await runner.call("GET", f"/tasks/{task}"))[1] for task in tasks]

            # -- one stopped: its slot free, its avatar gone ------------------------
            asked = time.monotonic()
            status, stopped = await runner.call("POST", f"/tasks/{tasks[0]}/stop")
            stop_s = time.monotonic() - asked
            health_after_stop = await runner.call("GET", "/health", auth=False)

            async def avatar_left() -> bool:
                return AVATAR not in viewers[0].room.remote_participants

            await wait_until("the stopped avatar to leave its room", avatar_left, 10)
            left_s = time.monotonic() - asked

            # -- the other ends with its agent ------------------------------------
            async def second_completed() -> bool:
                return (await runner.call("GET", f"/tasks/{tasks[1]}"))[1]["status"] != "running"

            await wait_until("the second session to end with its agent", second_completed, 20)
            second = (await runner.call("GET", f"/tasks/{tasks[1]}"))[1]
            health_at_end = await runner.call("GET", "/health", auth=False)
            exit_code = await runner.terminate()
        finally:
            for agent in agents:
                await agent.close()
            for viewer in viewers:
                await viewer.leave()

    figures = []
    for n, (viewer, agent) in enumerate(zip(viewers, agents, strict=True)):
        # The speech, once the viewer's stream settled (its first second can be a burst).
        started = max(next(e["t"] for e in agent.events if e["event"] == "playback_started"), viewer.video[0][0] + 1)
        assert finished[n]["t"] - started > 2.0, "the viewer's video came too late to measure the speech"
        frames = viewer.frames_between(started, finished[n]["t"])
        fps = len(frames) / (finished[n]["t"] - started)
        first_frame = viewer.video[0][0] - launched_at[n]
        runner_first = iso_time(states[n]["first_frame_at"]) - launched_at[n]
        joined = iso_time(states[n]["joined_at"]) - launched_at[n]
        figures.append(fps)
        print(
            f"\nsession {n + 1}: {fps:.2f} fps at the viewer during speech ({len(frames)} frames);"
            f" /launch to joined {joined:.2f} s, to first frame {runner_first:.2f} s at the runner,"
            f" {first_frame:.2f} s at the viewer"
        )
    print(f"stop: answered in {stop_s:.2f} s, avatar gone from the room {left_s:.2f} s after asking")

    assert health == (200, {"active_sessions": 2, "max_sessions": 2})
    assert third == (503, {"status": "error", "error": "at_capacity", "max_sessions": 2})
    assert ready == (503, {"status": "at_capacity"})
    assert [s["status"] for s in states] == ["running", "running"]
    assert all(s["agent_identity"] == AGENT for s in states)
    assert status == 200 and stopped["status"] == "stopped" and stopped["exit_code"] == 0
    assert health_after_stop == (200, {"active_sessions": 1, "max_sessions": 2})
    assert (second["status"], second["exit_code"], second["reason"]) == (
        "completed", 0, f"agent {AGENT!r} left the room",
    )
    assert health_at_end == (200, {"active_sessions": 0, "max_sessions": 2})
    assert all(viewer.publishers == {AVATAR} for viewer in viewers)
    for fps in figures:
        assert FPS * 0.8 <= fps <= FPS * 1.1
    assert stop_s < 5
    assert exit_code == ExitCode.OK


class _StubAgentSession:
    """What AvatarSession.start touches of an AgentSession: events and the audio output's tail."""

    def __init__(self) -> None:
        self.audio_tail: Any = None
        self.output = types.SimpleNamespace(replace_audio_tail=self._replace)

    def _replace(self, output: Any) -> None:
        self.audio_tail = output

    def on(self, *_: Any) -> None:
        pass

    def off(self, *_: Any) -> None:
        pass

    def emit(self, *_: Any) -> None:
        pass


@contextlib.asynccontextmanager
async def picture_server(picture: bytes) -> AsyncIterator[str]:
    """An http URL serving `picture`, as an avatar_image URL would."""
    app = web.Application()
    async def serve_picture(_: web.Request) -> web.Response:
        return web.Response(body=picture, content_type="image/jpeg")

    app.router.add_get("/avatar.jpg", serve_picture)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}/avatar.jpg"
    finally:
        await runner.cleanup()


@pytest.mark.stack
@pytest.mark.parametrize("image", ["url", "base64"])
async def test_the_bithuman_plugin_launches_on_the_pool_runner(
    stack: Stack, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, image: str
) -> None:
    from avatar_runner.demo_agent import speak, synthetic_speech
    from livekit.agents import utils
    from livekit.plugins.bithuman import avatar as plugin

    room = f"plugin-{uuid.uuid4().hex[:8]}"
    viewer = Viewer()
    agent_room = rtc.Room()
    # AvatarSession.start reads the agent's identity from its job; this is the job.
    monkeypatch.setattr(plugin, "get_job_context", lambda: types.SimpleNamespace(local_participant_identity=AGENT))
    async with pool_runner(tmp_path) as runner, utils.http_context.open(), picture_server(portrait_jpeg()) as url:
        try:
            await viewer.join(stack.livekit_url, participant_token(stack, room, "viewer"))
            await agent_room.connect(
                stack.livekit_url, participant_token(stack, room, AGENT, agent=True), rtc.RoomOptions(auto_subscribe=False)
            )
            avatar = plugin.AvatarSession(
                api_url=f"{runner.url}/launch",
                api_token=runner.token,
                api_secret="not-a-bithuman-secret",  # the plugin's cloud mode wants one; never used
                model="expression",
                avatar_image=url if image == "url" else base64.b64encode(portrait_jpeg()).decode(),
            )
            agent_session = _StubAgentSession()
            launched = time.time()
            await avatar.start(
                agent_session,  # type: ignore[arg-type]
                agent_room,
                livekit_url=stack.livekit_url,
                livekit_api_key=stack.livekit_api_key,
                livekit_api_secret=stack.livekit_api_secret,
            )
            await avatar.wait_for_join(timeout=30)
            joined = time.time() - launched
            (task,) = (await runner.call("GET", "/tasks"))[1]["tasks"]
            # The plugin's own audio output speaks to the avatar: the avatar protocol, end to end.
            output = agent_session.audio_tail
            assert output is not None

            async def watching() -> bool:  # the viewer's stream settled (see LEAD_IN_S)
                return bool(viewer.video) and time.time() - viewer.video[0][0] > 1.0

            await wait_until("the viewer to receive the avatar's video", watching, 20)
            first_frame = viewer.video[0][0] - launched
            spoke_at = time.time()
            await asyncio.wait_for(speak(output, synthetic_speech(2.0), 24000, utterance=0, interrupt_after=None), 30)
            spoke_s = time.time() - spoke_at
            frames = viewer.frames_between(spoke_at, spoke_at + spoke_s)
            final: dict[str, Any] = {}
            if image == "url":
                await agent_room.disconnect()  # the agent leaves: its avatar's session completes

                async def ended() -> bool:
                    final.update((await runner.call("GET", f"/tasks/{task['task_id']}"))[1])
                    return final["status"] != "running"

                await wait_until("the session to end with its agent", ended, 20)
            else:  # the pool runner is stopped under it: the avatar leaves, the runner exits 0
                asked = time.monotonic()
                exit_code = await runner.terminate()

                async def avatar_left() -> bool:
                    return AVATAR not in viewer.room.remote_participants

                await wait_until("the avatar to leave its room", avatar_left, 10)
                sigterm_s = time.monotonic() - asked
            await avatar.aclose()
        finally:
            await agent_room.disconnect()
            await viewer.leave()

    fps = len(frames) / spoke_s
    print(
        f"\nplugin ({image} image): avatar joined and published {joined:.2f} s after AvatarSession.start,"
        f" first frame at the viewer after {first_frame:.2f} s;"
        f" {fps:.2f} fps at the viewer over {spoke_s:.2f} s of speech"
    )
    assert task["room_name"] == room and task["agent_identity"] == AGENT
    assert viewer.publishers == {AVATAR}
    assert fps >= FPS * 0.8
    if image == "url":
        assert (final["status"], final["reason"]) == ("completed", f"agent {AGENT!r} left the room")
    else:
        print(f"SIGTERM with a session in a room: exit {exit_code}, avatar gone after {sigterm_s:.2f} s")
        assert exit_code == ExitCode.OK and sigterm_s < 5


async def test_a_refused_renderer_ends_the_pool_runner_with_its_reason(tmp_path: pathlib.Path) -> None:
    """No LiveKit needed: the renderer is loaded before any launch is taken."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("POOL_TOKEN", "AVATAR_", "BITHUMAN_"))}
    env.update(
        AVATAR_RENDERER="portrait",
        AVATAR_IMAGE_FILE=str(tmp_path / "absent.jpg"),
        POOL_TOKEN="a-pool-token",
        SERVE_PORT="0",
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "avatar_runner", "serve", env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(proc.communicate(), STARTUP_TIMEOUT_S)
    assert proc.returncode == ExitCode.AVATAR_INVALID
    assert stderr.decode().splitlines() == [f"AVATAR_IMAGE_FILE {str(tmp_path / 'absent.jpg')!r} does not exist"]
