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
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from livekit import rtc
from livekit.agents.voice.avatar import AvatarOptions, DataStreamAudioReceiver

from .config import RunnerConfig
from .contract import Env
from .exits import ExitCode, Outcome, RunnerFailure
from .health import RunnerMetrics
from .publishing import AvatarPublisher, video_publishing
from .renderers import Renderer, open_renderer
from .video_generator import RendererVideoGenerator

log = logging.getLogger(__name__)

T = TypeVar("T")

CONNECT_TIMEOUT_S = 30.0
# A lost connection is joined again for this long (a livekit-server restart
# takes seconds to a minute): only then does the runner give up (exit 75).
REJOIN_WINDOW_S = 120.0
REJOIN_DELAY_S = 2.0
# Each shutdown step gets this long, so SIGTERM ends the process in seconds.
CLOSE_STEP_TIMEOUT_S = 2.0

_DisconnectReason = rtc.DisconnectReason
# Disconnections decided by the server: the session is over, not failed.
_SESSION_ENDED_BY_SERVER = {
    _DisconnectReason.ROOM_DELETED: "the room was deleted",
    _DisconnectReason.ROOM_CLOSED: "the room was closed",
    _DisconnectReason.PARTICIPANT_REMOVED: "the avatar was removed from the room",
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
    if reason == _DisconnectReason.SERVER_SHUTDOWN:
        # A restart or a rolling update, most often: joined again (see serve_room).
        return Outcome(ExitCode.ROOM_UNREACHABLE, f"the LiveKit server shut down ({_DisconnectReason.Name(reason)})")
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
        return await serve_room(config, renderer, metrics, started_at=started_at, stop=stop)
    except _Stopped:
        return Outcome(ExitCode.OK, stop.reason)
    finally:
        await _bounded(renderer.aclose(), "closing the renderer")


async def serve_room(
    config: RunnerConfig,
    renderer: Renderer,
    metrics: RunnerMetrics,
    *,
    started_at: float,
    stop: StopRequest,
    on_joined: Callable[[], None] | None = None,
) -> Outcome:
    """The session in the room; a connection lost after joining is joined again for up to REJOIN_WINDOW_S.

    The first join is not retried: a runner that never got in has a wrong URL
    or token more often than a server restarting. `on_joined` runs at each
    join (a pool task tells its pool). The one-session runner and a pool
    runner's tasks both run this."""
    lost_at: float | None = None
    while True:
        try:
            outcome = await _in_room(config, renderer, metrics, started_at, stop, on_joined)
            lost_at = time.monotonic()  # it was in the room: the window starts now
        except RunnerFailure as failure:
            if lost_at is None or failure.outcome.code != ExitCode.ROOM_UNREACHABLE:
                raise
            outcome = failure.outcome
        if outcome.code != ExitCode.ROOM_UNREACHABLE:
            return outcome
        if time.monotonic() - lost_at >= REJOIN_WINDOW_S:
            return Outcome(outcome.code, f"{outcome.reason} (joining again failed for {REJOIN_WINDOW_S:g} s)")
        log.warning("lost the room: %s; joining again", outcome.reason)
        await _unless_stopped(asyncio.sleep(REJOIN_DELAY_S), stop)


async def _in_room(
    config: RunnerConfig,
    renderer: Renderer,
    metrics: RunnerMetrics,
    started_at: float,
    stop: StopRequest,
    on_joined: Callable[[], None] | None = None,
) -> Outcome:
    room, ended = await _join(config, stop)
    if on_joined is not None:
        on_joined()
    avatar = _AvatarPipeline(room, renderer, metrics, started_at=started_at, agent=config.agent_identity)
    pipeline_task = asyncio.create_task(avatar.run())
    stop_task = asyncio.create_task(stop.wait())
    try:
        return await _wait_for_the_end(config, started_at, stop, avatar, ended, pipeline_task, stop_task)
    finally:
        stop_task.cancel()
        pipeline_task.cancel()
        with contextlib.suppress(BaseException):
            await pipeline_task
        await avatar.aclose()
        await _bounded(room.disconnect(), "leaving the room")


def _watch_room(room: rtc.Room, agent: str, ended: asyncio.Future[Outcome]) -> None:
    """Settles `ended` when the agent leaves or the room goes away."""

    def end(outcome: Outcome) -> None:
        if not ended.done():
            ended.set_result(outcome)

    def on_participant_disconnected(participant: rtc.RemoteParticipant) -> None:
        # While the SDK resumes a broken connection it reports everyone as
        # gone; only a departure seen on a healthy connection is the agent's.
        if participant.identity == agent and room.connection_state == rtc.ConnectionState.CONN_CONNECTED:
            end(Outcome(ExitCode.OK, f"agent {agent!r} left the room"))

    room.on("participant_disconnected", on_participant_disconnected)
    room.on("disconnected", lambda reason: end(disconnect_outcome(reason)))


async def _join(config: RunnerConfig, stop: StopRequest) -> tuple[rtc.Room, asyncio.Future[Outcome]]:
    """The joined room, and the future its end (agent gone, room gone) settles."""
    agent = config.agent_identity
    ended: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
    room = rtc.Room()
    _watch_room(room, agent, ended)
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
    return room, ended


class _AvatarPipeline:
    """livekit-agents' avatar protocol around the renderer: the agent's speech
    in, the avatar's audio and video out."""

    def __init__(
        self, room: rtc.Room, renderer: Renderer, metrics: RunnerMetrics, *, started_at: float, agent: str
    ) -> None:
        self.room = room
        self.agent = agent
        self.started = False  # the agent came and publishing began
        self.receiver = DataStreamAudioReceiver(room, sender_identity=agent)
        generator = RendererVideoGenerator(renderer, metrics, started_at=started_at)
        width, height = renderer.resolution
        self.publisher = AvatarPublisher(
            room,
            audio_recv=self.receiver,
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
        generator.use_synchronizer(self.publisher.av_sync)
        metrics.fps.set_function(lambda: self.publisher.av_sync.actual_fps)

    async def run(self) -> None:
        await self.publisher.start()  # returns once the agent is in the room
        self.started = True
        log.info("agent %r is in the room; rendering", self.agent)
        await self.publisher.wait_for_complete()

    async def aclose(self) -> None:
        if self.started:
            await _bounded(self.publisher.aclose(), "closing the avatar runner")
        else:  # AvatarRunner.aclose() needs a started runner
            await _bounded(self.receiver.aclose(), "closing the audio receiver")
            await _bounded(self.publisher.av_sync.aclose(), "closing the synchronizer")


def _time_left(config: RunnerConfig, started_at: float) -> float | None:
    # Counted from the runner's start: loading a model is part of the session.
    if config.max_duration_s is None:
        return None
    return max(0.0, config.max_duration_s - (time.monotonic() - started_at))


async def _wait_for_the_end(
    config: RunnerConfig,
    started_at: float,
    stop: StopRequest,
    avatar: _AvatarPipeline,
    ended: asyncio.Future[Outcome],
    pipeline_task: asyncio.Task[None],
    stop_task: asyncio.Task[None],
) -> Outcome:
    """Whichever comes first: the room's end, a stop, the pipeline's end, the deadline."""
    waiters: set[asyncio.Future[Any]] = {ended, pipeline_task, stop_task}
    done, _ = await asyncio.wait(waiters, timeout=_time_left(config, started_at), return_when=asyncio.FIRST_COMPLETED)
    if ended.done():
        return ended.result()
    if stop_task in done:
        return Outcome(ExitCode.OK, stop.reason)
    if pipeline_task in done:
        if not avatar.started:
            # It gave up before the agent ever came (the room went away):
            # the room's own disconnect event says why; let it arrive.
            with contextlib.suppress(asyncio.TimeoutError):
                return await asyncio.wait_for(asyncio.shield(ended), 2.0)
        return _pipeline_outcome(pipeline_task, avatar.room, avatar.agent, agent_seen=avatar.started)
    return Outcome(ExitCode.OK, f"{Env.MAX_DURATION} of {config.max_duration_s:g} s reached")


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
