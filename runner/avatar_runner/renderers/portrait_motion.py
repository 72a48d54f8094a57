"""The portrait renderer's motion, frame by frame.

The mouth opens with the loudness of each frame's slice of speech, the head
nods a little while speaking and sways with it, breathes, and the eyes blink.
A frame is one slice of the portrait's canvas (the head offset) with the
mouth and eye sprites pasted on it.
"""

from __future__ import annotations

import math
import random

import numpy as np
import numpy.typing as npt
from livekit import rtc

from .portrait_face import MOUTH_LEVELS, PAD, SIZE, EyeState, Portrait, paste

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

# One blink, frame by frame at 25 fps (160 ms).
_BLINK = (EyeState.HALF, EyeState.CLOSED, EyeState.CLOSED, EyeState.HALF)


def loudness_dbfs(samples: Samples) -> float:
    """RMS level of int16 `samples` in dB relative to full scale (-inf for silence)."""
    if samples.size == 0:
        return -math.inf
    rms = math.sqrt(float(np.mean(np.square(samples, dtype=np.float32)))) / 32768.0
    return 20 * math.log10(rms) if rms > 0 else -math.inf


def opening_for(dbfs: float) -> float:
    """Mouth opening (0 closed .. 1 wide) for a slice at `dbfs`."""
    return min(1.0, max(0.0, (dbfs - SILENCE_DBFS) / (FULL_OPEN_DBFS - SILENCE_DBFS)))


class PortraitMotion:
    """The frames of `portrait` at `fps`, its blinks drawn from `seed`."""

    def __init__(self, portrait: Portrait, fps: float, seed: int) -> None:
        self._portrait = portrait
        self._fps = fps
        self._opening = 0.0
        self._sway = 0.0  # slow envelope of the opening: sways the head while speaking
        self._frame_index = 0
        self._rng = random.Random(seed)
        self._next_blink = self._blink_gap()

    @property
    def frame_index(self) -> int:
        """How many frames have been rendered."""
        return self._frame_index

    def close_mouth(self) -> None:
        """Closes the mouth at once, without its release (the speech was cut off)."""
        self._opening = 0.0

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

        portrait = self._portrait
        data = bytearray(SIZE * SIZE * 3)
        frame = np.frombuffer(data, dtype=np.uint8).reshape(SIZE, SIZE, 3)
        frame[:] = portrait.canvas[oy:oy + SIZE, ox:ox + SIZE]
        level = round(self._opening * (MOUTH_LEVELS - 1))
        if level:
            paste(frame, portrait.mouth_box.shifted(-ox, -oy), portrait.mouths[level])
        eyes = self._eye_state()
        if portrait.eyes_box and eyes is not EyeState.OPEN:
            paste(frame, portrait.eyes_box.shifted(-ox, -oy), portrait.eyes[eyes])
        self._frame_index += 1
        return rtc.VideoFrame(SIZE, SIZE, rtc.VideoBufferType.RGB24, data)

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
