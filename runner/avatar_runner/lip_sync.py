"""Each video frame sent a fixed 50 ms after the speech rendered with it starts to play.

livekit-agents' AvatarRunner pushes every frame and its slice of speech into
LiveKit's AVSynchronizer. The speech goes into an AudioSource queue (100 ms
deep) that plays out in real time; the video frame is captured once the
synchronizer's small video queue lets it. When the full audio queue is what
holds the renderer back, that video queue stays empty and the picture left
the runner ~76 ms ahead of its sound; when idle frames had filled it as the
speech began, the picture left 30-75 ms behind. Which of the two a session
got depended on what the queues held at the speech's start
(bench/PERFORMANCE.md, "Lip sync").

`AudioPacedSynchronizer` stamps each video frame, as it is pushed, with the
time the audio queued before it will have played (that frame's slice is
queued right after it) plus VIDEO_AFTER_AUDIO_S, and captures the frame then.
The due time is read from the audio queue itself, so it holds however full
the queue runs and however late a busy machine runs the loop: a late frame
goes at once, never earlier than due. While nothing is queued (silence) the
renderer is held to the frame rate before its frame is queued, not after:
upstream's queue of idle frames (2-3 frames) delayed the first frames of
speech behind sound that played at once.
"""

from __future__ import annotations

import asyncio
import collections
import math
import time

from livekit import rtc

# How much later than its sound a frame is sent. LiveKit rooms created on
# join (as this product's are) have no sync_streams, so viewers play each
# track as soon as their own buffers allow, and WebRTC's audio path (Opus
# packets, NetEq's jitter buffer, the audio device's pulls) outlasts the
# video's: frames sent with their sound were seen 85-90 ms before it at a
# viewer (bench, paced agent), and with 50 ms they are seen ~35-40 ms before
# it, inside EBU R37 (-60..+40 ms). A viewer that synchronizes its tracks
# (sync_streams) would see the picture 50 ms late instead.
VIDEO_AFTER_AUDIO_S = 0.05
# Frames of slack in the video queue beyond those waiting for the audio
# queue to play: the renderer stays held back by the audio (as upstream),
# never by a full video queue that would starve the audio queue.
SLACK_FRAMES = 2


def video_queue_ms(audio_queue_ms: float, fps: float) -> float:
    """Video queue depth that holds the frames waiting for `audio_queue_ms` of audio (and VIDEO_AFTER_AUDIO_S), plus slack."""
    frames = math.ceil((audio_queue_ms / 1000 + VIDEO_AFTER_AUDIO_S) * fps) + SLACK_FRAMES
    # Half a frame over: AVSynchronizer truncates fps * ms / 1000 to whole frames.
    return (frames + 0.5) * 1000 / fps


def due_at(pushed_at: float, audio_queued_s: float, after_audio_s: float = VIDEO_AFTER_AUDIO_S) -> float:
    """When a frame pushed at `pushed_at` is due: `after_audio_s` after the audio queued ahead of its slice has played."""
    return pushed_at + max(0.0, audio_queued_s) + after_audio_s


class FramePacer:
    """The frame rate while silent: the wait before each frame, on a fixed schedule.

    A frame that comes late is not made up for by a burst: the schedule
    restarts from it (a viewer would see the burst as frames out of step).
    """

    def __init__(self, fps: float) -> None:
        self._interval = 1.0 / fps
        self._next: float | None = None

    def wait(self, now: float) -> float:
        """Seconds to wait before a frame ready at `now`; books that frame's slot."""
        slot = now if self._next is None or self._next < now else self._next
        self._next = slot + self._interval
        return slot - now

    def reset(self) -> None:
        self._next = None


class AudioPacedSynchronizer(rtc.AVSynchronizer):
    """rtc.AVSynchronizer whose video waits for the audio queued ahead of it.

    Reuses the upstream sources and video queue; replaces how a video frame
    is queued (with its due time in the timestamp's place) and captured.
    tests/unit/test_lip_sync.py fails if the upstream internals this relies
    on change.
    """

    def __init__(
        self,
        *,
        audio_source: rtc.AudioSource,
        video_source: rtc.VideoSource,
        video_fps: float,
        audio_queue_ms: float,
    ) -> None:
        # Before super().__init__: it starts _capture_video, which uses them.
        self._pacer = FramePacer(video_fps)
        self._captured: collections.deque[float] = collections.deque(maxlen=max(2, round(video_fps)))
        self._cleared = 0  # bumped by clear_queue: a frame waiting for its due time then is stale
        super().__init__(
            audio_source=audio_source,
            video_source=video_source,
            video_fps=video_fps,
            video_queue_size_ms=video_queue_ms(audio_queue_ms, video_fps),
        )

    async def push(self, frame: rtc.VideoFrame | rtc.AudioFrame, timestamp: float | None = None) -> None:
        if isinstance(frame, rtc.AudioFrame):
            await super().push(frame, timestamp)
            return
        # AudioSource.queued_duration is on time.monotonic(), as are the due times.
        queued = self._audio_source.queued_duration
        if queued <= 0:
            wait = self._pacer.wait(time.monotonic())
            if wait > 0:
                await asyncio.sleep(wait)
        else:
            self._pacer.reset()
        await self._video_queue.put((frame, due_at(time.monotonic(), queued)))

    async def _capture_video(self) -> None:
        while not self._stopped:
            frame, due = await self._video_queue.get()
            cleared = self._cleared
            wait = (due or 0.0) - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            # An interruption while it waited: its speech was dropped, so is it
            # (it would show the mouth open up to ~150 ms after the cut).
            if cleared == self._cleared:
                self._video_source.capture_frame(frame)
                self._captured.append(time.monotonic())
            self._video_queue.task_done()

    async def clear_queue(self) -> None:
        self._cleared += 1
        await super().clear_queue()

    def reset(self) -> None:
        self._pacer.reset()
        self._captured.clear()

    @property
    def actual_fps(self) -> float:
        """Frames captured per second over the last second's frames (as upstream)."""
        if len(self._captured) < 2:
            return 0.0
        return (len(self._captured) - 1) / (self._captured[-1] - self._captured[0])
