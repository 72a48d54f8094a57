"""A stand-in LiveKit agent that speaks a WAV file to the avatar.

`python -m avatar_runner.demo_agent` joins a room and sends speech the way a
livekit-agents AgentSession does with an avatar: through
`DataStreamAudioOutput` towards the avatar's identity, every chunk pushed as
fast as it comes (TTS runs ahead of playback), a flush at the end of each
utterance, then a wait for the avatar's `lk.playback_finished`. It can cut
its last utterance short with `lk.clear_buffer`, as a barge-in does.

Each step is printed to stdout as one JSON object per line (`event`, wall
clock `t`, details), so tests and demos can follow it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import pathlib
import sys
import time
import wave
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from livekit import rtc
from livekit.agents import utils
from livekit.agents.voice.avatar import DataStreamAudioOutput

from .exits import exit_now

DEFAULT_AVATAR_IDENTITY = "bithuman-avatar-agent"  # livekit-plugins-bithuman's default
CHUNK_S = 0.05  # TTS plugins hand over 10-100 ms frames
SYNTHETIC_RATE = 24000
# With --pace: seconds of speech sent at once before the pace applies.
HEAD_START_S = 1.0


def send_wait(sent_s: float, elapsed_s: float, pace: float | None, head_start_s: float = HEAD_START_S) -> float:
    """Seconds to wait before sending more, having sent `sent_s` of speech `elapsed_s` after starting.

    With `pace`, speech goes out at most `pace` times as fast as it plays
    after a head start, as a streaming TTS hands it over; without, at once."""
    if pace is None:
        return 0.0
    return max(0.0, (sent_s - head_start_s) / pace - elapsed_s)


def emit(event: str, **details: Any) -> None:
    print(json.dumps({"event": event, "t": time.time(), **details}), flush=True)


def bundled_speech() -> pathlib.Path | None:
    """The 15 s speech sample the bitHuman wheel ships, when it is installed."""
    try:
        import bithuman
    except ImportError:
        return None
    path = pathlib.Path(bithuman.__file__).parent / "assets" / "demo_sample.wav"
    return path if path.is_file() else None


def read_wav(path: pathlib.Path) -> tuple[npt.NDArray[np.int16], int]:
    """Mono int16 samples and their rate."""
    with wave.open(str(path), "rb") as wav:
        if wav.getsampwidth() != 2:
            raise ValueError(f"{path}: only 16-bit PCM WAV files are supported")
        channels = wav.getnchannels()
        rate = wav.getframerate()
        samples = np.frombuffer(wav.readframes(wav.getnframes()), dtype=np.int16)
    if channels > 1:
        samples = samples.reshape(-1, channels).mean(axis=1).astype(np.int16)
    return samples, rate


def synthetic_speech(seconds: float, rate: int = SYNTHETIC_RATE) -> npt.NDArray[np.int16]:
    """A voiced, syllable-paced signal: harmonics of a gliding pitch under a
    4 Hz loudness envelope with short pauses, loud and quiet like speech."""
    t = np.arange(int(seconds * rate)) / rate
    pitch = 140 + 25 * np.sin(2 * math.pi * 0.7 * t)
    phase = 2 * math.pi * np.cumsum(pitch) / rate
    voice: npt.NDArray[np.float64] = np.zeros_like(t)
    for k in range(1, 8):
        voice += np.sin(k * phase) / k
    syllables = np.clip(np.sin(2 * math.pi * 4 * t), 0, None) ** 0.6
    pauses = (np.sin(2 * math.pi * 0.5 * t) > -0.8).astype(np.float64)
    signal = voice * syllables * pauses
    scaled: npt.NDArray[np.int16] = (signal / np.max(np.abs(signal)) * 0.5 * 32767).astype(np.int16)
    return scaled


async def speak(
    output: DataStreamAudioOutput,
    samples: npt.NDArray[np.int16],
    rate: int,
    *,
    utterance: int,
    interrupt_after: float | None,
    pace: float | None = None,
) -> None:
    """One utterance: push it all (at most `pace` x real time), flush, wait for the avatar to finish it."""
    started = asyncio.Event()

    def on_started(_: object) -> None:
        if not started.is_set():
            started.set()
            emit("playback_started", utterance=utterance)

    output.on("playback_started", on_started)
    emit("speaking", utterance=utterance, seconds=round(len(samples) / rate, 3))
    chunk = int(rate * CHUNK_S)
    began = time.monotonic()
    for offset in range(0, len(samples), chunk):
        wait = send_wait(offset / rate, time.monotonic() - began, pace)
        if wait > 0:
            await asyncio.sleep(wait)
        piece = samples[offset:offset + chunk]
        await output.capture_frame(rtc.AudioFrame(piece.tobytes(), rate, 1, len(piece)))
    output.flush()
    if interrupt_after is not None:
        await started.wait()
        await asyncio.sleep(interrupt_after)
        emit("clear_buffer", utterance=utterance)
        output.clear_buffer()
    finished = await output.wait_for_playout()
    output.off("playback_started", on_started)
    emit(
        "playback_finished",
        utterance=utterance,
        position=round(finished.playback_position, 3),
        interrupted=finished.interrupted,
    )


async def run(args: argparse.Namespace) -> int:
    if args.wav is not None:
        samples, rate = read_wav(args.wav)
    elif (sample := bundled_speech()) is not None:
        samples, rate = read_wav(sample)
    else:
        samples, rate = synthetic_speech(args.seconds or 6.0), SYNTHETIC_RATE
    if args.seconds is not None:
        samples = samples[: int(args.seconds * rate)]

    room = rtc.Room()
    # An agent listens to its user, not to its own avatar.
    await room.connect(args.url, args.token, rtc.RoomOptions(auto_subscribe=False))
    emit("joined", room=room.name, identity=room.local_participant.identity)
    try:
        output = DataStreamAudioOutput(
            room,
            destination_identity=args.avatar_identity,
            # Speak once the avatar shows, as AvatarSession.wait_for_join does.
            wait_remote_track=rtc.TrackKind.KIND_VIDEO,
            # Take playback_started from the avatar (lk.playback_started), not
            # from the first pushed chunk: it is what the avatar really did.
            wait_playback_start=True,
        )
        if args.lead_in:
            await utils.wait_for_track_publication(
                room=room, identity=args.avatar_identity, kind=rtc.TrackKind.KIND_VIDEO
            )
            emit("avatar_video")
            await asyncio.sleep(args.lead_in)
        for utterance in range(args.repeat):
            if utterance:
                await asyncio.sleep(args.pause)
            last = utterance == args.repeat - 1
            await speak(
                output,
                samples,
                rate,
                utterance=utterance,
                interrupt_after=args.interrupt_last_after if last else None,
                pace=args.pace,
            )
        await asyncio.sleep(args.linger)
    finally:
        emit("leaving")
        await room.disconnect()
    return 0


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m avatar_runner.demo_agent", description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=os.environ.get("LIVEKIT_URL"), help="LiveKit URL (default: $LIVEKIT_URL)")
    parser.add_argument("--token", default=os.environ.get("LIVEKIT_TOKEN"), help="room token (default: $LIVEKIT_TOKEN)")
    parser.add_argument("--avatar-identity", default=DEFAULT_AVATAR_IDENTITY, help="the avatar participant to speak to")
    parser.add_argument(
        "--wav", type=pathlib.Path, help="16-bit WAV (default: the bitHuman speech sample, else synthetic)"
    )
    parser.add_argument("--seconds", type=float, help="use only the first SECONDS of the speech")
    parser.add_argument("--repeat", type=int, default=1, help="utterances to speak")
    parser.add_argument("--pause", type=float, default=1.0, help="seconds between utterances")
    parser.add_argument("--lead-in", type=float, default=0.0, metavar="SECONDS",
                        help="wait SECONDS after the avatar's video appears before speaking (default: speak at once)")
    parser.add_argument("--interrupt-last-after", type=float, metavar="SECONDS",
                        help="send lk.clear_buffer SECONDS after the last utterance starts playing")
    parser.add_argument("--linger", type=float, default=0.0, help="seconds to stay after the last utterance")
    parser.add_argument("--pace", type=float, metavar="X",
                        help="send speech at most X times as fast as it plays, after a 1 s head start, "
                             "as a streaming TTS does (default: all at once)")
    args = parser.parse_args(argv)
    if not args.url or not args.token:
        parser.error("a LiveKit URL and token are required (--url/--token or LIVEKIT_URL/LIVEKIT_TOKEN)")
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    if args.pace is not None and args.pace <= 0:
        parser.error("--pace must be above 0 (e.g. 2: twice as fast as the speech plays)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return asyncio.run(run(args))
    except rtc.ConnectError as err:
        print(f"cannot join the room: {err.message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    exit_now(main())
