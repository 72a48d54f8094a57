"""avatar_runner.lip_sync: each video frame goes out when its audio starts to play.

The synchronizer is exercised with LiveKit's real AudioSource and
VideoSource (no room needed: the audio source plays its queue out in real
time on its own). Times are only checked as lower bounds, which a loaded
machine cannot break: a frame is never sent before its sound.
"""

from __future__ import annotations

import asyncio
import inspect
import math
import time

import numpy as np
import pytest
from avatar_runner import lip_sync
from avatar_runner.publishing import AvatarPublisher
from livekit import rtc
from livekit.agents.voice.avatar import AvatarRunner

RATE = 24000
FPS = 25.0
SLICE = int(RATE / FPS)  # 40 ms


@pytest.mark.parametrize("fps", [24.0, 25.0, 30.0, 60.0])
def test_video_queue_holds_the_frames_waiting_for_the_audio_queue(fps: float) -> None:
    ms = lip_sync.video_queue_ms(100, fps)
    waiting = math.ceil((0.1 + lip_sync.VIDEO_AFTER_AUDIO_S) * fps)  # frames in 100 ms of audio and the delay after it
    # AVSynchronizer's own arithmetic for its queue's size.
    assert int(fps * ms / 1000) == waiting + lip_sync.SLACK_FRAMES


def test_due_when_the_queued_audio_has_played() -> None:
    assert lip_sync.due_at(10.0, 0.08, 0.0) == pytest.approx(10.08)
    assert lip_sync.due_at(10.0, 0.0, 0.0) == 10.0
    assert lip_sync.due_at(10.0, -0.01, 0.0) == 10.0  # an estimate below zero is nothing queued
    assert lip_sync.due_at(10.0, 0.08, 0.05) == pytest.approx(10.13)
    assert lip_sync.due_at(10.0, 0.08) == pytest.approx(10.08 + lip_sync.VIDEO_AFTER_AUDIO_S)


def test_pacer_spaces_frames_and_does_not_burst_after_a_stall() -> None:
    pacer = lip_sync.FramePacer(25.0)
    assert pacer.wait(100.0) == 0.0
    assert pacer.wait(100.0) == pytest.approx(0.04)  # booked the next slot
    assert pacer.wait(100.05) == pytest.approx(0.03)  # slot at 100.08
    # 1 s late: goes at once, and the next waits a full interval, not 0.
    assert pacer.wait(101.2) == 0.0
    assert pacer.wait(101.2) == pytest.approx(0.04)
    pacer.reset()
    assert pacer.wait(101.2) == 0.0


class _RecordingVideoSource(rtc.VideoSource):
    """A real VideoSource that also notes when each frame was captured."""

    def __init__(self) -> None:
        super().__init__(16, 16)
        self.captured: list[tuple[float, int]] = []

    def capture_frame(self, frame: rtc.VideoFrame, *, timestamp_us: int = 0, rotation: rtc.VideoRotation = rtc.VideoRotation.VIDEO_ROTATION_0) -> None:
        self.captured.append((time.monotonic(), frame.data[0]))
        super().capture_frame(frame, timestamp_us=timestamp_us, rotation=rotation)


def _video(tag: int) -> rtc.VideoFrame:
    data = bytearray(16 * 16 * 4)
    data[0] = tag
    return rtc.VideoFrame(16, 16, rtc.VideoBufferType.RGBA, data)


def _slice() -> rtc.AudioFrame:
    return rtc.AudioFrame((np.ones(SLICE, dtype=np.int16) * 1000).tobytes(), RATE, 1, SLICE)


