"""How the avatar's tracks are published: at the renderer's frame rate.

AvatarRunner publishes with the SDK's default encoding, chosen from presets
by frame size: a square frame up to 640 px gets the 4:3 "h480" preset, capped
at 20 fps, so a 25 fps portrait reached viewers at 20 fps (measured). The
runner publishes with an encoding of its own instead: the renderer's frame
rate, and a bitrate sized like LiveKit's presets.
"""

from __future__ import annotations

import asyncio
import dataclasses

from livekit import rtc
from livekit.agents.voice.avatar import (
    AudioReceiver,
    AvatarOptions,
    AvatarRunner,
    VideoGenerator,
)

from . import lip_sync

# LiveKit's presets spend about 0.05-0.06 bits per pixel (h540: 800 kbps for
# 960x540 at 25 fps; h720: 1.7 Mbps for 1280x720 at 30 fps).
BITS_PER_PIXEL = 0.06
MIN_BITRATE = 300_000
# Below this the SDK's only extra simulcast layer is a 360p one at 20 fps:
# worth less than the frame rate it would cost a viewer who gets it.
SIMULCAST_MIN_SIZE = 960


@dataclasses.dataclass(frozen=True)
class VideoPublishing:
    max_bitrate: int
    max_framerate: float
    simulcast: bool

    def options(self) -> rtc.TrackPublishOptions:
        return rtc.TrackPublishOptions(
            source=rtc.TrackSource.SOURCE_CAMERA,
            video_encoding=rtc.VideoEncoding(max_bitrate=self.max_bitrate, max_framerate=self.max_framerate),
            simulcast=self.simulcast,
            # Lips need the frame rate more than the pixels: under load, lower
            # the resolution, not the frame rate.
            # (.value: the field's type is the protobuf enum's int, not this IntEnum.)
            degradation_preference=rtc.DegradationPreference.MAINTAIN_FRAMERATE.value,
        )


def video_publishing(width: int, height: int, fps: float) -> VideoPublishing:
    return VideoPublishing(
        max_bitrate=max(MIN_BITRATE, round(width * height * fps * BITS_PER_PIXEL)),
        max_framerate=fps,
        simulcast=max(width, height) >= SIMULCAST_MIN_SIZE,
    )


class AvatarPublisher(AvatarRunner):
    """AvatarRunner with the video published per `video_publishing`, and sent in step with its audio.

    Overrides AvatarRunner's (private) publish step, otherwise the same:
    audio first, video once someone listens, as livekit-agents does. Its
    synchronizer is replaced by lip_sync.AudioPacedSynchronizer (upstream's
    sends the picture ahead of its sound by the audio queue's depth).
    tests/unit/test_publishing_drift.py fails when the installed
    livekit-agents' copy of that step no longer matches this one.
    """

    def __init__(
        self,
        room: rtc.Room,
        *,
        audio_recv: AudioReceiver,
        video_gen: VideoGenerator,
        options: AvatarOptions,
        publishing: VideoPublishing,
    ) -> None:
        super().__init__(room, audio_recv=audio_recv, video_gen=video_gen, options=options)
        self._publishing = publishing
        upstream = self._av_sync
        self._av_sync = lip_sync.AudioPacedSynchronizer(
            audio_source=self._audio_source,
            video_source=self._video_source,
            video_fps=options.video_fps,
            audio_queue_ms=self._queue_size_ms,
        )
        # Nothing was pushed into it yet: closing only ends its capture task.
        self._upstream_sync_closed = asyncio.ensure_future(upstream.aclose())

    async def _publish_track(self) -> None:
        # livekit-agents' method, line for line, but for `video_options`.
        async with self._lock:
            await self._room_connected_fut

            audio_track = rtc.LocalAudioTrack.create_audio_track("avatar_audio", self._audio_source)
            audio_options = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
            self._audio_publication = await self._room.local_participant.publish_track(
                audio_track, audio_options
            )
            await self._audio_publication.wait_for_subscription()

            video_track = rtc.LocalVideoTrack.create_video_track("avatar_video", self._video_source)
            video_options = self._publishing.options()  # the one difference
            self._video_publication = await self._room.local_participant.publish_track(
                video_track, video_options
            )
