"""The built-in portrait renderer, measured on the pixels it produces."""

from __future__ import annotations

import math
import pathlib
import time

import numpy as np
import numpy.typing as npt
import pytest
from avatar_runner.demo_agent import synthetic_speech
from avatar_runner.exits import ExitCode
from avatar_runner.renderers.base import RenderedItem, RendererRefused
from avatar_runner.renderers.portrait import SAMPLE_RATE, PortraitRenderer, SpeechBuffer, load_portrait
from avatar_runner.renderers.portrait_face import DRAWN_FACE, PHOTO, SIZE, Box, FaceLayout
from livekit import rtc
from livekit.agents.voice.avatar import AudioSegmentEnd
from PIL import Image

FRAME_SAMPLES = SAMPLE_RATE // 25


def pixels(frame: rtc.VideoFrame) -> npt.NDArray[np.uint8]:
    assert frame.type == rtc.VideoBufferType.RGB24
    return np.frombuffer(frame.data, dtype=np.uint8).reshape(frame.height, frame.width, 3)


def mouth_region(layout: FaceLayout) -> Box:
    """The middle of the mouth at its widest: inside the face whatever the head's motion."""
    cx, cy = layout.mouth_center
    half_w, half_h = layout.mouth_width * 0.3, layout.mouth_max_height / 2 + 4
    return Box(round(cx - half_w), round(cy - half_h), round(cx + half_w), round(cy + half_h))


MOUTH = mouth_region(DRAWN_FACE)


def mouth_darkness(rgb: npt.NDArray[np.uint8], box: Box = MOUTH) -> float:
    """Share of dark pixels (the open mouth) in `box`."""
    region = rgb[box.y0:box.y1, box.x0:box.x1].astype(np.float32)
    luma = region @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    return float(np.mean(luma < 70))


def tone(dbfs: float, seconds: float, rate: int = SAMPLE_RATE) -> npt.NDArray[np.int16]:
    """A 220 Hz sine whose RMS is `dbfs`."""
    t = np.arange(int(seconds * rate)) / rate
    amplitude = 10 ** (dbfs / 20) * math.sqrt(2) * 32767
    return (amplitude * np.sin(2 * math.pi * 220 * t)).astype(np.int16)


