"""A LiveKit participant that watches and listens to the avatar, and what it received when."""

from __future__ import annotations

import asyncio
import dataclasses
import math
import time

import numpy as np

# At import, not at the first frame: it loads livekit-agents (seconds), which
# would stall the viewer's loop and bunch the first frames into a burst.
from avatar_runner.renderers.portrait_face import DRAWN_FACE, SIZE
from livekit import api, rtc

# A received audio frame of digital silence, in dBFS (finite, so it stays JSON).
SILENT_DBFS = -120.0
# How often the receive path's jitter-buffer statistics are read.
JITTER_SAMPLE_S = 1.0
# Frames narrower than this (the first of a simulcast layer can be tiny
# placeholders) are counted, their mouth not read (NaN).
MIN_MOUTH_WIDTH = 128


def participant_token(api_key: str, api_secret: str, room: str, identity: str, *, agent: bool = False) -> str:
    """A token to join `room` as `identity` (as an agent participant when `agent`)."""
    token = (
        api.AccessToken(api_key, api_secret)
        .with_identity(identity)
        .with_grants(api.VideoGrants(room_join=True, room=room))
    )
    return (token.with_kind("agent") if agent else token).to_jwt()


def mouth_darkness(frame: rtc.VideoFrame) -> float:
    """Share of dark pixels in the middle of the drawn face's mouth, at any received size.

    Read on the luma plane of the decoded I420 frame: converting every frame
    to RGB costs the viewer enough CPU here to drop frames it then miscounts.
    """
    if frame.type != rtc.VideoBufferType.I420:
        frame = frame.convert(rtc.VideoBufferType.I420)
    luma = np.frombuffer(frame.data, dtype=np.uint8, count=frame.width * frame.height)
    luma = luma.reshape(frame.height, frame.width)
    scale = frame.width / SIZE
    cx, cy = DRAWN_FACE.mouth_center
    half_w, half_h = DRAWN_FACE.mouth_width * 0.3, DRAWN_FACE.mouth_max_height / 2 + 4
    region = luma[
        round((cy - half_h) * scale):round((cy + half_h) * scale),
        round((cx - half_w) * scale):round((cx + half_w) * scale),
    ]
    return float(np.mean(region < 70))


@dataclasses.dataclass
class Viewer:
    """A participant watching the avatar: the frames and the audio it received, when (time.time()).

    Without `watch_video` it only subscribes to the avatar's audio and does not
    decode it (cheap): someone must listen, since livekit-agents' AvatarRunner
    publishes its video only once its audio track has a subscriber.
    """

    watch_video: bool = True
    room: rtc.Room = dataclasses.field(default_factory=rtc.Room)
    video: list[tuple[float, int, float]] = dataclasses.field(default_factory=list)  # t, width, mouth darkness
    audio: list[tuple[float, float, int]] = dataclasses.field(default_factory=list)  # t, dBFS, samples
    publishers: set[str] = dataclasses.field(default_factory=set)  # identities of the tracks' publishers
    # t, "audio" | "video", the inbound stream's cumulative jitterBufferDelay (s) and jitterBufferEmittedCount:
    # how long what the viewer got waited in its own receive buffers.
    jitter: list[tuple[float, str, float, int]] = dataclasses.field(default_factory=list)
    # t, the video's inbound framesReceived, framesDecoded, framesDropped: where frames went missing.
    video_inbound: list[tuple[float, int, int, int]] = dataclasses.field(default_factory=list)
    tasks: list[asyncio.Task[None]] = dataclasses.field(default_factory=list)

    async def join(self, url: str, token: str) -> None:
        """Subscribes to every track; or, without watch_video, only to the audio tracks."""
        if self.watch_video:
            self.room.on("track_subscribed", self._on_track)
            await self.room.connect(url, token)
            return

        def maybe_subscribe(pub: rtc.RemoteTrackPublication, who: rtc.RemoteParticipant) -> None:
            if pub.kind == rtc.TrackKind.KIND_AUDIO:
                pub.set_subscribed(True)

        self.room.on("track_published", maybe_subscribe)
        await self.room.connect(url, token, rtc.RoomOptions(auto_subscribe=False))
        for who in self.room.remote_participants.values():
            for pub in who.track_publications.values():
                maybe_subscribe(pub, who)

    def _on_track(self, track: rtc.Track, _: rtc.RemoteTrackPublication, who: rtc.RemoteParticipant) -> None:
        self.publishers.add(who.identity)
        consume = self._watch(track) if track.kind == rtc.TrackKind.KIND_VIDEO else self._listen(track)
        self.tasks.append(asyncio.create_task(consume))
        self.tasks.append(asyncio.create_task(self._sample_jitter(track)))

    async def _sample_jitter(self, track: rtc.Track) -> None:
        kind = "video" if track.kind == rtc.TrackKind.KIND_VIDEO else "audio"
        while True:
            await asyncio.sleep(JITTER_SAMPLE_S)
            for stats in await track.get_stats():
                if stats.HasField("inbound_rtp"):
                    inbound = stats.inbound_rtp.inbound
                    now = time.time()
                    self.jitter.append((now, kind, inbound.jitter_buffer_delay, inbound.jitter_buffer_emitted_count))
                    if kind == "video":
                        self.video_inbound.append((now, inbound.frames_received, inbound.frames_decoded, inbound.frames_dropped))

    async def _watch(self, track: rtc.Track) -> None:
        async for event in rtc.VideoStream(track):
            frame = event.frame
            mouth = mouth_darkness(frame) if frame.width >= MIN_MOUTH_WIDTH else math.nan
            self.video.append((time.time(), frame.width, mouth))

    async def _listen(self, track: rtc.Track) -> None:
        async for event in rtc.AudioStream(track):
            samples = np.frombuffer(event.frame.data, dtype=np.int16).astype(np.float64)
            rms = math.sqrt(float(np.mean(samples**2))) / 32768 if samples.size else 0.0
            self.audio.append((time.time(), 20 * math.log10(rms) if rms > 0 else SILENT_DBFS, samples.size))

    async def leave(self) -> None:
        for task in self.tasks:
            task.cancel()
        await self.room.disconnect()

    def frames_between(self, start: float, end: float) -> list[tuple[float, int, float]]:
        return [f for f in self.video if start <= f[0] <= end]
