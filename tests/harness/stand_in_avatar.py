"""A stand-in for an avatar participant (bitHuman's cloud worker, say): joins with a token and publishes a tiny video track."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable

from livekit import rtc

SIDE = 32


@contextlib.asynccontextmanager
async def publishing(livekit_url: str, token: str) -> AsyncIterator[Callable[[], None]]:
    """In the room with a camera track published; yields a function that sends one frame on it."""
    room = rtc.Room()
    await room.connect(livekit_url, token)
    source = rtc.VideoSource(SIDE, SIDE)
    track = rtc.LocalVideoTrack.create_video_track("avatar", source)
    await room.local_participant.publish_track(track, rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_CAMERA))
    frame = rtc.VideoFrame(SIDE, SIDE, rtc.VideoBufferType.RGBA, bytes(SIDE * SIDE * 4))
    try:
        yield lambda: source.capture_frame(frame)
    finally:
        await room.disconnect()