def audio_frame(samples: npt.NDArray[np.int16], rate: int = SAMPLE_RATE, channels: int = 1) -> rtc.AudioFrame:
    return rtc.AudioFrame(samples.tobytes(), rate, channels, samples.size // channels)


async def take(renderer: PortraitRenderer, count: int) -> list[RenderedItem]:
    items: list[RenderedItem] = []
    async for item in renderer.frames():
        items.append(item)
        if len(items) == count:
            break
    return items


async def speak_and_collect(renderer: PortraitRenderer, samples: npt.NDArray[np.int16]) -> list[RenderedItem]:
    """Everything the renderer outputs for one segment, up to its end."""
    await renderer.push_audio(audio_frame(samples))
    await renderer.flush()
    items: list[RenderedItem] = []
    async for item in renderer.frames():
        items.append(item)
        if isinstance(item, AudioSegmentEnd):
            return items
    raise AssertionError("no segment end")


def videos(items: list[RenderedItem]) -> list[rtc.VideoFrame]:
    return [i for i in items if isinstance(i, rtc.VideoFrame)]


def audio_of(items: list[RenderedItem]) -> npt.NDArray[np.int16]:
    return np.concatenate([np.frombuffer(i.data, dtype=np.int16) for i in items if isinstance(i, rtc.AudioFrame)])


async def test_frames_are_512_square_rgb24() -> None:
    renderer = PortraitRenderer()
    assert renderer.resolution == (SIZE, SIZE) == (512, 512)
    assert renderer.fps == 25.0
    frame = (await take(renderer, 1))[0]
    assert isinstance(frame, rtc.VideoFrame)
    assert (frame.width, frame.height) == (512, 512)
    assert len(frame.data) == 512 * 512 * 3


async def test_silence_keeps_the_mouth_closed_and_speech_opens_it() -> None:
    box = MOUTH
    silent = await speak_and_collect(PortraitRenderer(), np.zeros(SAMPLE_RATE * 2, dtype=np.int16))
    spoken = await speak_and_collect(PortraitRenderer(), synthetic_speech(2.0, SAMPLE_RATE))
    silent_dark = [mouth_darkness(pixels(f), box) for f in videos(silent)]
    spoken_dark = [mouth_darkness(pixels(f), box) for f in videos(spoken)]
    assert max(silent_dark) < 0.01
    assert np.mean(spoken_dark) > 0.05
    # Speech has pauses between syllables: the mouth closes and reopens.
    assert min(spoken_dark) < 0.01 < 0.1 < max(spoken_dark)


async def test_mouth_opens_wider_with_loudness() -> None:
    box = MOUTH
    openings = []
    for dbfs in (-60.0, -36.0, -26.0, -14.0):
        items = await speak_and_collect(PortraitRenderer(), tone(dbfs, 0.4))
        openings.append(np.median([mouth_darkness(pixels(f), box) for f in videos(items)]))
    assert openings[0] < 0.01
    assert openings[0] < openings[1] < openings[2] < openings[3]


async def test_speech_passes_through_one_slice_per_frame() -> None:
    speech = synthetic_speech(1.01, SAMPLE_RATE)  # not a whole number of frames
    items = await speak_and_collect(PortraitRenderer(), speech)
    # video, then the audio it shows, frame after frame; the segment end last
    for video, audio in zip(items[0:-1:2], items[1:-1:2]):
        assert isinstance(video, rtc.VideoFrame)
        assert isinstance(audio, rtc.AudioFrame)
        assert (audio.sample_rate, audio.num_channels, audio.samples_per_channel) == (SAMPLE_RATE, 1, FRAME_SAMPLES)
    assert isinstance(items[-1], AudioSegmentEnd)
    out = audio_of(items)
    assert np.array_equal(out[: speech.size], speech)
    assert not out[speech.size:].any()  # the last slice is padded with silence
    assert out.size == math.ceil(speech.size / FRAME_SAMPLES) * FRAME_SAMPLES


async def test_other_rates_and_stereo_are_converted() -> None:
    renderer = PortraitRenderer()
    mono = tone(-20, 0.5, rate=48000)
    stereo = np.repeat(mono, 2)
    await renderer.push_audio(audio_frame(stereo, rate=48000, channels=2))
    await renderer.flush()
    items: list[RenderedItem] = []
    async for item in renderer.frames():
        items.append(item)
        if isinstance(item, AudioSegmentEnd):
            break
    out = audio_of(items)
    # 0.5 s at 24 kHz, within the resampler's delay and the last frame's padding
    assert abs(out.size - SAMPLE_RATE // 2) <= FRAME_SAMPLES
    steady = out[2000:10000].astype(np.float64)
    assert 20 * math.log10(np.sqrt(np.mean(steady**2)) / 32768) == pytest.approx(-20, abs=1)


async def test_interrupt_drops_speech_and_closes_the_mouth() -> None:
    renderer = PortraitRenderer()
    box = MOUTH
    await renderer.push_audio(audio_frame(tone(-14, 2.0)))
    stream = renderer.frames()
    first = await anext(stream)
    assert isinstance(first, rtc.VideoFrame) and mouth_darkness(pixels(first), box) > 0.1
    renderer.interrupt()
    # The slice computed before the interruption is not output.
    following = [await anext(stream) for _ in range(3)]
    assert all(isinstance(item, rtc.VideoFrame) for item in following)
    assert mouth_darkness(pixels(following[0]), box) < 0.01  # type: ignore[arg-type]


async def test_idle_face_breathes_and_blinks() -> None:
    renderer = PortraitRenderer()
    frames = [pixels(f) for f in videos(await take(renderer, 25 * 7))]
    changed = [not np.array_equal(a, b) for a, b in zip(frames, frames[1:])]
    assert sum(changed) >= 2  # breathing moves the head
    eyes = DRAWN_FACE.eyes_box
    assert eyes is not None
    eye_darkness = [mouth_darkness(f, eyes) for f in frames]
    # A blink within seven seconds: the dark pupils disappear for a moment.
    assert min(eye_darkness) < 0.5 * max(eye_darkness)


def test_speech_buffer_slices_segments() -> None:
    buffer = SpeechBuffer()
    buffer.push(np.arange(1, 6, dtype=np.int16))
    assert buffer.take(4)[0].tolist() == [1, 2, 3, 4]  # type: ignore[union-attr]
    assert buffer.take(4) == (None, False)  # more speech may follow
    buffer.end_segment()
    buffer.push(np.arange(10, 13, dtype=np.int16))
    chunk, ended = buffer.take(4)
    assert chunk is not None and chunk.tolist() == [5, 0, 0, 0] and ended
    chunk, ended = buffer.take(2)
    assert chunk is not None and chunk.tolist() == [10, 11] and not ended
    buffer.clear()
    assert buffer.take(1) == (None, False)
    buffer.end_segment()
    assert buffer.take(1) == (None, True)


def test_image_file(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "face.png"
    Image.new("RGB", (300, 400), (200, 150, 120)).save(path)
    renderer = load_portrait(str(path), 25.0)
    closed = pixels(renderer.render(0.0))
    assert closed.shape == (512, 512, 3)
    assert mouth_darkness(closed, mouth_region(PHOTO)) == 0.0  # the photo's own mouth, untouched
    assert mouth_darkness(pixels(renderer.render(1.0)), mouth_region(PHOTO)) > 0.1


@pytest.mark.parametrize("content", [None, b"not an image"])
def test_unusable_image_file_is_refused(tmp_path: pathlib.Path, content: bytes | None) -> None:
    path = tmp_path / "face.png"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(RendererRefused) as err:
        load_portrait(str(path), 25.0)
    assert err.value.outcome.code is ExitCode.AVATAR_INVALID
    assert "AVATAR_IMAGE_FILE" in err.value.outcome.reason


def test_per_frame_cost() -> None:
    renderer = PortraitRenderer()
    levels = np.abs(np.sin(np.arange(500) / 7))
    began = time.perf_counter()
    for level in levels:
        renderer.render(float(level))
    per_frame_ms = (time.perf_counter() - began) * 1000 / levels.size
    print(f"\nportrait renderer: {per_frame_ms:.3f} ms per 512x512 frame ({1000 / 25:.0f} ms budget at 25 fps)")
