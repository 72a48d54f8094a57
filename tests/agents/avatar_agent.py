"""A livekit-agents worker whose job starts an avatar and speaks a WAV to it.

    LIVEKIT_URL=... LIVEKIT_API_KEY=... LIVEKIT_API_SECRET=... \\
    AVATAR_AGENT_NAME=avatar-test python tests/agents/avatar_agent.py start

The worker registers with livekit-server under an explicit agent name, so it
gets a job only when someone dispatches it into a room (AgentDispatchService).
Each job reads what to do from its dispatch metadata (JSON):

- `avatar`: "plugin" (livekit-plugins-bithuman's AvatarSession, unmodified)
  or "inference" (livekit-agents' inference.AvatarSession);
- plugin: `api_url`, `model` ("expression" sends a form, "essence" JSON),
  `avatar_id` and/or `avatar_image`; the caller's key is not in the metadata
  (livekit-server and the worker log job requests): it is the worker's
  AVATAR_AGENT_API_SECRET;
- inference: `base_url`, `avatar_id` (the model string is "bithuman/<id>");
- `wav`: the speech to say, a 16-bit mono WAV file;
- `events`: a file the job appends its steps to, one JSON object a line
  (`event`, wall-clock `t`, details), for the test to follow.

The job starts the avatar the canonical way (avatar.start, then the
AgentSession; no LLM, STT or TTS: `session.say(text, audio=frames)`), waits
for it to join, then obeys data messages on the topic `avatar-test`: `speak`
(say the WAV, once per message), `close-avatar` (avatar.aclose(): for the
inference protocol, the terminate call), `leave` (disconnect from the room,
then end the job). `leave_after_s` in the metadata leaves on its own after
that many seconds, should the test never say so.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import pathlib
import time
import typing
import wave
from collections.abc import AsyncIterator
from typing import Any

from livekit import agents, rtc
from livekit.plugins import bithuman

TOPIC = "avatar-test"
CHUNK_S = 0.05  # TTS plugins hand over 10-100 ms frames
JOIN_TIMEOUT_S = 60.0


@dataclasses.dataclass(frozen=True)
class JobConfig:
    avatar: str
    wav: str
    events: str
    api_url: str = ""
    base_url: str = ""
    model: str = ""
    avatar_id: str = ""
    avatar_image: str = ""
    leave_after_s: float = 300.0

    @classmethod
    def parse(cls, metadata: str) -> JobConfig:
        fields = {f.name for f in dataclasses.fields(cls)}
        raw = json.loads(metadata)
        unknown = set(raw) - fields
        if unknown:
            raise ValueError(f"unknown dispatch metadata keys {sorted(unknown)}; known: {sorted(fields)}")
        return cls(**raw)


class Events:
    """The job's steps, appended to a file as JSON lines (the test reads them)."""

    def __init__(self, path: str) -> None:
        self.path = pathlib.Path(path)

    def emit(self, event: str, **details: Any) -> None:
        with self.path.open("a") as out:
            out.write(json.dumps({"event": event, "t": time.time(), **details}) + "\n")