async def test_each_frame_waits_for_the_audio_queued_before_its_slice() -> None:
    audio = rtc.AudioSource(RATE, 1, queue_size_ms=100)
    video = _RecordingVideoSource()
    sync = lip_sync.AudioPacedSynchronizer(audio_source=audio, video_source=video, video_fps=FPS, audio_queue_ms=100)
    try:
        due: dict[int, float] = {}
        pushed: dict[int, float] = {}
        for n in range(1, 16):  # as AvatarRunner pushes a renderer's output: a frame, then its slice
            pushed[n] = time.monotonic()
            due[n] = pushed[n] + audio.queued_duration + lip_sync.VIDEO_AFTER_AUDIO_S
            await sync.push(_video(n))
            await sync.push(_slice())
            if n == 1:
                # The renderer stalls (a busy machine): upstream's frame-rate
                # controller then runs behind, the audio queue fills and holds
                # the renderer back, and upstream sends each frame at once.
                await asyncio.sleep(0.25)
        await asyncio.wait_for(sync.wait_for_playout(), 10)
        assert [tag for _, tag in video.captured] == list(range(1, 16))
        # Audio really was queued ahead of the frames (upstream's synchronizer sends them regardless).
        assert max(due[tag] - pushed[tag] - lip_sync.VIDEO_AFTER_AUDIO_S for tag in due) > 0.05
        for at, tag in video.captured:
            assert at >= due[tag] - 0.002, f"frame {tag} went {1000 * (due[tag] - at):.0f} ms before it was due"
    finally:
        await sync.aclose()
        await audio.aclose()
        await video.aclose()


async def test_silent_frames_are_paced_not_queued() -> None:
    """While nothing plays, frames are held before the queue, so speech never waits behind them."""
    audio = rtc.AudioSource(RATE, 1, queue_size_ms=100)
    video = _RecordingVideoSource()
    sync = lip_sync.AudioPacedSynchronizer(audio_source=audio, video_source=video, video_fps=FPS, audio_queue_ms=100)
    try:
        start = time.monotonic()
        for n in range(1, 11):
            await sync.push(_video(n))
            assert sync._video_queue.qsize() <= 1
        # Ten frames at 25 fps take at least nine intervals, however fast the loop runs.
        assert time.monotonic() - start >= 9 / FPS - 0.005
        await asyncio.wait_for(sync.wait_for_playout(), 10)
        assert len(video.captured) == 10
        assert sync.actual_fps > 0
    finally:
        await sync.aclose()
        await audio.aclose()
        await video.aclose()


async def test_an_interruption_drops_the_frames_waiting_for_its_speech() -> None:
    audio = rtc.AudioSource(RATE, 1, queue_size_ms=100)
    video = _RecordingVideoSource()
    sync = lip_sync.AudioPacedSynchronizer(audio_source=audio, video_source=video, video_fps=FPS, audio_queue_ms=100)
    try:
        for n in range(1, 6):
            await sync.push(_video(n))
            await sync.push(_slice())
        await sync.clear_queue()  # the agent's user barged in
        cleared_at = time.monotonic()
        await sync.push(_video(99))  # the renderer's next frame, mouth closed
        await asyncio.wait_for(sync.wait_for_playout(), 10)
        # Every frame before the cut that had not gone yet is dropped, the one
        # waiting for its due time included; the frame after it goes.
        after = [tag for at, tag in video.captured if at >= cleared_at]
        assert after == [99]
    finally:
        await sync.aclose()
        await audio.aclose()
        await video.aclose()


def test_upstream_internals_it_relies_on_are_there() -> None:
    """AudioPacedSynchronizer overrides AVSynchronizer's private capture loop and
    AvatarPublisher swaps AvatarRunner's synchronizer: both go silently dead if
    upstream renames what they use."""
    init = inspect.getsource(rtc.AVSynchronizer.__init__)
    assert "asyncio.create_task(self._capture_video())" in init
    for name in ("self._video_queue = ", "self._audio_source = ", "self._video_source = ", "self._stopped = "):
        assert name in init, name
    assert "self._video_queue.get()" in inspect.getsource(rtc.AVSynchronizer.clear_queue)
    assert "self._video_queue.join()" in inspect.getsource(rtc.AVSynchronizer.wait_for_playout)
    runner = inspect.getsource(AvatarRunner.__init__)
    for name in ("self._av_sync = ", "self._audio_source = ", "self._video_source = ", "self._queue_size_ms = "):
        assert name in runner, name
    assert "await self._av_sync.push(frame)" in inspect.getsource(AvatarRunner._forward_video)
    assert "return self._av_sync" in inspect.getsource(AvatarRunner.av_sync.fget)
    assert "AudioPacedSynchronizer" in inspect.getsource(AvatarPublisher.__init__)
