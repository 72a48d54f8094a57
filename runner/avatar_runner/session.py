"""One avatar session: render the agent's speech in its room until it ends.

Order matters for what the room sees: the renderer is loaded before joining,
so a refused model or credential never shows an avatar that then vanishes.
In the room, livekit-agents' avatar protocol does the media work:
DataStreamAudioReceiver takes the agent's `lk.audio_stream` and answers
`lk.clear_buffer`; AvatarRunner (as AvatarPublisher, for the frame rate)
publishes audio and video (on behalf of the agent, by the token's
`lk.publish_on_behalf`) and sends `lk.playback_started` /
`lk.playback_finished` back to the agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable
from typing import Any, TypeVar

from livekit import rtc
from livekit.agents.voice.avatar import AvatarOptions, DataStreamAudioReceiver

from .config import RunnerConfig
from .exits import ExitCode, Outcome, RunnerFailure
from .health import RunnerMetrics
from .publishing import AvatarPublisher, video_publishing
from .renderers import Renderer, open_renderer
from .video_generator import RendererVideoGenerator

log = logging.getLogger(__name__)

T = TypeVar("T")

CONNECT_TIMEOUT_S = 30.0
# Each shutdown step gets this long, so SIGTERM ends the process in seconds.
CLOSE_STEP_TIMEOUT_S = 2.0

_DisconnectReason = rtc.DisconnectReason
# Disconnections decided by the server: the session is over, not failed.
_SESSION_ENDED_BY_SERVER = {
    _DisconnectReason.ROOM_DELETED: "the room was deleted",
    _DisconnectReason.ROOM_CLOSED: "the room was closed",
    _DisconnectReason.PARTICIPANT_REMOVED: "the avatar was removed from the room",
    _DisconnectReason.SERVER_SHUTDOWN: "the LiveKit server shut down",
    _DisconnectReason.DUPLICATE_IDENTITY: "another participant joined with the avatar's identity",
}
# What the Rust SDK's ConnectError says when the server refused the token.
_TOKEN_REFUSAL_MARKERS = ("401", "unauthorized", "invalid token", "token is expired", "permission denied")


class StopRequest:
    """Set from a signal handler: the session ends as soon as it can."""

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self.reason = ""

    def request(self, reason: str) -> None:
        if not self._event.is_set():
            self.reason = reason
            self._event.set()

    async def wait(self) -> None:
        await self._event.wait()


class _Stopped(Exception):
    """A stop was requested before the session was in the room."""


def disconnect_outcome(reason: rtc.DisconnectReason.ValueType) -> Outcome:
    ended = _SESSION_ENDED_BY_SERVER.get(reason)
    if ended is not None:
        return Outcome(ExitCode.OK, ended)
    return Outcome(
        ExitCode.ROOM_UNREACHABLE, f"lost the connection to LiveKit ({_DisconnectReason.Name(reason)})"
    )


def connect_failure(message: str) -> RunnerFailure:
    lowered = message.lower()
    if any(marker in lowered for marker in _TOKEN_REFUSAL_MARKERS):
        return RunnerFailure(ExitCode.TOKEN_REJECTED, f"LiveKit rejected the room token: {message}")
    return RunnerFailure(ExitCode.ROOM_UNREACHABLE, f"cannot reach the LiveKit room: {message}")


async def _unless_stopped(aw: Awaitable[T], stop: StopRequest) -> T:
    task = asyncio.ensure_future(aw)
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
    if task.done():
        return task.result()
    task.cancel()
    raise _Stopped


async def _bounded(aw: Awaitable[object], what: str) -> None:
    """Awaits a shutdown step for at most CLOSE_STEP_TIMEOUT_S; a failure only logs."""
    try:
        await asyncio.wait_for(aw, CLOSE_STEP_TIMEOUT_S)
    except Exception:
        log.warning("%s did not finish cleanly", what, exc_info=True)


async def run_session(
    config: RunnerConfig, metrics: RunnerMetrics, *, started_at: float, stop: StopRequest
) -> Outcome:
    try:
        renderer = await _unless_stopped(open_renderer(config), stop)
    except _Stopped:
        return Outcome(ExitCode.OK, stop.reason)
    log.info(
        "renderer: %s, %dx%d at %g fps, audio %d Hz",
        renderer.name, *renderer.resolution, renderer.fps, renderer.sample_rate,
    )
    try:
        return await _in_room(config, renderer, metrics, started_at, stop)
    except _Stopped:
        return Outcome(ExitCode.OK, stop.reason)
    finally:
        await _bounded(renderer.aclose(), "closing the renderer")


async def _in_room(
    config: RunnerConfig,
    renderer: Renderer,
    metrics: RunnerMetrics,
    started_at: float,
    stop: StopRequest,
) -> Outcome:
    agent = config.agent_identity
    ended: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()

    def end(outcome: Outcome) -> None:
        if not ended.done():
            ended.set_result(outcome)

    def on_participant_disconnected(participant: rtc.RemoteParticipant) -> None:
        # While the SDK resumes a broken connection it reports everyone as
        # gone; only a departure seen on a healthy connection is the agent's.
        if participant.identity == agent and room.connection_state == rtc.ConnectionState.CONN_CONNECTED:
            end(Outcome(ExitCode.OK, f"agent {agent!r} left the room"))

    room = rtc.Room()
    room.on("participant_disconnected", on_participant_disconnected)
    room.on("disconnected", lambda reason: end(disconnect_outcome(reason)))
    try:
        # The runner subscribes to nothing: speech arrives as data streams.
        options = rtc.RoomOptions(auto_subscribe=False)
        await _unless_stopped(
            asyncio.wait_for(room.connect(config.livekit_url, config.livekit_token, options), CONNECT_TIMEOUT_S),
            stop,
        )
    except rtc.ConnectError as err:
        raise connect_failure(err.message) from None
    except asyncio.TimeoutError:
        raise RunnerFailure(
            ExitCode.ROOM_UNREACHABLE, f"cannot reach the LiveKit room: no answer in {CONNECT_TIMEOUT_S:g} s"
        ) from None
    log.info("joined room %r as %r; waiting for agent %r", room.name, room.local_participant.identity, agent)

    receiver = DataStreamAudioReceiver(room, sender_identity=agent)
    generator = RendererVideoGenerator(renderer, metrics, started_at=started_at)
    width, height = renderer.resolution
    avatar = AvatarPublisher(
        room,
        audio_recv=receiver,
        video_gen=generator,
        options=AvatarOptions(
            video_width=width,
            video_height=height,
            video_fps=renderer.fps,
            audio_sample_rate=renderer.sample_rate,
            audio_channels=1,
        ),
        publishing=video_publishing(width, height, renderer.fps),
    )
    generator.use_synchronizer(avatar.av_sync)
    metrics.fps.set_function(lambda: avatar.av_sync.actual_fps)
    started = False

    async def pipeline() -> None:
        nonlocal started
        await avatar.start()  # returns once the agent is in the room
        started = True
        log.info("agent %r is in the room; rendering", agent)
        await avatar.wait_for_complete()

    pipeline_task = asyncio.create_task(pipeline())
    stop_task = asyncio.create_task(stop.wait())
    # Counted from the runner's start: loading a model is part of the session.
    time_left = (
        None if config.max_duration_s is None
        else max(0.0, config.max_duration_s - (time.monotonic() - started_at))
    )
    try:
        waiters: set[asyncio.Future[Any]] = {ended, pipeline_task, stop_task}
        done, _ = await asyncio.wait(waiters, timeout=time_left, return_when=asyncio.FIRST_COMPLETED)
        if ended.done():
            return ended.result()
        if stop_task in done:
            return Outcome(ExitCode.OK, stop.reason)
        if pipeline_task in done:
            if not started:
                # It gave up before the agent ever came (the room went away):
                # the room's own disconnect event says why; let it arrive.
                with contextlib.suppress(asyncio.TimeoutError):
                    return await asyncio.wait_for(asyncio.shield(ended), 2.0)
            return _pipeline_outcome(pipeline_task, room, agent, agent_seen=started)
        return Outcome(ExitCode.OK, f"AVATAR_MAX_DURATION of {config.max_duration_s:g} s reached")
    finally:
        stop_task.cancel()
        pipeline_task.cancel()
        with contextlib.suppress(BaseException):
            await pipeline_task
        if started:
            await _bounded(avatar.aclose(), "closing the avatar runner")
        else:  # AvatarRunner.aclose() needs a started runner
            await _bounded(receiver.aclose(), "closing the audio receiver")
            await _bounded(avatar.av_sync.aclose(), "closing the synchronizer")
        await _bounded(room.disconnect(), "leaving the room")


def _pipeline_outcome(task: asyncio.Task[None], room: rtc.Room, agent: str, *, agent_seen: bool) -> Outcome:
    """Why the media pipeline ended on its own."""
    err = task.exception()
    if isinstance(err, RunnerFailure):  # a renderer refused mid-session
        return err.outcome
    if agent_seen and agent not in room.remote_participants:
        # The agent left and the pipeline noticed first (its RPCs failed).
        return Outcome(ExitCode.OK, f"agent {agent!r} left the room")
    if err is not None:
        log.error("avatar pipeline failed", exc_info=err)
        return Outcome(ExitCode.INTERNAL, f"avatar pipeline failed: {type(err).__name__}: {err}")
    return Outcome(ExitCode.INTERNAL, "the agent's audio stream ended while the agent is still in the room")