async def wav_frames(path: str) -> AsyncIterator[rtc.AudioFrame]:
    """The WAV as 50 ms frames, handed over as fast as they are asked for (as TTS does)."""
    with wave.open(path, "rb") as wav:
        if wav.getsampwidth() != 2 or wav.getnchannels() != 1:
            raise ValueError(f"{path}: a 16-bit mono WAV is expected")
        rate = wav.getframerate()
        data = wav.readframes(wav.getnframes())
    step = int(rate * CHUNK_S) * 2
    for offset in range(0, len(data), step):
        piece = data[offset:offset + step]
        yield rtc.AudioFrame(piece, rate, 1, len(piece) // 2)


def make_avatar(cfg: JobConfig) -> bithuman.AvatarSession | agents.inference.AvatarSession:
    if cfg.avatar == "plugin":
        kwargs: dict[str, Any] = {}
        if cfg.avatar_id:
            kwargs["avatar_id"] = cfg.avatar_id
        if cfg.avatar_image:
            kwargs["avatar_image"] = cfg.avatar_image
        models = typing.get_args(bithuman.avatar.BitHumanModel)
        if cfg.model not in models:
            raise ValueError(f"model {cfg.model!r}: expected one of {models}")
        model = typing.cast("bithuman.avatar.BitHumanModel", cfg.model)
        return bithuman.AvatarSession(
            api_url=cfg.api_url, api_secret=os.environ["AVATAR_AGENT_API_SECRET"], model=model, **kwargs
        )
    if cfg.avatar == "inference":
        return agents.inference.AvatarSession(f"bithuman/{cfg.avatar_id}", base_url=cfg.base_url)
    raise ValueError(f"avatar {cfg.avatar!r}: expected 'plugin' or 'inference'")


async def entrypoint(ctx: agents.JobContext) -> None:
    cfg = JobConfig.parse(ctx.job.metadata)
    events = Events(cfg.events)
    commands: asyncio.Queue[str] = asyncio.Queue()

    def on_data(packet: rtc.DataPacket) -> None:
        if packet.topic == TOPIC:
            commands.put_nowait(packet.data.decode())

    ctx.room.on("data_received", on_data)
    # An agent listens to its user, not to its own avatar.
    await ctx.connect(auto_subscribe=agents.AutoSubscribe.SUBSCRIBE_NONE)
    events.emit("joined", room=ctx.room.name, identity=ctx.room.local_participant.identity)
    session: agents.AgentSession[None] = agents.AgentSession()
    avatar = make_avatar(cfg)
    try:
        events.emit("avatar_starting", avatar=cfg.avatar)
        await avatar.start(session, room=ctx.room)
        events.emit("avatar_started", session_id=getattr(avatar, "session_id", None))
        await session.start(
            agent=agents.Agent(instructions="Speak the test's WAV."),
            room=ctx.room,
            room_options=agents.room_io.RoomOptions(audio_input=False, text_input=False, close_on_disconnect=False),
        )
        await avatar.wait_for_join(timeout=JOIN_TIMEOUT_S)
        events.emit("avatar_joined", identity=avatar.avatar_identity)
        await obey(ctx, cfg, events, session, avatar, commands)
    except Exception as e:
        events.emit("failed", error=f"{type(e).__name__}: {e}")
        raise
    finally:
        ctx.shutdown("the test's job is over")


async def obey(
    ctx: agents.JobContext,
    cfg: JobConfig,
    events: Events,
    session: agents.AgentSession[None],
    avatar: bithuman.AvatarSession | agents.inference.AvatarSession,
    commands: asyncio.Queue[str],
) -> None:
    deadline = time.monotonic() + cfg.leave_after_s
    while True:
        try:
            command = await asyncio.wait_for(commands.get(), max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            command = "leave"
        events.emit("command", command=command)
        if command == "speak":
            events.emit("speaking")
            handle = session.say("The test's speech.", audio=wav_frames(cfg.wav))
            await handle
            events.emit("spoke", interrupted=handle.interrupted)
        elif command == "close-avatar":
            events.emit("avatar_closing")
            await avatar.aclose()
            events.emit("avatar_closed")
        elif command == "leave":
            # The agent leaves the room as it would when its user hangs up;
            # the job ends after it.
            events.emit("leaving")
            await ctx.room.disconnect()
            events.emit("left")
            return
        else:
            events.emit("unknown_command", command=command)


def no_load() -> float:
    """The worker's load as livekit-server sees it: always available. The default
    (CPU use) marks a worker on a busy 2-core test machine unavailable at 0.7."""
    return 0.0


if __name__ == "__main__":
    agents.cli.run_app(
        agents.WorkerOptions(
            entrypoint_fnc=entrypoint,
            agent_name=os.environ["AVATAR_AGENT_NAME"],
            load_fnc=no_load,
            num_idle_processes=1,
            # A job process imports livekit-agents and the plugin: slow on a loaded machine.
            initialize_process_timeout=60.0,
            drain_timeout=5,
            shutdown_process_timeout=10.0,
        )
    )
