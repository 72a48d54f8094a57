"""A Renderer as livekit-agents' VideoGenerator, metered on the way out.

AvatarRunner pulls items from `__aiter__` and pushes each into LiveKit's
AVSynchronizer before pulling the next, so code after a `yield` runs once
its item has been handed to LiveKit: that is where frames count as published.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import AsyncIterator, Callable

from livekit import rtc
from livekit.agents.voice.avatar import AudioSegmentEnd, VideoGenerator

from .health import RunnerMetrics
from .renderers.base import RenderedItem, Renderer

log = logging.getLogger(__name__)

# Frames the video may run behind its schedule before slots count as dropped:
# the synchronizer queues about 100 ms, so pulls lead or lag by a few frames.
DROP_ALLOWANCE_FRAMES = 3


class RendererVideoGenerator(VideoGenerator):
    def __init__(
        self,
        renderer: Renderer,
        metrics: RunnerMetrics,
        *,
        started_at: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._renderer = renderer
        self._metrics = metrics
        self._started_at = started_at
        self._clock = clock
        self._synchronizer: rtc.AVSynchronizer | None = None
        self._in_segment = False
        # Arrival times of segments whose first frame is not out yet.
        self._segment_starts: collections.deque[float] = collections.deque()
        self._awaiting_first_audio = True
        self._first_published: float | None = None
        self._published = 0
        self._dropped = 0

    def use_synchronizer(self, synchronizer: rtc.AVSynchronizer) -> None:
        """The synchronizer AvatarRunner feeds: cleared on interruption."""
        self._synchronizer = synchronizer

    async def push_audio(self, frame: rtc.AudioFrame | AudioSegmentEnd) -> None:
        if isinstance(frame, AudioSegmentEnd):
            self._in_segment = False
            await self._renderer.flush()
            return
        if not self._in_segment:
            self._in_segment = True
            self._segment_starts.append(self._clock())
        await self._renderer.push_audio(frame)

    async def clear_buffer(self) -> None:
        self._renderer.interrupt()
        self._segment_starts.clear()
        self._in_segment = False
        self._awaiting_first_audio = True
        self._metrics.interruptions.inc()
        if self._synchronizer is not None:
            # AvatarRunner lets the synchronizer's ~100 ms of queued speech
            # play out. Dropping it stops the avatar mid-word, as asked:
            # silence at a viewer ~100-170 ms after lk.clear_buffer instead
            # of ~240 ms (measured in tests/e2e).
            await self._synchronizer.clear_queue()

    def __aiter__(self) -> AsyncIterator[RenderedItem]:
        return self._stream()

    async def _stream(self) -> AsyncIterator[RenderedItem]:
        async for item in self._renderer.frames():
            if isinstance(item, rtc.AudioFrame):
                if self._awaiting_first_audio and self._segment_starts:
                    latency = self._clock() - self._segment_starts.popleft()
                    self._metrics.audio_to_video_latency.observe(latency)
                    self._awaiting_first_audio = False
            elif isinstance(item, AudioSegmentEnd):
                self._awaiting_first_audio = True
            yield item
            if isinstance(item, rtc.VideoFrame):
                self._video_published()

    def _video_published(self) -> None:
        now = self._clock()
        self._published += 1
        self._metrics.frames_published.inc()
        if self._first_published is None:
            self._first_published = now
            self._metrics.first_frame_published(now - self._started_at)
            log.info("first video frame published %.2f s after start", now - self._started_at)
            return
        due = int((now - self._first_published) * self._renderer.fps) + 1
        behind = due - self._published - DROP_ALLOWANCE_FRAMES
        if behind > self._dropped:
            self._metrics.frames_dropped.inc(behind - self._dropped)
            self._dropped = behind
