"""One pool task: today's room session, on the renderer the pool runner loaded.

The session is `avatar_runner.session`'s, piece by piece: the same join, the
same avatar protocol (DataStreamAudioReceiver, AvatarPublisher, on behalf of
the token's `lk.publish_on_behalf`), the same ends and exit reasons, the same
rejoin window. Two things differ. The renderer comes from the pool's
`RendererSource` instead of being loaded for the session, and the task tells
the pool when it is in the room (`TaskControl.joined`), which a launch with
`async_mode=false` waits for: `session.serve_room`'s `on_joined`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import prometheus_client

from . import session
from .config import RunnerConfig, ServeConfig
from .exits import ExitCode, Outcome
from .health import RunnerMetrics
from .renderers.base import Renderer
from .serve_renderers import RendererSource, fetch_image
from .tasks import TaskControl, TaskRequest

log = logging.getLogger(__name__)


class TaskMetrics(RunnerMetrics):
    """One task's handle on the runner's metrics: the counters and histograms
    are the runner's (all its sessions add up), the frame-rate gauge is the
    task's own, and its first frame is reported to the task.

    RunnerMetrics.__init__ is not called: it would make a registry of its own.
    """

    def __init__(self, shared: RunnerMetrics, on_first_frame: Callable[[], None]) -> None:
        self.registry = shared.registry
        self.frames_published = shared.frames_published
        self.frames_dropped = shared.frames_dropped
        self.fps = prometheus_client.Gauge("avatar_video_fps", "This session's frames per second.", registry=None)
        self.audio_to_video_latency = shared.audio_to_video_latency
        self.time_to_first_frame = shared.time_to_first_frame
        self.interruptions = shared.interruptions
        self.ready = False
        self._on_first_frame = on_first_frame

    def first_frame_published(self, seconds_since_start: float) -> None:
        super().first_frame_published(seconds_since_start)  # the runner's gauge: its latest session's
        self._on_first_frame()

    def current_fps(self) -> float:
        return float(next(iter(self.fps.collect())).samples[0].value)


class RoomTasks:
    """Runs a pool task (`tasks.RunTask`) as a room session."""

    def __init__(self, config: ServeConfig, source: RendererSource, metrics: RunnerMetrics) -> None:
        self._config = config
        self._source = source
        self._metrics = metrics
        self._running: set[TaskMetrics] = set()
        # The runner's gauge: the mean frame rate of its sessions in a room.
        metrics.fps.set_function(self._mean_fps)

    def _mean_fps(self) -> float:
        rates = [m.current_fps() for m in self._running]
        return sum(rates) / len(rates) if rates else 0.0

    def session_config(self, request: TaskRequest) -> RunnerConfig:
        return RunnerConfig(
            livekit_url=request.livekit_url,
            livekit_token=request.livekit_token,
            agent_identity=request.agent_identity,
            renderer=self._config.renderer,
            bithuman=self._config.bithuman,
            image_file=None,
            fps=self._config.fps,
            max_duration_s=self._config.max_duration_s,
            health_port=0,
            termination_log=self._config.termination_log,
        )

    async def _open(self, request: TaskRequest) -> Renderer:
        image = request.image
        if image is None and request.image_url is not None and self._source.takes_images:
            image = await fetch_image(request.image_url)
        return await self._source.open(image)

    async def __call__(self, request: TaskRequest, control: TaskControl) -> Outcome:
        metrics = TaskMetrics(self._metrics, control.first_frame)
        try:
            renderer = await session._unless_stopped(self._open(request), control.stop)
        except session._Stopped:
            return Outcome(ExitCode.OK, control.stop.reason)
        self._running.add(metrics)
        try:
            return await session.serve_room(
                self.session_config(request), renderer, metrics,
                started_at=control.started_at, stop=control.stop, on_joined=control.joined,
            )
        except session._Stopped:
            return Outcome(ExitCode.OK, control.stop.reason)
        finally:
            self._running.discard(metrics)
            await session._bounded(renderer.aclose(), "closing the renderer")

