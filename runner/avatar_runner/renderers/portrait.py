"""The built-in portrait renderer: a still portrait animated by loudness.

This is not bitHuman. It needs no model file, account or GPU, and exists for
development, demos and tests: a portrait (AVATAR_IMAGE_FILE, or a face it
draws itself) whose mouth opens with the loudness of each frame's slice of
speech, with a slight nod while speaking and blinks and breathing while
silent. The speech it was given is output unchanged, one 1/fps slice next to
each video frame.

Per-frame work is kept to copies: the padded canvas and every mouth and eye
variant are drawn once at start-up, and a frame is one slice of the canvas
(the head offset) with two small sprites pasted on it.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import functools
import math
import random
from collections.abc import AsyncIterator, Callable

import numpy as np
import numpy.typing as npt
from livekit import rtc
from livekit.agents.voice.avatar import AudioSegmentEnd
from PIL import Image, ImageDraw, UnidentifiedImageError

from ..exits import ExitCode
from .base import RenderedItem, Renderer, RendererRefused, to_mono

SIZE = 512  # output frames are SIZE x SIZE
PAD = 8  # canvas margin: the largest head offset, in pixels
SUPERSAMPLE = 2  # sprites are drawn at 2x and downsampled, for smooth edges
# The rate most LiveKit TTS plugins produce, so their speech passes unresampled.
SAMPLE_RATE = 24000
MOUTH_LEVELS = 16

# Loudness (dBFS of a frame's slice) mapped linearly onto the mouth opening.
SILENCE_DBFS = -45.0
FULL_OPEN_DBFS = -12.0
# Opening fraction the mouth keeps per frame when the sound gets quieter:
# instant attack, ~100 ms release, as lips move.
MOUTH_RELEASE = 0.45

BREATH_PERIOD_S = 4.0
BREATH_AMPLITUDE_PX = 1.5
NOD_PX = 4.0  # downward head motion at full loudness
SWAY_PERIOD_S = 2.7
SWAY_PX = 3.0
BLINK_INTERVAL_S = (2.5, 5.5)

Samples = npt.NDArray[np.int16]
Rgb = npt.NDArray[np.uint8]


@dataclasses.dataclass(frozen=True)
class Box:
    """A pixel rectangle, x1 and y1 exclusive."""

    x0: int
    y0: int
    x1: int
    y1: int

    def shifted(self, dx: int, dy: int) -> Box:
        return Box(self.x0 + dx, self.y0 + dy, self.x1 + dx, self.y1 + dy)

    def scaled(self, factor: int) -> tuple[int, int, int, int]:
        return (self.x0 * factor, self.y0 * factor, self.x1 * factor, self.y1 * factor)


@dataclasses.dataclass(frozen=True)
class FaceLayout:
    """Where the animated parts are, in frame pixels with the head at rest."""

    mouth_center: tuple[float, float]
    mouth_width: float
    mouth_max_height: float
    eye_centers: tuple[tuple[float, float], ...]  # empty: no blinking (a photo)
    eye_radius: float

    @property
    def mouth_box(self) -> Box:
        cx, cy = self.mouth_center
        half_w = self.mouth_width / 2 + 6
        half_h = self.mouth_max_height / 2 + 8
        return Box(
            math.floor(cx - half_w), math.floor(cy - half_h),
            math.ceil(cx + half_w), math.ceil(cy + half_h),
        )

    @property
    def eyes_box(self) -> Box | None:
        if not self.eye_centers:
            return None
        r = self.eye_radius
        xs = [x for x, _ in self.eye_centers]
        ys = [y for _, y in self.eye_centers]
        return Box(
            math.floor(min(xs) - 1.6 * r), math.floor(min(ys) - 1.3 * r),
            math.ceil(max(xs) + 1.6 * r), math.ceil(max(ys) + 1.3 * r),
        )


DRAWN_FACE = FaceLayout(
    mouth_center=(256, 372),
    mouth_width=92,
    mouth_max_height=58,
    eye_centers=((206, 262), (306, 262)),
    eye_radius=20,
)
# A photo's mouth is assumed where a centred head-and-shoulders portrait has
# it; nothing is detected, so a photo framed otherwise looks wrong.
PHOTO = FaceLayout(
    mouth_center=(SIZE * 0.5, SIZE * 0.70),
    mouth_width=SIZE * 0.16,
    mouth_max_height=SIZE * 0.09,
    eye_centers=(),
    eye_radius=0,
)

_SKIN = (236, 196, 164)
_SKIN_SHADE = (214, 168, 136)
_HAIR = (74, 52, 40)
_LIP = (176, 84, 86)
_MOUTH_DARK = (58, 18, 26)
_TONGUE = (168, 70, 78)
_TEETH = (246, 244, 238)
_SHIRT = (52, 98, 150)
_IRIS = (84, 118, 74)


class EyeState(enum.IntEnum):
    OPEN = 0
    HALF = 1
    CLOSED = 2


# One blink, frame by frame at 25 fps (160 ms).
_BLINK = (EyeState.HALF, EyeState.CLOSED, EyeState.CLOSED, EyeState.HALF)


def _draw_background(draw: ImageDraw.ImageDraw, size: int) -> None:
    for y in range(size):
        t = y / size
        draw.line([(0, y), (size, y)], fill=(int(70 + 40 * t), int(86 + 36 * t), int(110 + 30 * t)))


Painter = Callable[[Image.Image, tuple[int, int]], None]
"""Draws a variant on a 2x sprite whose top-left is the given canvas point."""

_CANVAS = (0, 0)  # the whole canvas, as a sprite


def _to_sprite(origin: tuple[int, int], x: float, y: float) -> tuple[float, float]:
    """Frame point (x, y) in the 2x coordinates of a sprite at canvas point `origin`."""
    return ((x + PAD - origin[0]) * SUPERSAMPLE, (y + PAD - origin[1]) * SUPERSAMPLE)


def _rectangle(origin: tuple[int, int], x0: float, y0: float, x1: float, y1: float) -> tuple[float, ...]:
    return (*_to_sprite(origin, x0, y0), *_to_sprite(origin, x1, y1))


def _ellipse(origin: tuple[int, int], cx: float, cy: float, rx: float, ry: float) -> tuple[float, ...]:
    return _rectangle(origin, cx - rx, cy - ry, cx + rx, cy + ry)


def _draw_face(canvas: Image.Image) -> None:
    """A head and shoulders on the 2x canvas, without eyes and mouth (sprites add them)."""
    s = SUPERSAMPLE
    draw = ImageDraw.Draw(canvas)
    draw.ellipse(_rectangle(_CANVAS, 76, 440, 436, 700), fill=_SHIRT)  # shoulders
    draw.rectangle(_rectangle(_CANVAS, 220, 380, 292, 470), fill=_SKIN_SHADE)  # neck
    draw.ellipse(_rectangle(_CANVAS, 146, 120, 366, 430), fill=_HAIR)  # hair behind the head
    draw.ellipse(_rectangle(_CANVAS, 136, 236, 168, 300), fill=_SKIN_SHADE)  # ears
    draw.ellipse(_rectangle(_CANVAS, 344, 236, 376, 300), fill=_SKIN_SHADE)
    draw.ellipse(_rectangle(_CANVAS, 156, 150, 356, 420), fill=_SKIN)  # head
    draw.chord(_rectangle(_CANVAS, 150, 112, 362, 262), 180, 360, fill=_HAIR)  # fringe
    for cx, cy in DRAWN_FACE.eye_centers:  # eyebrows
        draw.line([_to_sprite(_CANVAS, cx - 24, cy - 30), _to_sprite(_CANVAS, cx + 22, cy - 34)],
                  fill=_HAIR, width=6 * s)
    nose = [_to_sprite(_CANVAS, 256, 270), _to_sprite(_CANVAS, 248, 324), _to_sprite(_CANVAS, 262, 328)]
    draw.line(nose, fill=_SKIN_SHADE, width=4 * s)


def _paint_eyes(state: EyeState, sprite: Image.Image, origin: tuple[int, int]) -> None:
    draw = ImageDraw.Draw(sprite)
    s = SUPERSAMPLE
    r = DRAWN_FACE.eye_radius
    for cx, cy in DRAWN_FACE.eye_centers:
        draw.ellipse(_ellipse(origin, cx, cy, r * 1.5, r * 1.2), fill=_SKIN)  # clear the area
        if state is EyeState.CLOSED:
            draw.arc(_ellipse(origin, cx, cy, r * 1.2, r * 0.5), 10, 170, fill=_HAIR, width=3 * s)
            continue
        draw.ellipse(_ellipse(origin, cx, cy, r * 1.2, r * 0.8), fill=(250, 250, 250), outline=_HAIR, width=2 * s)
        draw.ellipse(_ellipse(origin, cx, cy, r * 0.6, r * 0.6), fill=_IRIS)
        draw.ellipse(_ellipse(origin, cx, cy, r * 0.3, r * 0.3), fill=(16, 16, 16))
        draw.ellipse(_ellipse(origin, cx + r * 0.15, cy - r * 0.2, r * 0.12, r * 0.12), fill=(255, 255, 255))
        if state is EyeState.HALF:  # the upper lid covers the top half
            x0, y0, x1, _ = _ellipse(origin, cx, cy, r * 1.3, r * 0.9)
            _, mid = _to_sprite(origin, cx, cy)
            draw.rectangle((x0, y0, x1, mid), fill=_SKIN)
            draw.line([(x0, mid), (x1, mid)], fill=_HAIR, width=3 * s)


def _paint_mouth(layout: FaceLayout, opening: float, closed_line: bool,
                 sprite: Image.Image, origin: tuple[int, int]) -> None:
    """The mouth `opening` (0 closed .. 1 wide) open."""
    draw = ImageDraw.Draw(sprite)
    s = SUPERSAMPLE
    cx, cy = layout.mouth_center
    half_w = layout.mouth_width / 2
    height = layout.mouth_max_height * opening
    if height < 2:
        if closed_line:  # the drawn face's lips; a photo keeps its own mouth
            draw.line([_to_sprite(origin, cx - half_w, cy), _to_sprite(origin, cx + half_w, cy)],
                      fill=_LIP, width=5 * s)
        return
    inner = _ellipse(origin, cx, cy, half_w - 7, height / 2)
    draw.ellipse(_ellipse(origin, cx, cy, half_w, height / 2 + 4), fill=_LIP)
    # Teeth and tongue drawn through the opening's mask stay inside it.
    detail = Image.new("RGB", sprite.size, _MOUTH_DARK)
    detail_draw = ImageDraw.Draw(detail)
    detail_draw.rectangle((inner[0], inner[1], inner[2], inner[1] + min(height * 0.28, 9) * s), fill=_TEETH)
    detail_draw.ellipse(_ellipse(origin, cx, cy + height * 0.45, half_w * 0.55, height * 0.35), fill=_TONGUE)
    mask = Image.new("L", sprite.size, 0)
    ImageDraw.Draw(mask).ellipse(inner, fill=255)
    sprite.paste(detail, (0, 0), mask)


def _sprite(canvas_2x: Image.Image, box: Box, paint: Painter) -> Rgb:
    """The canvas under `box` (canvas coordinates) with `paint` applied, at 1x."""
    crop = canvas_2x.crop(box.scaled(SUPERSAMPLE))
    paint(crop, (box.x0, box.y0))
    small = crop.resize((box.x1 - box.x0, box.y1 - box.y0), Image.Resampling.LANCZOS)
    return np.asarray(small, dtype=np.uint8).copy()


def _photo_canvas(image: Image.Image) -> Image.Image:
    """The photo centre-cropped to a square, at 2x, its edges repeated into the pad."""
    image = image.convert("RGB")
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    square = image.crop((left, top, left + side, top + side)).resize(
        (SIZE * SUPERSAMPLE, SIZE * SUPERSAMPLE), Image.Resampling.LANCZOS
    )
    padded = np.pad(np.asarray(square), ((PAD * SUPERSAMPLE,) * 2, (PAD * SUPERSAMPLE,) * 2, (0, 0)), mode="edge")
    return Image.fromarray(padded)


def _drawn_canvas() -> Image.Image:
    side = (SIZE + 2 * PAD) * SUPERSAMPLE
    canvas = Image.new("RGB", (side, side))
    _draw_background(ImageDraw.Draw(canvas), side)
    _draw_face(canvas)
    return canvas


def loudness_dbfs(samples: Samples) -> float:
    """RMS level of int16 `samples` in dB relative to full scale (-inf for silence)."""
    if samples.size == 0:
        return -math.inf
    rms = math.sqrt(float(np.mean(np.square(samples, dtype=np.float32)))) / 32768.0
    return 20 * math.log10(rms) if rms > 0 else -math.inf


def opening_for(dbfs: float) -> float:
    """Mouth opening (0 closed .. 1 wide) for a slice at `dbfs`."""
    return min(1.0, max(0.0, (dbfs - SILENCE_DBFS) / (FULL_OPEN_DBFS - SILENCE_DBFS)))


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
        self._layout = PHOTO if image is not None else DRAWN_FACE
        canvas_2x = _photo_canvas(image) if image is not None else _drawn_canvas()
        mouth_box = self._layout.mouth_box.shifted(PAD, PAD)
        self._mouth_box = mouth_box
        self._mouths = [
            _sprite(canvas_2x, mouth_box,
                    functools.partial(_paint_mouth, self._layout, level / (MOUTH_LEVELS - 1), image is None))
            for level in range(MOUTH_LEVELS)
        ]
        eyes_box = self._layout.eyes_box
        self._eyes_box = eyes_box.shifted(PAD, PAD) if eyes_box else None
        self._eyes = (
            [_sprite(canvas_2x, self._eyes_box, functools.partial(_paint_eyes, state)) for state in EyeState]
            if self._eyes_box else []
        )
        canvas = np.asarray(
            canvas_2x.resize((SIZE + 2 * PAD, SIZE + 2 * PAD), Image.Resampling.LANCZOS), dtype=np.uint8
        ).copy()
        self._paste(canvas, mouth_box, self._mouths[0])
        if self._eyes_box:
            self._paste(canvas, self._eyes_box, self._eyes[EyeState.OPEN])
        self._canvas = canvas

        self._speech = SpeechBuffer()
        self._resampler: rtc.AudioResampler | None = None
        self._resampler_rate = 0
        self._epoch = 0  # bumped by interrupt(): output computed before it is stale
        self._opening = 0.0
        self._sway = 0.0  # slow envelope of the opening: sways the head while speaking
        self._frame_index = 0
        self._rng = random.Random(seed)
        self._next_blink = self._blink_gap()
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
        self._opening = 0.0

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
        if target_opening >= self._opening:
            self._opening = target_opening
        else:
            self._opening = target_opening + (self._opening - target_opening) * MOUTH_RELEASE
        self._sway += (self._opening - self._sway) * 0.15
        t = self._frame_index / self._fps
        dy = BREATH_AMPLITUDE_PX * math.sin(2 * math.pi * t / BREATH_PERIOD_S) + NOD_PX * self._opening
        dx = SWAY_PX * self._sway * math.sin(2 * math.pi * t / SWAY_PERIOD_S)
        ox = PAD + max(-PAD, min(PAD, round(dx)))
        oy = PAD + max(-PAD, min(PAD, round(dy)))

        data = bytearray(SIZE * SIZE * 3)
        frame = np.frombuffer(data, dtype=np.uint8).reshape(SIZE, SIZE, 3)
        frame[:] = self._canvas[oy:oy + SIZE, ox:ox + SIZE]
        level = round(self._opening * (MOUTH_LEVELS - 1))
        if level:
            self._paste(frame, self._mouth_box.shifted(-ox, -oy), self._mouths[level])
        eyes = self._eye_state()
        if self._eyes_box and eyes is not EyeState.OPEN:
            self._paste(frame, self._eyes_box.shifted(-ox, -oy), self._eyes[eyes])
        self._frame_index += 1
        return rtc.VideoFrame(SIZE, SIZE, rtc.VideoBufferType.RGB24, data)

    @staticmethod
    def _paste(target: Rgb, box: Box, sprite: Rgb) -> None:
        target[box.y0:box.y1, box.x0:box.x1] = sprite

    def _eye_state(self) -> EyeState:
        into = self._frame_index - self._next_blink
        if into < 0:
            return EyeState.OPEN
        if into < len(_BLINK):
            return _BLINK[into]
        self._next_blink = self._frame_index + self._blink_gap()
        return EyeState.OPEN

    def _blink_gap(self) -> int:
        return round(self._rng.uniform(*BLINK_INTERVAL_S) * self._fps)

    def _next_slice_size(self) -> int:
        """Samples in the next frame's slice, so slices add up to exactly fps frames a second."""
        due = round((self._frame_index + 1) * SAMPLE_RATE / self._fps)
        return max(1, due - round(self._frame_index * SAMPLE_RATE / self._fps))


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
