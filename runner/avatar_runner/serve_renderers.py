"""A pool runner's renderer, loaded once and opened per session.

The portrait renderer's picture (AVATAR_IMAGE_FILE, or the drawn face) is
prepared once, at start, and every session animates that one preparation (a
`Portrait` is read-only once made); a launch that brings its own picture
(`avatar_image`, `avatar_image_url`) gets that picture prepared for it alone.

bitHuman's SDK renders one conversation per instance, so each session opens
its own; the model and the credential are checked once, at start, by
opening the first, which the first session then takes. A picture sent with a
launch is ignored: the .imx model is the avatar.
"""

from __future__ import annotations

import abc
import asyncio
import io
import logging
import random
import urllib.parse

import aiohttp
from PIL import Image, UnidentifiedImageError

from .config import ServeConfig
from .contract import Renderer as RendererKind
from .exits import ExitCode
from .renderers.base import Renderer, RendererRefused
from .renderers.portrait import PortraitRenderer, SpeechBuffer
from .renderers.portrait_face import Portrait, prepare_portrait
from .renderers.portrait_motion import PortraitMotion

log = logging.getLogger(__name__)

IMAGE_MAX_BYTES = 12 * 1024 * 1024
IMAGE_PIXEL_LIMIT = 40_000_000  # decoded, an RGB image this large is 120 MB
FETCH_TIMEOUT_S = 15.0


class SharedPortraitRenderer(PortraitRenderer):
    """PortraitRenderer on a portrait prepared beforehand, shared by sessions.

    PortraitRenderer.__init__ is not called: it would prepare the portrait
    again. Its fields are set here instead; tests/unit/test_runner_serve.py
    fails when they no longer match PortraitRenderer's.
    """

    def __init__(self, portrait: Portrait, *, fps: float, seed: int = 0) -> None:
        self._fps = fps
        self._motion = PortraitMotion(portrait, fps, seed)
        self._speech = SpeechBuffer()
        self._resampler = None
        self._resampler_rate = 0
        self._epoch = 0
        self._closed = False


def _prepare(image: Image.Image, what: str) -> Portrait:
    if image.width * image.height > IMAGE_PIXEL_LIMIT:
        raise RendererRefused(
            ExitCode.AVATAR_INVALID, f"{what} is {image.width}x{image.height}: over {IMAGE_PIXEL_LIMIT} pixels"
        )
    image.load()
    return prepare_portrait(image)


def portrait_of_file(path: str) -> Portrait:
    try:
        with Image.open(path) as image:
            return _prepare(image, f"AVATAR_IMAGE_FILE {path!r}")
    except FileNotFoundError:
        raise RendererRefused(ExitCode.AVATAR_INVALID, f"AVATAR_IMAGE_FILE {path!r} does not exist") from None
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as err:
        raise RendererRefused(
            ExitCode.AVATAR_INVALID, f"AVATAR_IMAGE_FILE {path!r} is not a readable image: {err}"
        ) from None


def portrait_of_bytes(data: bytes) -> Portrait:
    try:
        with Image.open(io.BytesIO(data)) as image:
            return _prepare(image, "the avatar image")
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError, ValueError) as err:
        raise RendererRefused(ExitCode.AVATAR_INVALID, f"the avatar image is not a readable image: {err}") from None


async def fetch_image(url: str) -> bytes:
    """The picture at `url` (at most IMAGE_MAX_BYTES). The reason of a
    failure leaves the URL out: a signed URL's query is a credential."""
    host = urllib.parse.urlsplit(url).hostname
    try:
        timeout = aiohttp.ClientTimeout(total=FETCH_TIMEOUT_S)
        async with aiohttp.ClientSession(timeout=timeout) as http, http.get(url) as response:
            if response.status != 200:
                raise RendererRefused(
                    ExitCode.AVATAR_INVALID, f"avatar_image_url (host {host}) answered HTTP {response.status}"
                )
            body = bytearray()
            async for chunk in response.content.iter_chunked(64 * 1024):
                body += chunk
                if len(body) > IMAGE_MAX_BYTES:
                    raise RendererRefused(
                        ExitCode.AVATAR_INVALID, f"avatar_image_url (host {host}) is over {IMAGE_MAX_BYTES} bytes"
                    )
            return bytes(body)
    except (aiohttp.ClientError, asyncio.TimeoutError) as err:
        raise RendererRefused(
            ExitCode.AVATAR_INVALID, f"avatar_image_url (host {host}) cannot be fetched: {type(err).__name__}"
        ) from None


class RendererSource(abc.ABC):
    """The renderer a pool runner loaded; `open` makes one session's."""

    loaded = False
    takes_images = False  # whether a launch's picture changes what is rendered

    @abc.abstractmethod
    async def load(self) -> None:
        """Loads (and checks) the renderer, once; raises RendererRefused."""

    @abc.abstractmethod
    async def open(self, image: bytes | None) -> Renderer:
        """One session's renderer, animating `image` when given and taken."""

    async def aclose(self) -> None:
        pass


class PortraitSource(RendererSource):
    takes_images = True

    def __init__(self, image_file: str | None, fps: float) -> None:
        self._image_file = image_file
        self._fps = fps
        self._portrait: Portrait | None = None

    async def load(self) -> None:
        if self._image_file is None:
            self._portrait = await asyncio.to_thread(prepare_portrait, None)
        else:
            self._portrait = await asyncio.to_thread(portrait_of_file, self._image_file)
        self.loaded = True

    async def open(self, image: bytes | None) -> Renderer:
        portrait = await asyncio.to_thread(portrait_of_bytes, image) if image is not None else self._portrait
        assert portrait is not None, "open() before load()"
        return SharedPortraitRenderer(portrait, fps=self._fps, seed=random.randrange(2**31))


class BithumanSource(RendererSource):
    def __init__(self, config: ServeConfig) -> None:
        assert config.bithuman is not None  # parse_serve_config sets it for this renderer
        self._settings = config.bithuman
        self._spare: Renderer | None = None

    async def load(self) -> None:
        from .renderers.bithuman import open_bithuman

        self._spare = await open_bithuman(self._settings)
        self.loaded = True

    async def open(self, image: bytes | None) -> Renderer:
        from .renderers.bithuman import open_bithuman

        if image is not None:
            log.info("the launch's avatar image is ignored: the bitHuman model is the avatar")
        spare, self._spare = self._spare, None
        return spare if spare is not None else await open_bithuman(self._settings)

    async def aclose(self) -> None:
        spare, self._spare = self._spare, None
        if spare is not None:
            await spare.aclose()


def renderer_source(config: ServeConfig) -> RendererSource:
    if config.renderer is RendererKind.PORTRAIT:
        return PortraitSource(config.image_file, config.fps)
    return BithumanSource(config)
