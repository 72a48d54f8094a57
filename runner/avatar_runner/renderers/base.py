"""What the runner needs from a renderer.

The same shape as livekit-agents' `VideoGenerator` (push audio, clear, an
async stream of video frames, audio frames and segment ends), plus the
properties the runner needs before the first frame to size its LiveKit
sources. A renderer outputs the audio it was given, each slice next to the
video frame that shows it, so lips and sound stay in step.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator

import numpy as np
from livekit import rtc
from livekit.agents.voice.avatar import AudioSegmentEnd

from ..exits import RunnerFailure

RenderedItem = rtc.VideoFrame | rtc.AudioFrame | AudioSegmentEnd


def to_mono(frame: rtc.AudioFrame) -> rtc.AudioFrame:
    """`frame` with its channels averaged into one."""
    if frame.num_channels == 1:
        return frame
    samples = np.frombuffer(frame.data, dtype=np.int16).reshape(-1, frame.num_channels)
    mixed = samples.mean(axis=1).astype(np.int16)
    return rtc.AudioFrame(mixed.tobytes(), frame.sample_rate, 1, mixed.size)


class RendererRefused(RunnerFailure):
    """The renderer cannot run: the runner exits with this code and reason."""


class Renderer(abc.ABC):
    @property
    @abc.abstractmethod
    def name(self) -> str:
        """What renders, for logs and the health page."""

    @property
    @abc.abstractmethod
    def fps(self) -> float: ...

    @property
    @abc.abstractmethod
    def resolution(self) -> tuple[int, int]:
        """(width, height) of every video frame."""

    @property
    @abc.abstractmethod
    def sample_rate(self) -> int:
        """Rate of the audio frames it outputs (mono)."""

    @abc.abstractmethod
    async def push_audio(self, frame: rtc.AudioFrame) -> None:
        """Queues speech; any rate and channel count."""

    @abc.abstractmethod
    async def flush(self) -> None:
        """Ends the current speech segment: a segment end follows its last frame."""

    @abc.abstractmethod
    def interrupt(self) -> None:
        """Drops queued speech at once (the agent's user barged in)."""

    @abc.abstractmethod
    def frames(self) -> AsyncIterator[RenderedItem]:
        """Frames for as long as the renderer runs: idle frames while silent.

        Consumed at the frame rate by the caller's back-pressure (LiveKit's
        AVSynchronizer), so it never paces itself.
        """

    @abc.abstractmethod
    async def aclose(self) -> None: ...
