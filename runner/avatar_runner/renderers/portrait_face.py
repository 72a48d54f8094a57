"""The portrait renderer's pictures: the drawn face or a prepared photo.

Everything is drawn once, at start-up: the padded canvas (the face at rest,
mouth closed and eyes open) and every mouth and eye variant as a small
sprite, so a frame is only copies (`portrait_motion`).
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import math
from collections.abc import Callable

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw

SIZE = 512  # output frames are SIZE x SIZE
PAD = 8  # canvas margin: the largest head offset, in pixels
SUPERSAMPLE = 2  # sprites are drawn at 2x and downsampled, for smooth edges
MOUTH_LEVELS = 16

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


def paste(target: Rgb, box: Box, sprite: Rgb) -> None:
    target[box.y0:box.y1, box.x0:box.x1] = sprite


@dataclasses.dataclass(frozen=True, eq=False)
class Portrait:
    """The canvas, SIZE + 2 * PAD square, and the sprites pasted on it, with
    their boxes in canvas pixels; no eyes for a photo."""

    canvas: Rgb
    mouth_box: Box
    mouths: tuple[Rgb, ...]  # MOUTH_LEVELS openings, closed first
    eyes_box: Box | None
    eyes: tuple[Rgb, ...]  # one per EyeState, in its order


def prepare_portrait(image: Image.Image | None) -> Portrait:
    """The portrait of `image`, or of the drawn face when None."""
    layout = PHOTO if image is not None else DRAWN_FACE
    canvas_2x = _photo_canvas(image) if image is not None else _drawn_canvas()
    mouth_box = layout.mouth_box.shifted(PAD, PAD)
    mouths = tuple(
        _sprite(canvas_2x, mouth_box,
                functools.partial(_paint_mouth, layout, level / (MOUTH_LEVELS - 1), image is None))
        for level in range(MOUTH_LEVELS)
    )
    eyes_at_rest = layout.eyes_box
    eyes_box = eyes_at_rest.shifted(PAD, PAD) if eyes_at_rest else None
    eyes = (
        tuple(_sprite(canvas_2x, eyes_box, functools.partial(_paint_eyes, state)) for state in EyeState)
        if eyes_box else ()
    )
    canvas = np.asarray(
        canvas_2x.resize((SIZE + 2 * PAD, SIZE + 2 * PAD), Image.Resampling.LANCZOS), dtype=np.uint8
    ).copy()
    paste(canvas, mouth_box, mouths[0])
    if eyes_box:
        paste(canvas, eyes_box, eyes[EyeState.OPEN])
    return Portrait(canvas, mouth_box, mouths, eyes_box, eyes)
