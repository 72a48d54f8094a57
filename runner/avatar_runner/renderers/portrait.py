"""The built-in portrait renderer: a still portrait animated by loudness.

This is not bitHuman. It needs no model file, account or GPU, and exists for
development, demos and tests: a portrait (AVATAR_IMAGE_FILE, or a face it
draws itself) whose mouth opens with the loudness of each frame's slice of
speech, with a slight nod while speaking and blinks and breathing while
silent. The speech it was given is output unchanged, one 1/fps slice next to
each video frame.

Per-frame work is kept to copies: the padded canvas and every mouth and eye
variant are drawn once at start-up (`portrait_face`), and a frame is one slice
of the canvas (the head offset) with two small sprites pasted on it
(`portrait_motion`).
"""

from __future__ import annotations

import collections
from collections.abc import AsyncIterator

import numpy as np
from livekit import rtc
from livekit.agents.voice.avatar import AudioSegmentEnd
from PIL import Image, UnidentifiedImageError

from ..exits import ExitCode
from .base import RenderedItem, Renderer, RendererRefused, to_mono
from .portrait_face import SIZE, prepare_portrait
from .portrait_motion import PortraitMotion, Samples, loudness_dbfs, opening_for

# The rate most LiveKit TTS plugins produce, so their speech passes unresampled.
SAMPLE_RATE = 24000


class _SegmentEnd:
    pass


class SpeechBuffer:
    """Queued mono speech at one rate, with the ends of its segments."""

    def __init__(self) -> None:
        self._items: collections.deque[Samples | _SegmentEnd] = collections.deque()

    def push(self, samples: Samples) -> None:
        if samples.size:
            self._items.append(samples)

    def end_segment(self) -> None:
        self._items.append(_SegmentEnd())

    def clear(self) -> None:
        self._items.clear()

    def take(self, n: int) -> tuple[Samples | None, bool]:
        """The next `n` samples and whether their segment ends with them.

        A segment's last slice is padded with silence to `n`. While a segment
        has fewer than `n` samples queued and no end, nothing is taken
        (None, False): more speech is on its way.
        """
        available = 0
        for item in self._items:
            if isinstance(item, _SegmentEnd):
                break
            available += item.size
            if available >= n:
                break
        ends_within = available < n and any(isinstance(i, _SegmentEnd) for i in self._items)
        if available < n and not ends_within:
            return None, False
        pieces: list[Samples] = []
        needed = n
        while needed and self._items and not isinstance(self._items[0], _SegmentEnd):
            head = self._items.popleft()
            assert not isinstance(head, _SegmentEnd)
            if head.size > needed:
                self._items.appendleft(head[needed:])
                head = head[:needed]
            pieces.append(head)
            needed -= head.size
        ended = bool(self._items) and isinstance(self._items[0], _SegmentEnd)
        if ended:
            self._items.popleft()
        if not pieces:
            return None, ended
        if needed:
            pieces.append(np.zeros(needed, dtype=np.int16))
        return np.concatenate(pieces), ended


class PortraitRenderer(Renderer):
    """Built-in portrait renderer, not bitHuman: see the module docstring."""

    def __init__(self, image: Image.Image | None = None, *, fps: float = 25.0, seed: int = 0) -> None:
        self._fps = fps
        self._motion = PortraitMotion(prepare_portrait(image), fps, seed)
        self._speech = SpeechBuffer()
        self._resampler: rtc.AudioResampler | None = None
        self._resampler_rate = 0
        self._epoch = 0  # bumped by interrupt(): output computed before it is stale
        self._closed = False

    # --- Renderer ---------------------------------------------------------

    @property
    def name(self) -> str:
        return "built-in portrait renderer (not bitHuman)"

    @property
    def fps(self) -> float:
        return self._fps

    @property
    def resolution(self) -> tuple[int, int]:
        return SIZE, SIZE

    @property
    def sample_rate(self) -> int:
        return SAMPLE_RATE

    async def push_audio(self, frame: rtc.AudioFrame) -> None:
        if frame.sample_rate != SAMPLE_RATE:
            if self._resampler is None or self._resampler_rate != frame.sample_rate:
                self._resampler = rtc.AudioResampler(frame.sample_rate, SAMPLE_RATE, num_channels=1)
                self._resampler_rate = frame.sample_rate
            for out in self._resampler.push(to_mono(frame)):
                self._speech.push(np.frombuffer(out.data, dtype=np.int16).copy())
            return
        self._speech.push(np.frombuffer(to_mono(frame).data, dtype=np.int16).copy())

    async def flush(self) -> None:
        if self._resampler is not None:
            for out in self._resampler.flush():
                self._speech.push(np.frombuffer(out.data, dtype=np.int16).copy())
            self._resampler = None
        self._speech.end_segment()

    def interrupt(self) -> None:
        self._speech.clear()
        self._resampler = None
        self._epoch += 1
        self._motion.close_mouth()

    async def frames(self) -> AsyncIterator[RenderedItem]:
        while not self._closed:
            epoch = self._epoch
            n = self._next_slice_size()
            speech, ended = self._speech.take(n)
            target = opening_for(loudness_dbfs(speech)) if speech is not None else 0.0
            yield self.render(target)
            if speech is not None and epoch == self._epoch:
                yield rtc.AudioFrame(speech.tobytes(), SAMPLE_RATE, 1, n)
            if ended and epoch == self._epoch:
                yield AudioSegmentEnd()

    async def aclose(self) -> None:
        self._closed = True

    # --- rendering ----------------------------------------------------------

    def render(self, target_opening: float) -> rtc.VideoFrame:
        """The next frame, its mouth moved toward `target_opening`."""
        return self._motion.render(target_opening)

    def _next_slice_size(self) -> int:
        """Samples in the next frame's slice, so slices add up to exactly fps frames a second."""
        due = round((self._motion.frame_index + 1) * SAMPLE_RATE / self._fps)
        return max(1, due - round(self._motion.frame_index * SAMPLE_RATE / self._fps))


def load_portrait(image_file: str | None, fps: float) -> PortraitRenderer:
    """The portrait renderer for AVATAR_IMAGE_FILE (or the drawn face when None)."""
    if image_file is None:
        return PortraitRenderer(fps=fps)
    try:
        with Image.open(image_file) as image:
            image.load()
            return PortraitRenderer(image, fps=fps)
    except FileNotFoundError:
        raise RendererRefused(ExitCode.AVATAR_INVALID, f"AVATAR_IMAGE_FILE {image_file!r} does not exist") from None
    except (UnidentifiedImageError, OSError) as err:
        raise RendererRefused(
            ExitCode.AVATAR_INVALID, f"AVATAR_IMAGE_FILE {image_file!r} is not a readable image: {err}"
        ) from None
