"""Probes and Prometheus metrics on HEALTH_PORT.

`/healthz` answers while the process serves requests (liveness). `/readyz`
answers 200 only once the first video frame has been published, the runner's
share of the session's media-plane readiness. `/metrics` is the Prometheus
text format.
"""

from __future__ import annotations

import logging

import prometheus_client
from aiohttp import web

from .exits import ExitCode, RunnerFailure

log = logging.getLogger(__name__)

# Seconds from the first audio of a speech segment reaching the runner to its
# first frame leaving for LiveKit: 20 ms to 2 s covers a CPU portrait renderer
# and a bitHuman model warming up.
LATENCY_BUCKETS = (0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.0)


class RunnerMetrics:
    """The runner's Prometheus metrics and readiness, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = prometheus_client.CollectorRegistry()
        prometheus_client.ProcessCollector(registry=self.registry)
        self.frames_published = prometheus_client.Counter(
            "avatar_video_frames_published", "Video frames handed to LiveKit.", registry=self.registry
        )
        self.frames_dropped = prometheus_client.Counter(
            "avatar_video_frames_dropped",
            "Frame slots missed: frames the video fell behind its frame rate by.",
            registry=self.registry,
        )
        self.fps = prometheus_client.Gauge(
            "avatar_video_fps", "Video frames per second captured over the last second.", registry=self.registry
        )
        self.audio_to_video_latency = prometheus_client.Histogram(
            "avatar_audio_to_video_latency_seconds",
            "From a speech segment's first audio at the runner to its first frame handed to LiveKit.",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.time_to_first_frame = prometheus_client.Gauge(
            "avatar_time_to_first_frame_seconds",
            "From runner start to the first video frame published.",
            registry=self.registry,
        )
        self.interruptions = prometheus_client.Counter(
            "avatar_interruptions", "Speech cleared by the agent (lk.clear_buffer).", registry=self.registry
        )
        self.ready = False

    def first_frame_published(self, seconds_since_start: float) -> None:
        self.time_to_first_frame.set(seconds_since_start)
        self.ready = True


async def listen(runner: web.AppRunner, port: int, variable: str) -> int:
    """Serves `runner` on all interfaces (the kubelet probes the pod IP); the port it got (0: a free one)."""
    await runner.setup()
    site = web.TCPSite(runner, host="0.0.0.0", port=port)
    try:
        await site.start()
    except OSError as err:
        await runner.cleanup()
        raise RunnerFailure(ExitCode.HEALTH_PORT_UNAVAILABLE, f"cannot listen on {variable} {port}: {err.strerror}") from None
    return int(runner.addresses[0][1])


class HealthServer:
    def __init__(self, metrics: RunnerMetrics, port: int) -> None:
        self._metrics = metrics
        self._port = port
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics_page)
        self._runner = web.AppRunner(app, access_log=None)

    async def start(self) -> None:
        await listen(self._runner, self._port, "HEALTH_PORT")
        log.info("health and metrics on port %d", self._port)

    async def stop(self) -> None:
        await self._runner.cleanup()

    async def _healthz(self, _: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _readyz(self, _: web.Request) -> web.Response:
        if self._metrics.ready:
            return web.Response(text="ready\n")
        return web.Response(status=503, text="waiting for the first video frame\n")

    async def _metrics_page(self, _: web.Request) -> web.Response:
        body = prometheus_client.generate_latest(self._metrics.registry)
        return web.Response(body=body, headers={"Content-Type": prometheus_client.CONTENT_TYPE_LATEST})
