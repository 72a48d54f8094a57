"""The bitHuman renderer: `bithuman.AsyncBithuman` with a local .imx model.

It mirrors `BithumanGenerator` in livekit-plugins-bithuman (the plugin's local
mode): the same create arguments, push/flush/interrupt calls, BGR to RGB24
frames, and the SDK's own frame rate and sample rate. What the plugin leaves
to its caller, this module does: every refusal of the SDK, at start-up or
while running, becomes a one-line reason and a distinct exit code.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import bithuman
import numpy as np
from bithuman import AsyncBithuman
from livekit import rtc
from livekit.agents.voice.avatar import AudioSegmentEnd

from ..config import BithumanSettings
from ..exits import ExitCode
from .base import RenderedItem, Renderer, RendererRefused, to_mono

# The native core reports a failed login as a bare RuntimeError with this
# prefix, curl's wording when the auth host cannot be reached.
_AUTH_PREFIX = "auth_authenticate:"
_CURL_FAILURE = "curl_easy_perform"


def refusal(err: Exception) -> RendererRefused:
    """The exit code and one-line reason for an exception raised by the SDK.

    The SDK carries two exception families: bithuman 3's (InvalidAvatar,
    NotAuthorised, NotSupported, Failed) and the 2.x one AsyncBithuman raises
    (ModelError, TokenError and their subclasses under BithumanError). Codes
    match the SDK's own command-line tool where it has one.
    """
    message = str(err) or type(err).__name__
    if isinstance(err, (bithuman.InvalidAvatar, bithuman.ModelError)):
        return RendererRefused(ExitCode.AVATAR_INVALID, f"bitHuman refused the avatar model: {message}")
    if isinstance(err, bithuman.TokenRequestError):
        return RendererRefused(ExitCode.RENDERER_UNAVAILABLE, f"bitHuman could not issue a token: {message}")
    if isinstance(err, (bithuman.NotAuthorised, bithuman.TokenError)):
        return RendererRefused(ExitCode.RENDERER_NOT_AUTHORISED, f"bitHuman refused the credential: {message}")
    if isinstance(err, bithuman.BithumanError) and "api_secret" in message:
        # A bare BithumanError: create() without the secret this SDK needs
        # (it no longer accepts a token alone).
        return RendererRefused(ExitCode.RENDERER_NOT_AUTHORISED, f"bitHuman refused the credential: {message}")
    if isinstance(err, bithuman.NotSupported):
        return RendererRefused(ExitCode.RENDERER_UNAVAILABLE, f"bitHuman cannot run this avatar here: {message}")
    if isinstance(err, RuntimeError) and message.startswith(_AUTH_PREFIX):
        if _CURL_FAILURE in message:
            return RendererRefused(
                ExitCode.RENDERER_UNAVAILABLE, f"bitHuman authentication service unreachable: {message}"
            )
        return RendererRefused(ExitCode.RENDERER_NOT_AUTHORISED, f"bitHuman refused the credential: {message}")
    return RendererRefused(ExitCode.RENDERER_FAILED, f"bitHuman failed: {type(err).__name__}: {message}")


class BithumanRenderer(Renderer):
    def __init__(self, runtime: Any) -> None:
        self._runtime = runtime
        first = runtime.get_first_frame()
        if first is None:
            raise RendererRefused(ExitCode.AVATAR_INVALID, "bitHuman model produced no frame")
        self._resolution = (int(first.shape[1]), int(first.shape[0]))

    @property
    def name(self) -> str:
        return "bitHuman SDK"

    @property
    def fps(self) -> float:
        return float(self._runtime.settings.FPS)

    @property
    def resolution(self) -> tuple[int, int]:
        return self._resolution

    @property
    def sample_rate(self) -> int:
        return int(self._runtime.settings.INPUT_SAMPLE_RATE)

    async def push_audio(self, frame: rtc.AudioFrame) -> None:
        mono = to_mono(frame)
        await self._runtime.push_audio(bytes(mono.data), mono.sample_rate, last_chunk=False)

    async def flush(self) -> None:
        await self._runtime.flush()

    def interrupt(self) -> None:
        self._runtime.interrupt()

    async def frames(self) -> AsyncIterator[RenderedItem]:
        try:
            async for frame in self._runtime.run():
                if frame.bgr_image is not None:
                    rgb = np.ascontiguousarray(frame.bgr_image[:, :, ::-1])
                    yield rtc.VideoFrame(rgb.shape[1], rgb.shape[0], rtc.VideoBufferType.RGB24, rgb.tobytes())
                chunk = frame.audio_chunk
                if chunk is not None:
                    yield rtc.AudioFrame(chunk.bytes, chunk.sample_rate, 1, len(chunk.array))
                if frame.end_of_speech:
                    yield AudioSegmentEnd()
        except Exception as err:  # e.g. the account ran out of credit mid-session
            raise refusal(err) from err

    async def aclose(self) -> None:
        await self._runtime.stop()
        self._runtime.cleanup()


async def open_bithuman(settings: BithumanSettings) -> BithumanRenderer:
    """Loads the model and authenticates, as the plugin's local mode does."""
    kwargs: dict[str, str] = {"model_path": settings.model_path}
    if settings.api_secret:
        kwargs["api_secret"] = settings.api_secret
    if settings.api_token:
        kwargs["token"] = settings.api_token
    try:
        runtime = await AsyncBithuman.create(**kwargs)
    except Exception as err:
        raise refusal(err) from err
    return BithumanRenderer(runtime)
